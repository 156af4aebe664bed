// Turns engine events of one HTTP request (one engine request per prompt) into the OpenAI response: SSE chunks
// as tokens arrive, or one JSON body when every choice is done. Events arrive on the engine thread; the
// HTTP side may cancel at any time, so the state is guarded by `lock`.

import Foundation
import TernCore

final class CompletionResponder: @unchecked Sendable {
    private let lock = NSLock()
    private let job: CompletionJob
    private let writer: HTTPResponseWriter
    private let tokenizer: Tokenizer
    private let id: String
    private let created: Int64
    private let modelName: String
    private let onDone: @Sendable (Int, Int) -> Void   // status, completion tokens

    private struct Choice {
        var text = ""
        var finish: FinishReason?
        var tokens: [Int32] = []
        var logprobs: [TokenLogprob] = []
        /// Chat: the first chunk carries the role. Completions with echo: the first chunk carries the prompt.
        var sentPreamble = false
    }
    private var choices: [Choice]
    private var usage: [EngineUsage?]
    private var promptLogprobs: [[TokenLogprob?]]
    private var completed = 0
    private var finishedResponse = false
    private var streamStarted = false
    /// Events that arrived before the SSE head was sent (submission precedes `beginStream`, and a fast
    /// engine can finish a short request in between).
    private var earlyEvents: [(Int, EngineEvent)] = []
    private var streamOpen = false
    var tickets: [Engine.Ticket] = []

