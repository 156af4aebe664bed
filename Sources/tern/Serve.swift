// `tern serve`: the OpenAI-compatible HTTP server. It listens at once (health answers 503 while the model
// loads), then starts the engine. SIGTERM/SIGINT stop accepting, let in-flight requests finish and exit 0; a
// second SIGTERM/SIGINT during that drain exits at once with status 130.

import ArgumentParser
import Foundation
import Logging
import TernCore
import TernServer

struct ServeCommand: ParsableCommand, EnvironmentReadable {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Serve the OpenAI-compatible HTTP API.",
        discussion: """
            SIGTERM or SIGINT: stop accepting, let in-flight requests finish (up to --drain-timeout), exit 0. \
            A second signal during the drain exits at once with status 130.
            """)

    static let environmentOptions: [EnvironmentOption] = [
        .value("model"), .value("host"), .value("port"), .list("api-key"), .value("tls-cert"), .value("tls-key"),
        .value("max-queue"), .value("ctx-size"), .value("threads"), .value("kv-cache-mib"), .value("block-size"),
        .value("kv-type"), .value("max-batch-tokens"), .value("max-running"), .value("cors-origin"),
        .value("served-model-name"), .value("max-body-mib"), .value("drain-timeout"), .flag("no-prefix-caching"), .flag("no-mmap"),
        .value("relay"), .value("chat-template"), .value("prefix-cache-mib"), .value("kv-release-after"),
        .value("decode-step-ms"),
    ] + SpeculationOptions.environmentOptions + EvictionOptions.environmentOptions

    @Option(parsing: .unconditional, help: .tern("GGUF file or Hugging Face directory.", env: "model", valueName: "path"))
    var model = defaultModelPath
    @Option(parsing: .unconditional, help: .tern("Address to listen on.", env: "host", valueName: "address"))
    var host = "127.0.0.1"
    @Option(parsing: .unconditional, help: .tern("Port to listen on; 0 picks a free one.", env: "port", valueName: "n"))
    var port = 8080
    @Option(parsing: .unconditionalSingleValue, help: .tern(
        "Key required as `Authorization: Bearer KEY` on every route but /health and /metrics; repeatable (env: comma-separated).",
        env: "api-key", default: "none", valueName: "key"))
    var apiKey: [String] = []
    @Option(parsing: .unconditional, help: .tern("TLS certificate (PEM), with --tls-key.", env: "tls-cert", default: "off", valueName: "file"))
    var tlsCert: String?
    @Option(parsing: .unconditional, help: .tern("TLS private key (PEM), with --tls-cert.", env: "tls-key", default: "off", valueName: "file"))
    var tlsKey: String?
    @Option(parsing: .unconditional, help: .tern("Waiting requests at most; beyond it 429 with Retry-After.", env: "max-queue", valueName: "n"))
    var maxQueue = 256
    @Option(parsing: .unconditional, help: .tern("Longest sequence, prompt and output.", env: "ctx-size",
                                                  default: "min(trained context, 8192)", valueName: "n"))
    var ctxSize: Int?
    @Option(parsing: .unconditional, help: .tern("Compute threads.", env: "threads", default: "the number of cores", valueName: "n"))
    var threads: Int?
    @Option(parsing: .unconditional, help: .tern("Paged KV store in MiB (mapped lazily).", env: "kv-cache-mib",
                                                  default: "min(2048, RAM/4)", valueName: "n"))
    var kvCacheMib: Int?
    @Option(parsing: .unconditional, help: .tern("Tokens per KV block.", env: "block-size", valueName: "n"))
    var blockSize = 16
    @Option(parsing: .unconditional, help: .tern("KV element type: f16, f32 or q8_0.", env: "kv-type", valueName: "type"))
    var kvType = "f16"
    @Option(parsing: .unconditional, help: .tern("Tokens per engine step (decodes and prefill chunks).", env: "max-batch-tokens", valueName: "n"))
    var maxBatchTokens = 512
    @Option(parsing: .unconditional, help: .tern("Sequences decoding at once.", env: "max-running", valueName: "n"))
    var maxRunning = 64
    @Option(parsing: .unconditional, help: .tern("Send CORS headers for this origin and answer preflights.", env: "cors-origin",
                                                  default: "off", valueName: "origin"))
    var corsOrigin: String?
    @Option(parsing: .unconditional, help: .tern("The model name clients send and see.", env: "served-model-name",
                                                  default: "the file name without .gguf", valueName: "name"))
    var servedModelName: String?
    @Option(parsing: .unconditional, help: .tern("Largest request body in MiB.", env: "max-body-mib", valueName: "n"))
    var maxBodyMib = 16
    @Option(parsing: .unconditional, help: .tern("Seconds in-flight requests get to finish after SIGTERM/SIGINT.", env: "drain-timeout", valueName: "s"))
    var drainTimeout = 30
    @Flag(help: .tern("Turn off reuse of cached prompt blocks.", env: "no-prefix-caching", default: "prefix caching on"))
    var noPrefixCaching = false
    @Option(parsing: .unconditional, help: .tern(
        "MiB of the KV cache that cached prompt prefixes nobody is using may keep; past it the least recently used leave the cache and their memory is given back.",
        env: "prefix-cache-mib", default: "a quarter of --kv-cache-mib", valueName: "n"))
    var prefixCacheMib: Int?
    @Option(parsing: .unconditional, help: .tern(
        "Seconds a free KV block keeps its memory before it is given back to the kernel, so resident memory follows use after a burst.",
        env: "kv-release-after", valueName: "s"))
    var kvReleaseAfter: Double = 10
    @Option(parsing: .unconditional, help: .tern(
        "While requests are generating, prefill chunks of long prompts are sized so that an engine step takes about this many milliseconds (the streams' inter-token latency); 0 sizes steps by tokens only.",
        env: "decode-step-ms", valueName: "ms"))
    var decodeStepMs = 200
    @Flag(help: .tern(
        "Read the weights into memory of the server's own instead of mapping the file, so the file may be truncated or rewritten in place while serving.",
        env: "no-mmap", default: "mapped zero-copy"))
    var noMmap = false
    @Option(parsing: .unconditional, help: .tern(
        "RelayAttention: decoding requests that share prompt-prefix blocks read that prefix once per step (on or off).",
        env: "relay", valueName: "on|off"))
    var relay = "on"
    @Option(parsing: .unconditional, help: .tern(
        "Chat template instead of the checkpoint's: a Jinja file, or a built-in name (chatml, gemma, llama3). Without any, chat completions answer 400.",
        env: "chat-template", default: "the checkpoint's", valueName: "file|name"))
    var chatTemplate: String?
    @OptionGroup var speculation: SpeculationOptions
    @OptionGroup var eviction: EvictionOptions

    func run() throws {
        try serve(self)
    }
}

