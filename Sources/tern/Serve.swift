// `tern serve`: the OpenAI-compatible HTTP server. It listens at once (health answers 503 while the model
// loads), then starts the engine; SIGTERM/SIGINT stop accepting, let in-flight requests finish, and exit 0.

import Foundation
import Logging
import TernCore
import TernServer

func runServe(_ args: [String]) throws {
    let o = try Options(args, values: ["model", "host", "port", "api-key", "tls-cert", "tls-key", "max-queue", "ctx-size",
                                       "threads", "kv-cache-mib", "block-size", "kv-type", "max-batch-tokens", "max-running",
                                       "cors-origin", "served-model-name", "max-body-mib", "drain-timeout"],
                        flags: ["no-prefix-caching"])
    let path = modelPath(o)
    var http = HTTPServerConfiguration()
    http.host = o.string("host") ?? "127.0.0.1"
    http.port = try o.int("port", default: 8080, min: 0)!
    guard http.port <= 65535 else { throw UsageError("--port must be at most 65535") }
    http.tlsCertificatePath = o.string("tls-cert")
    http.tlsKeyPath = o.string("tls-key")
    guard (http.tlsCertificatePath == nil) == (http.tlsKeyPath == nil) else {
        throw UsageError("--tls-cert and --tls-key go together")
    }
    http.corsAllowOrigin = o.string("cors-origin")
    http.maxBodyBytes = try o.int("max-body-mib", default: 16, min: 1)! << 20
    let drainTimeout = Double(try o.int("drain-timeout", default: 30, min: 0)!)
    let threadCount = try threads(o)
    let maxQueue = try o.int("max-queue", default: 256, min: 1)!
    let maxBatch = try o.int("max-batch-tokens", default: 512, min: 16)!
    let maxRunning = try o.int("max-running", default: 64, min: 1)!
    let blockSize = try o.int("block-size", default: 16, min: 1)!
    guard blockSize <= 1024 else { throw UsageError("--block-size must be at most 1024") }
    let kvType = o.string("kv-type") ?? "f16"
    guard let storage = KVStorage(rawValue: kvType) else { throw UsageError("--kv-type must be f16, f32 or q8_0, got '\(kvType)'") }
    let physical = Int(ProcessInfo.processInfo.physicalMemory)
    let kvMiB = try o.int("kv-cache-mib", default: min(2048, (physical / 4) >> 20), min: 1)!
    let prefixCaching = try !o.flag("no-prefix-caching")
    let apiKeys = o.strings("api-key")

    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    var logger = Logger(label: "tern")
    logger.logLevel = .info

    let name = o.string("served-model-name") ?? {
        let last = (path as NSString).lastPathComponent
        return last.hasSuffix(".gguf") ? String(last.dropLast(5)) : last
    }()
    var options = ServerOptions(modelName: name)
    options.apiKeys = apiKeys
    let api = OpenAIServer(options: options, logger: logger)
    let logSink = logger
    http.log = { logSink.notice("\($0)") }
    let server = try HTTPServer(configuration: http) { req, writer in api.handle(req, writer) }
    try server.start()
    logger.info("listening on \(http.tlsCertificatePath == nil ? "http" : "https")://\(http.host):\(server.port) (loading \(path))")

    // Signals: drain, then exit 0.
    signal(SIGTERM, SIG_IGN)
    signal(SIGINT, SIG_IGN)
    let engineBox = EngineBox()
    var sources: [DispatchSourceSignal] = []
    for sig in [SIGTERM, SIGINT] {
        let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        src.setEventHandler {
            logger.info("signal \(sig): draining in-flight requests (up to \(Int(drainTimeout)) s)")
            server.shutdown(timeout: drainTimeout)
            engineBox.engine?.stop()
            logger.info("stopped")
            exit(0)
        }
        src.resume()
        sources.append(src)
    }

    let loaded: LoadedModel
    do {
        loaded = try LoadedModel(path: path)
    } catch {
        api.failedToLoad("\(error)")
        server.shutdown(timeout: 1)
        throw error
    }
    let ctx = try o.int("ctx-size", default: min(loaded.model.trainedContextLength, 8192), min: 16)!
    var config = EngineConfiguration(threads: threadCount, contextLength: ctx, kvCacheBytes: kvMiB << 20)
    config.blockSize = blockSize
    config.kvStorage = storage
    config.maxBatchTokens = maxBatch
    config.maxRunning = maxRunning
    config.maxQueue = maxQueue
    config.prefixCaching = prefixCaching
    let engine = try Engine(loaded: loaded, configuration: config)
    engine.start()
    engineBox.engine = engine
    api.ready(engine: engine)
    let memoryNote = engine.kvPool.map { "\($0.blockCount) KV blocks of \(blockSize) tokens (\(kvType))" } ?? "recurrent state per sequence"
    logger.info("ready: model \(name) (\(loaded.model.architecture)), context \(ctx), \(memoryNote), \(threadCount) threads")
    withExtendedLifetime(sources) { dispatchMain() }
}

/// Lets the signal handler reach the engine once it exists.
final class EngineBox: @unchecked Sendable {
    // Written once on the main thread before any signal can need it; a lock keeps the read safe regardless.
    private let lock = NSLock()
    private var value: Engine?
    var engine: Engine? {
        get { lock.lock(); defer { lock.unlock() }; return value }
        set { lock.lock(); value = newValue; lock.unlock() }
    }
}
