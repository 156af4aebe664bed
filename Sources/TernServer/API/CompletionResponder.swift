// Turns the engine events of one HTTP request (one engine request per prompt) into the OpenAI response: SSE
// chunks as tokens arrive, or one JSON body when every choice is done.
//
// Threading: the engine thread only posts events into `mailbox` (see EventMailbox). Everything else — the
// response state below, JSON, gzip, socket writes — runs on `queue`, one serial queue per request. The queue
// starts inactive: events of a request whose submission is still going on (several prompts, or a fast engine)
// wait there, and if a later submission fails the whole response can still be a plain 429, because nothing
// was written yet. `start` or `abandon` activates it exactly once.

import Foundation
import TernCore

final class CompletionResponder: @unchecked Sendable {
    /// Per-request queues target this one, so bursts of responses share Dispatch's bounded thread pool.
    private static let output = DispatchQueue(label: "tern.api.output", attributes: .concurrent)

    let queue: DispatchQueue
    private let mailbox = EventMailbox()
    private let job: CompletionJob
    private let writer: HTTPResponseWriter
    private let format: CompletionFormatter
    /// Called once on `queue` when the response ends: HTTP status (499: the client went away) and the number
    /// of completion tokens produced.
    private let onDone: @Sendable (Int, Int) -> Void
    /// Written before the queue is activated and never again, so every thread may read it afterwards.
    private var tickets: [Engine.Ticket] = []
    private var abandoned = false

    // MARK: queue-only state
    private var choices: [CompletionFormatter.Choice]
    private var usage: [EngineUsage?]
    private var promptLogprobs: [[TokenLogprob?]]
    private var completed = 0
    private var finished = false
    private var headSent = false
    /// SSE bytes of the current drain, written as one piece.
    private var pending = Data()

    init(job: CompletionJob, writer: HTTPResponseWriter, tokenizer: Tokenizer, modelName: String,
         onDone: @escaping @Sendable (Int, Int) -> Void) {
        self.job = job
        self.writer = writer
        self.onDone = onDone
        let id = (job.kind == .chat ? "chatcmpl-" : "cmpl-")
            + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(24)
        format = CompletionFormatter(job: job, tokenizer: tokenizer, id: id, created: Int64(Date().timeIntervalSince1970),
                                     modelName: modelName)
        choices = Array(repeating: CompletionFormatter.Choice(), count: job.requests.count * job.n)
        usage = Array(repeating: nil, count: job.requests.count)
        promptLogprobs = Array(repeating: [], count: job.requests.count)
        queue = DispatchQueue(label: "tern.api.response", attributes: .initiallyInactive, target: Self.output)
    }

    // MARK: any thread

    /// The engine's event handler: append, and wake the queue if it is not already due to drain.
    func post(prompt: Int, _ event: EngineEvent) {
        if mailbox.post(prompt: prompt, event) { queue.async { [self] in drain() } }
    }

    /// Every prompt was accepted: the response begins (a stream sends its head now, before any token).
    func start(tickets: [Engine.Ticket]) {
        self.tickets = tickets
        queue.activate()
        queue.async { [self] in drain() }
    }

    /// A submission failed and the caller answers with an error instead; events already posted are dropped.
    func abandon(cancelling submitted: [Engine.Ticket]) {
        abandoned = true
        queue.activate()
        for t in submitted { t.cancel() }
    }

    /// The client disconnected before the response was complete: stop generating, log 499.
    func clientGone() {
        for t in tickets { t.cancel() }
        queue.async { [self] in
            guard !finished else { return }
            finished = true
            onDone(499, choices.reduce(0) { $0 + $1.tokens.count })
        }
    }

    /// Ends the response now with `error`: an error event, `data: [DONE]` and the end of the chunked body for a
    /// stream that has begun, otherwise the error as the HTTP response.
    func abort(_ error: APIError) {
        queue.async { [self] in fail(error) }
    }

    // MARK: queue

    private func drain() {
        let events = mailbox.take()
        if abandoned || finished { return }
        if job.stream && !headSent {
            headSent = true
            writer.startStream(status: 200, headers: [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        }
        for (p, e) in events {
            apply(prompt: p, e)
            if finished { break }
        }
        flushPending()
    }

    private func apply(prompt p: Int, _ event: EngineEvent) {
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
                send(format.chunk(&choices[index], index: index, text: text, logprobs: lp.map { [$0] } ?? [], finish: nil, prompt: p))
            }
        case .finished(let c, let reason, let text):
            let index = p * job.n + c
            choices[index].text += text
            choices[index].finish = reason
            if job.stream { send(format.chunk(&choices[index], index: index, text: text, logprobs: [], finish: reason, prompt: p)) }
        case .completed(let u):
            usage[p] = u
            completed += 1
            if completed == job.requests.count { finish() }
        case .failed(let message, let why):
            fail(APIError(why == .unavailable ? 503 : 500, message, type: "server_error"))
        }
    }

    private func send(_ v: JSONValue) {
        pending.append(contentsOf: ("data: " + v.text + "\n\n").utf8)
    }

    private func flushPending() {
        guard !pending.isEmpty else { return }
        writer.writeChunk(pending)
        pending = Data()
    }

    private func fail(_ error: APIError) {
        guard !finished else { return }
        finished = true
        if job.stream && headSent {
            send(error.body)
            pending.append(contentsOf: "data: [DONE]\n\n".utf8)
            flushPending()
            writer.endStream()
        } else {
            pending = Data()
            writer.respond(status: error.status, headers: [("Content-Type", "application/json")], body: error.body.encoded())
        }
        onDone(error.status, choices.reduce(0) { $0 + $1.tokens.count })
        for t in tickets { t.cancel() }
    }

    private func finish() {
        finished = true
        let completionTokens = usage.reduce(0) { $0 + ($1?.completionTokens ?? 0) }
        if job.stream {
            if job.includeUsage { send(format.usageChunk(usage)) }
            pending.append(contentsOf: "data: [DONE]\n\n".utf8)
            flushPending()
            writer.endStream()
        } else {
            let body = format.body(choices: choices, usage: usage, promptLogprobs: promptLogprobs)
            writer.respond(status: 200, headers: [("Content-Type", "application/json")], body: body.encoded())
        }
        onDone(200, completionTokens)
    }
}