func serve(_ o: ServeCommand) throws {
    let path = o.model
    var http = HTTPServerConfiguration()
    http.host = o.host
    http.port = try atLeast(o.port, 0, "port")
    guard http.port <= 65535 else { throw UsageError("--port must be at most 65535") }
    http.tlsCertificatePath = o.tlsCert
    http.tlsKeyPath = o.tlsKey
    guard (http.tlsCertificatePath == nil) == (http.tlsKeyPath == nil) else {
        throw UsageError("--tls-cert and --tls-key go together")
    }
    http.corsAllowOrigin = o.corsOrigin
    http.maxBodyBytes = try atLeast(o.maxBodyMib, 1, "max-body-mib") << 20
    let drainTimeout = Double(try atLeast(o.drainTimeout, 0, "drain-timeout"))
    let threadCount = try threadCount(o.threads)
    let maxQueue = try atLeast(o.maxQueue, 1, "max-queue")
    let maxBatch = try atLeast(o.maxBatchTokens, 16, "max-batch-tokens")
    let maxRunning = try atLeast(o.maxRunning, 1, "max-running")
    let blockSize = try atLeast(o.blockSize, 1, "block-size")
    guard blockSize <= 1024 else { throw UsageError("--block-size must be at most 1024") }
    let kvType = o.kvType
    guard let storage = KVStorage(rawValue: kvType) else { throw UsageError("--kv-type must be f16, f32 or q8_0, got '\(kvType)'") }
    let physical = Int(ProcessInfo.processInfo.physicalMemory)
    let kvMiB = try atLeast(o.kvCacheMib ?? min(2048, (physical / 4) >> 20), 1, "kv-cache-mib")
    let prefixCaching = !o.noPrefixCaching
    let prefixCacheMiB = try atLeast(o.prefixCacheMib ?? kvMiB / 4, 0, "prefix-cache-mib")
    guard o.kvReleaseAfter >= 0, o.kvReleaseAfter.isFinite else {
        throw UsageError("--kv-release-after must be a number of seconds ≥ 0, got \(o.kvReleaseAfter)")
    }
    let stepMs = try atLeast(o.decodeStepMs, 0, "decode-step-ms")
    guard o.relay == "on" || o.relay == "off" else { throw UsageError("--relay must be on or off, got '\(o.relay)'") }
    let speculation = try o.speculation.configuration()
    let eviction = try o.eviction.settings()
    let apiKeys = o.apiKey
    // Checked before listening, so a bad name or file fails at once.
    let chatTemplate = try o.chatTemplate.map { try ChatTemplate.named(orFile: $0) }

    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    var logger = Logger(label: "tern")
    logger.logLevel = .info

    let name = o.servedModelName ?? {
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

    let engineBox = EngineBox()
    let stopper = Stopper(server: server, api: api, engine: engineBox, drainTimeout: drainTimeout, logger: logger)
    let sources = stopper.installSignalHandlers()

    let loaded: LoadedModel
    let loadSeconds: Double
    do {
        (loaded, loadSeconds) = try loadModel(path, chatTemplate: chatTemplate, weights: o.noMmap ? .privateCopy : .mapped)
    } catch {
        api.failedToLoad("\(error)")
        server.shutdown(timeout: 1)
        throw error
    }
    var draft: LoadedModel?
    if let draftPath = o.speculation.draftModel {
        do {
            draft = try loadModel(draftPath).0
        } catch {
            api.failedToLoad("draft model: \(error)")
            server.shutdown(timeout: 1)
            throw error
        }
    }
    let ctx = try atLeast(o.ctxSize ?? min(loaded.model.trainedContextLength, 8192), 16, "ctx-size")
    var config = EngineConfiguration(threads: threadCount, contextLength: ctx, kvCacheBytes: kvMiB << 20)
    config.blockSize = blockSize
    config.kvStorage = storage
    config.maxBatchTokens = maxBatch
    config.maxRunning = maxRunning
    config.maxQueue = maxQueue
    config.prefixCaching = prefixCaching
    config.prefixCacheMaxBytes = prefixCacheMiB << 20
    config.kvReleaseDelay = o.kvReleaseAfter
    config.decodingStepTarget = stepMs > 0 ? Double(stepMs) / 1000 : nil
    config.relay = o.relay == "on"
    config.speculation = speculation
    config.eviction = eviction
    if eviction.isActive && !Engine.canEvict(loaded) {
        logger.warning("--kv-policy \(eviction.policy.rawValue) is ignored: \(loaded.model.architecture) keeps a fixed-size state or sliding-window layers, not one evictable KV cache")
    }
    let engine: Engine
    do {
        engine = try Engine(loaded: loaded, configuration: config, draft: draft)
    } catch {
        api.failedToLoad("\(error)")
        server.shutdown(timeout: 1)
        throw error
    }
    engine.start()
    engineBox.engine = engine
    api.ready(engine: engine)
    let memoryNote = engine.kvPool.map { "\($0.blockCount) KV blocks of \(blockSize) tokens (\(kvType))" } ?? "recurrent state per sequence"
    logger.info("ready: model \(name) (\(loaded.model.architecture)), context \(ctx), \(memoryNote), \(threadCount) threads")
    // The KV store is mapped lazily, so this is the model's footprint; it grows as the cache fills.
    logger.info("loaded in \(String(format: "%.2f", loadSeconds)) s; resident memory \(mebibytes(residentMemoryBytes()))")
    withExtendedLifetime(sources) { dispatchMain() }
}

/// The shutdown sequence: the first SIGTERM/SIGINT drains and exits 0; a second one exits at once, for an
/// operator who will not wait out the drain timeout (or a supervisor escalating).
final class Stopper: @unchecked Sendable {
    /// Exit status when a second signal cuts the drain short: the shell's "terminated by SIGINT" status,
    /// whichever signal it was, so that scripts can tell it from a clean drain (0) and a failure (1).
    static let interruptedStatus: Int32 = 130
    /// Once the drain timeout has passed, streams still open are ended, and get this long to flush.
    static let streamEndGrace = 1.0

    private let server: HTTPServer
    private let api: OpenAIServer
    private let engine: EngineBox
    private let drainTimeout: Double
    private let logger: Logger
    private let lock = NSLock()
    private var signals = 0

    init(server: HTTPServer, api: OpenAIServer, engine: EngineBox, drainTimeout: Double, logger: Logger) {
        self.server = server
        self.api = api
        self.engine = engine
        self.drainTimeout = drainTimeout
        self.logger = logger
    }

    func installSignalHandlers() -> [DispatchSourceSignal] {
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        return [SIGTERM, SIGINT].map { sig in
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { [self] in received(sig) }
            src.resume()
            return src
        }
    }

    private func received(_ sig: Int32) {
        lock.lock()
        signals += 1
        let count = signals
        lock.unlock()
        if count > 1 {
            logger.warning("signal \(sig) during the drain: exiting now without waiting for in-flight requests")
            exit(Self.interruptedStatus)
        }
        logger.info("signal \(sig): draining in-flight requests (up to \(Int(drainTimeout)) s; signal again to exit at once)")
        // The drain blocks for up to the timeout; off this handler, so that a second signal is still heard.
        Thread.detachNewThread { [self] in
            // After the drain timeout, streams still open end with an error event and [DONE], other requests
            // with a 503; they get a grace period to flush before connections close.
            server.shutdown(timeout: drainTimeout, onTimeout: { [api] in api.abortInFlight(reason: "the server is shutting down") },
                            grace: Self.streamEndGrace)
            engine.engine?.stop()
            logger.info("stopped")
            exit(0)
        }
    }
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