    init(job: CompletionJob, writer: HTTPResponseWriter, tokenizer: Tokenizer, modelName: String,
         onDone: @escaping @Sendable (Int, Int) -> Void) {
        self.job = job
        self.writer = writer
        self.tokenizer = tokenizer
        self.modelName = modelName
        self.onDone = onDone
        id = (job.kind == .chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(24)
        created = Int64(Date().timeIntervalSince1970)
        choices = Array(repeating: Choice(), count: job.requests.count * job.n)
        usage = Array(repeating: nil, count: job.requests.count)
        promptLogprobs = Array(repeating: [], count: job.requests.count)
    }

    func cancelAll() {
        lock.lock()
        let t = tickets
        lock.unlock()
        for ticket in t { ticket.cancel() }
    }

    /// Sends the SSE head once the engine accepted the request, then any events that came first.
    func beginStream() {
        guard job.stream else { return }
        lock.lock()
        defer { lock.unlock() }
        guard !finishedResponse else { return }
        streamStarted = writer.startStream(status: 200, headers: [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        streamOpen = true
        let early = earlyEvents
        earlyEvents.removeAll()
        for (p, e) in early { apply(prompt: p, e) }
    }

    func handle(prompt p: Int, _ event: EngineEvent) {
        lock.lock()
        defer { lock.unlock() }
        guard !finishedResponse else { return }
        if job.stream && !streamOpen {
            earlyEvents.append((p, event))
            return
        }
        apply(prompt: p, event)
    }

    private func apply(prompt p: Int, _ event: EngineEvent) {
        guard !finishedResponse else { return }
        switch event {
        case .started:
            break
        case .promptLogprobs(let l):
            promptLogprobs[p] = l
        case .token(let c, let token, let text, let lp):
            let index = p * job.n + c
            choices[index].tokens.append(token)
            choices[index].text += text
            if let lp { choices[index].logprobs.append(lp) }
            if job.stream && (!text.isEmpty || lp != nil) {
                send(chunk(index: index, text: text, logprobs: lp.map { [$0] } ?? [], finish: nil, prompt: p))
            }
        case .finished(let c, let reason, let text):
            let index = p * job.n + c
            choices[index].text += text
            choices[index].finish = reason
            if job.stream { send(chunk(index: index, text: text, logprobs: [], finish: reason, prompt: p)) }
        case .completed(let u):
            usage[p] = u
            completed += 1
            if completed == job.requests.count { finish() }
        case .failed(let message):
            fail(APIError(503, message, type: "server_error"))
        }
    }

    /// Ends the response with an error (before or during streaming).
    func fail(_ error: APIError) {
        guard !finishedResponse else { return }
        finishedResponse = true
        if job.stream && streamStarted {
            _ = writer.writeChunk(Data("data: \(error.body.text)\n\n".utf8))
            _ = writer.writeChunk(Data("data: [DONE]\n\n".utf8))
            writer.endStream()
        } else {
            writer.respond(status: error.status, headers: [("Content-Type", "application/json")], body: error.body.encoded())
        }
        onDone(error.status, 0)
        let t = tickets
        DispatchQueue.global().async { for ticket in t { ticket.cancel() } }
    }

    private func send(_ v: JSONValue) {
        _ = writer.writeChunk(Data(("data: " + v.text + "\n\n").utf8))
    }

    private var object: String {
        switch job.kind {
        case .completion: return "text_completion"
        case .chat: return job.stream ? "chat.completion.chunk" : "chat.completion"
        }
    }

    private func chunk(index: Int, text: String, logprobs: [TokenLogprob], finish: FinishReason?, prompt: Int) -> JSONValue {
        var choice: [(String, JSONValue)] = [("index", .int(Int64(index)))]
        switch job.kind {
        case .completion:
            var t = text
            if job.echo && !choices[index].sentPreamble {
                t = job.promptTexts[prompt] + t
                choices[index].sentPreamble = true
            }
            choice.append(("text", .string(t)))
            choice.append(("logprobs", job.logprobs == nil ? .null : completionLogprobs(logprobs, offset: 0)))
        case .chat:
            var delta: [(String, JSONValue)] = []
            if !choices[index].sentPreamble {
                delta.append(("role", "assistant"))
                choices[index].sentPreamble = true
            }
            if !text.isEmpty || finish == nil { delta.append(("content", .string(text))) }
            choice.append(("delta", .object(delta)))
            choice.append(("logprobs", job.logprobs == nil ? .null : chatLogprobs(logprobs)))
        }
        choice.append(("finish_reason", finish.map { .string($0.rawValue) } ?? .null))
        return .object([("id", .string(id)), ("object", .string(object)), ("created", .int(created)),
                        ("model", .string(modelName)), ("choices", .array([.object(choice)]))])
    }

    private func usageJSON() -> JSONValue {
        let prompt = usage.reduce(0) { $0 + ($1?.promptTokens ?? 0) }
        let cached = usage.reduce(0) { $0 + ($1?.cachedPromptTokens ?? 0) }
        let completion = usage.reduce(0) { $0 + ($1?.completionTokens ?? 0) }
        return .object([("prompt_tokens", .int(Int64(prompt))), ("completion_tokens", .int(Int64(completion))),
                        ("total_tokens", .int(Int64(prompt + completion))),
                        ("prompt_tokens_details", .object([("cached_tokens", .int(Int64(cached)))]))])
    }

    private func finish() {
        finishedResponse = true
        let completionTokens = usage.reduce(0) { $0 + ($1?.completionTokens ?? 0) }
        if job.stream {
            if job.includeUsage {
                send(.object([("id", .string(id)), ("object", .string(object)), ("created", .int(created)),
                              ("model", .string(modelName)), ("choices", .array([])), ("usage", usageJSON())]))
            }
            _ = writer.writeChunk(Data("data: [DONE]\n\n".utf8))
            writer.endStream()
            onDone(200, completionTokens)
            return
        }
        var out: [JSONValue] = []
        for (i, c) in choices.enumerated() {
            let p = i / job.n
            var choice: [(String, JSONValue)] = [("index", .int(Int64(i)))]
            switch job.kind {
            case .completion:
                let prefix: [TokenLogprob?] = job.echo && job.logprobs != nil ? promptLogprobs[p] : []
                let text = (job.echo ? job.promptTexts[p] : "") + c.text
                choice.append(("text", .string(text)))
                if job.logprobs != nil {
                    choice.append(("logprobs", completionLogprobs(c.logprobs, offset: 0, prompt: prefix, promptTokens: job.requests[p].promptTokens)))
                } else {
                    choice.append(("logprobs", .null))
                }
            case .chat:
                choice.append(("message", .object([("role", "assistant"), ("content", .string(c.text))])))
                choice.append(("logprobs", job.logprobs == nil ? .null : chatLogprobs(c.logprobs)))
            }
            choice.append(("finish_reason", .string((c.finish ?? .length).rawValue)))
            out.append(.object(choice))
        }
        let body: JSONValue = .object([("id", .string(id)), ("object", .string(object)), ("created", .int(created)),
                                       ("model", .string(modelName)), ("choices", .array(out)), ("usage", usageJSON())])
        writer.respond(status: 200, headers: [("Content-Type", "application/json")], body: body.encoded())
        onDone(200, completionTokens)
    }

    // MARK: logprobs formats

    private func tokenText(_ t: Int32) -> String { tokenizer.decode([t]) }

    /// Completions format: tokens, token_logprobs, top_logprobs, text_offset (echoed prompt tokens first).
    private func completionLogprobs(_ lps: [TokenLogprob], offset: Int, prompt: [TokenLogprob?] = [], promptTokens: [Int32] = []) -> JSONValue {
        var tokens: [JSONValue] = [], values: [JSONValue] = [], tops: [JSONValue] = [], offsets: [JSONValue] = []
        var pos = offset
        for (i, entry) in prompt.enumerated() where i < promptTokens.count {
            let text = tokenText(promptTokens[i])
            tokens.append(.string(text))
            values.append(entry.map { .double(Double($0.logprob)) } ?? .null)
            tops.append(entry.map { e in .object(e.top.map { (tokenText($0.token), .double(Double($0.logprob))) }) } ?? .null)
            offsets.append(.int(Int64(pos)))
            pos += text.utf8.count
        }
        for e in lps {
            let text = tokenText(e.token)
            tokens.append(.string(text))
            values.append(.double(Double(e.logprob)))
            tops.append(.object(e.top.map { (tokenText($0.token), .double(Double($0.logprob))) }))
            offsets.append(.int(Int64(pos)))
            pos += text.utf8.count
        }
        return .object([("tokens", .array(tokens)), ("token_logprobs", .array(values)),
                        ("top_logprobs", .array(tops)), ("text_offset", .array(offsets))])
    }

    private func chatLogprobs(_ lps: [TokenLogprob]) -> JSONValue {
        func entry(_ t: Int32, _ lp: Float) -> [(String, JSONValue)] {
            [("token", .string(tokenText(t))), ("logprob", .double(Double(lp))),
             ("bytes", .array(tokenizer.tokenBytes(t).map { .int(Int64($0)) }))]
        }
        return .object([("content", .array(lps.map { e in
            .object(entry(e.token, e.logprob) + [("top_logprobs", .array(e.top.map { .object(entry($0.token, $0.logprob)) }))])
        }))])
    }
}
