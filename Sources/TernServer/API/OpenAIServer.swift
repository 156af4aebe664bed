// The OpenAI-compatible API over the engine: routing, API keys, health while loading, models, completions,
// chat completions, tokenize/detokenize and Prometheus metrics. Handlers never block: generation results
// flow back from the engine thread through CompletionResponder, which formats and writes them on a queue of
// its own.

import Foundation
import Logging
import TernCore

public struct ServerOptions: Sendable {
    public var apiKeys: [String] = []
    /// The model name clients send and responses carry.
    public var modelName: String
    public init(modelName: String) { self.modelName = modelName }
}

public final class OpenAIServer: @unchecked Sendable {
    // `state` changes once (loading → ready) and is read from HTTP threads: guarded by `lock`.
    private let lock = NSLock()
    private var engine: Engine?
    private var loadError: String?
    private let options: ServerOptions
    private let logger: Logger
    private let startTime = Date()
    /// Completion responses not yet ended, for `abortInFlight`; guarded by `lock`.
    private var inFlight: [ObjectIdentifier: CompletionResponder] = [:]
    /// Requests whose client went away before the response was complete; guarded by `lock`.
    private var cancelledRequests = 0

    public init(options: ServerOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    public func ready(engine: Engine) {
        lock.lock()
        self.engine = engine
        lock.unlock()
    }

    public func failedToLoad(_ message: String) {
        lock.lock()
        loadError = message
        lock.unlock()
    }

    private var currentEngine: Engine? {
        lock.lock()
        defer { lock.unlock() }
        return engine
    }

    public func handle(_ req: HTTPRequest, _ writer: HTTPResponseWriter) {
        let started = Date()
        let log: @Sendable (Int, Int) -> Void = { [logger] status, tokens in
            logger.info("\(req.method) \(req.path) \(status) tokens=\(tokens) latency=\(String(format: "%.3f", Date().timeIntervalSince(started)))s")
        }
        do {
            try route(req, writer, log: log)
        } catch let e as APIError {
            var headers: [(String, String)] = [("Content-Type", "application/json")]
            headers += e.headers
            writer.respond(status: e.status, headers: headers, body: e.body.encoded())
            log(e.status, 0)
        } catch {
            let e = APIError(500, "internal error: \(error)")
            writer.respond(status: 500, headers: [("Content-Type", "application/json")], body: e.body.encoded())
            log(500, 0)
        }
    }

    private func respondJSON(_ writer: HTTPResponseWriter, _ v: JSONValue, status: Int = 200, log: (Int, Int) -> Void) {
        writer.respond(status: status, headers: [("Content-Type", "application/json")], body: v.encoded())
        log(status, 0)
    }

    private func route(_ req: HTTPRequest, _ writer: HTTPResponseWriter, log: @escaping @Sendable (Int, Int) -> Void) throws {
        let routes: [String: String] = [
            "/health": "GET", "/metrics": "GET", "/v1/models": "GET",
            "/v1/completions": "POST", "/v1/chat/completions": "POST", "/tokenize": "POST", "/detokenize": "POST",
        ]
        let path = req.path.count > 1 && req.path.hasSuffix("/") ? String(req.path.dropLast()) : req.path
        guard let method = routes[path] else {
            throw APIError(404, "no route for \(req.method) \(req.path)", type: "not_found_error")
        }
        guard req.method == method || (req.method == "HEAD" && method == "GET") else {
            var e = APIError(405, "\(req.path) accepts \(method), not \(req.method)", type: "invalid_request_error")
            e.headers = [("Allow", method)]
            throw e
        }
        if path != "/health" && path != "/metrics" { try authorize(req) }

        switch path {
        case "/health":
            lock.lock()
            let (e, err) = (engine, loadError)
            lock.unlock()
            if let err { respondJSON(writer, ["status": "error", "message": .string(err)], status: 503, log: log) }
            else if e == nil { respondJSON(writer, ["status": "loading"], status: 503, log: log) }
            else { respondJSON(writer, ["status": "ok"], log: log) }
        case "/metrics":
            let cancelled = lock.withLock { cancelledRequests }
            let text = PrometheusExporter.render(currentEngine?.metrics(), uptime: Date().timeIntervalSince(startTime),
                                                 cancelledRequests: cancelled)
            writer.respond(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4")], body: Data(text.utf8))
            log(200, 0)
        case "/v1/models":
            let engine = try readyEngine()
            let card: JSONValue = .object([
                ("id", .string(options.modelName)), ("object", .string("model")),
                ("created", .int(Int64(startTime.timeIntervalSince1970))), ("owned_by", .string("tern")),
                ("max_model_len", .int(Int64(engine.configuration.contextLength))),
            ])
            respondJSON(writer, .object([("object", .string("list")), ("data", .array([card]))]), log: log)
        case "/tokenize":
            let engine = try readyEngine()
            let f = try RequestFields(body: req.body)
            guard let text = try f.string("prompt") ?? f.string("content") else {
                throw APIError.invalid("prompt", "'prompt' (a string) is required")
            }
            let options = try CompletionJob.specialTokenOptions(f)
            let tokens = engine.loaded.promptTokens(text: text, parseSpecial: options.parse, addSpecial: options.add)
            let ids: [JSONValue] = tokens.map { .int(Int64($0)) }
            let body: JSONValue = .object([("tokens", .array(ids)), ("count", .int(Int64(tokens.count))),
                                           ("max_model_len", .int(Int64(engine.configuration.contextLength)))])
            respondJSON(writer, body, log: log)
        case "/detokenize":
            let engine = try readyEngine()
            let f = try RequestFields(body: req.body)
            guard case .array(let items)? = f["tokens"] else { throw APIError.invalid("tokens", "'tokens' (an array of integers) is required") }
            let vocab = engine.loaded.model.vocabularySize
            let ids: [Int32] = try items.map {
                guard case .int(let i) = $0, i >= 0, i < vocab else { throw APIError.invalid("tokens", "token ids must be integers in 0..<\(vocab)") }
                return Int32(i)
            }
            let text = engine.loaded.tokenizer.decode(ids)
            respondJSON(writer, .object([("prompt", .string(text)), ("content", .string(text))]), log: log)
        case "/v1/completions":
            try complete(req, writer, kind: .completion, log: log)
        case "/v1/chat/completions":
            try complete(req, writer, kind: .chat, log: log)
        default:
            throw APIError(404, "no route for \(req.path)", type: "not_found_error")
        }
    }

    private func readyEngine() throws -> Engine {
        guard let e = currentEngine else {
            var err = APIError(503, "the model is still loading", type: "server_error")
            err.headers = [("Retry-After", "1")]
            throw err
        }
        return e
    }

    /// API keys compared in constant time (no early exit on the first differing byte).
    private func authorize(_ req: HTTPRequest) throws {
        guard !options.apiKeys.isEmpty else { return }
        let header = req.header("Authorization") ?? ""
        let prefix = "Bearer "
        let given = header.hasPrefix(prefix) ? Array(header.dropFirst(prefix.count).utf8) : []
        var ok = false
        for key in options.apiKeys {
            let k = Array(key.utf8)
            var diff = UInt8(k.count == given.count ? 0 : 1)
            for i in 0..<k.count { diff |= k[i] ^ (i < given.count ? given[i] : 0) }
            ok = ok || (diff == 0)
        }
        guard ok else {
            throw APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')", type: "invalid_request_error", code: "invalid_api_key")
        }
    }

    private func complete(_ req: HTTPRequest, _ writer: HTTPResponseWriter, kind: CompletionJob.Kind,
                          log: @escaping @Sendable (Int, Int) -> Void) throws {
        let engine = try readyEngine()
        let job = try CompletionJob.parse(req.body, kind: kind, model: engine.loaded,
                                          contextLength: engine.configuration.contextLength, modelName: options.modelName,
                                          serverEviction: engine.configuration.eviction)
        if let e = job.requests.first?.eviction, e.isActive, !Engine.canEvict(engine.loaded) {
            logger.notice("kv_policy \(e.policy.rawValue) ignored: \(engine.loaded.model.architecture) keeps a fixed-size state or sliding-window layers")
        }
        let box = ResponderBox()
        let responder = CompletionResponder(job: job, writer: writer, tokenizer: engine.loaded.tokenizer,
                                            modelName: options.modelName) { [weak self] status, tokens in
            if let self, let r = box.responder { self.ended(r, status: status) }
            log(status, tokens)
        }
        box.responder = responder
        var tickets: [Engine.Ticket] = []
        do {
            for (p, r) in job.requests.enumerated() {
                tickets.append(try engine.submit(r) { responder.post(prompt: p, $0) })
            }
        } catch {
            responder.abandon(cancelling: tickets)
            guard let e = error as? EngineSubmitError else { throw error }
            switch e {
            case .queueFull:
                var err = APIError(429, e.description, type: "rate_limit_error", code: "queue_full")
                err.headers = [("Retry-After", "1")]
                throw err
            case .promptTooLong: throw APIError.invalid("prompt", e.description)
            case .emptyPrompt: throw APIError.invalid("prompt", e.description)
            case .stopped: throw APIError(503, e.description, type: "server_error")
            }
        }
        lock.withLock { inFlight[ObjectIdentifier(responder)] = responder }
        responder.start(tickets: tickets)
        // A client that goes away cancels its request at the next engine step.
        writer.onClose { responder.clientGone() }
    }

    private func ended(_ responder: CompletionResponder, status: Int) {
        lock.withLock {
            inFlight.removeValue(forKey: ObjectIdentifier(responder))
            if status == 499 { cancelledRequests += 1 }
        }
    }

    /// Ends every completion still in flight, for a shutdown whose drain timeout has passed: each open stream
    /// gets an OpenAI-style error event, `data: [DONE]` and a clean end of its chunked body; each request not
    /// streamed gets a 503 JSON error. Their engine requests are cancelled. Returns at once; the responses are
    /// written on their own queues (HTTPServer.shutdown waits for them to flush).
    public func abortInFlight(reason: String = "the server is shutting down") {
        let responders = lock.withLock { Array(inFlight.values) }
        let error = APIError(503, reason, type: "server_error", code: "server_shutdown")
        for r in responders { r.abort(error) }
    }
}

/// Lets a responder's completion callback find the responder it was created with (the callback is an argument
/// of the responder's initializer). Written once before the responder can call back; weak, because the
/// responder holds the callback that holds this box.
private final class ResponderBox: @unchecked Sendable {
    weak var responder: CompletionResponder?
}
