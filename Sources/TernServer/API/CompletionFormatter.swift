// The JSON shapes of one completion response: streamed chunks, the usage chunk, the final body, and the two
// logprobs formats (completions' token/offset arrays, chat's content list). Pure functions of what the
// responder has gathered; it holds no state of the response.

import Foundation
import TernCore

struct CompletionFormatter {
    let job: CompletionJob
    let tokenizer: Tokenizer
    let id: String
    let created: Int64
    let modelName: String

    /// One choice's output as gathered from engine events.
    struct Choice {
        var text = ""
        var finish: FinishReason?
        var tokens: [Int32] = []
        var logprobs: [TokenLogprob] = []
        /// Chat: the first chunk carries the role. Completions with echo: the first chunk carries the prompt.
        var sentPreamble = false
    }

    var object: String {
        switch job.kind {
        case .completion: return "text_completion"
        case .chat: return job.stream ? "chat.completion.chunk" : "chat.completion"
        }
    }

    private func envelope(_ rest: [(String, JSONValue)]) -> JSONValue {
        .object([("id", .string(id)), ("object", .string(object)), ("created", .int(created)),
                 ("model", .string(modelName))] + rest)
    }

    /// A streamed chunk for choice `index`; marks the choice's preamble as sent.
    func chunk(_ c: inout Choice, index: Int, text: String, logprobs: [TokenLogprob], finish: FinishReason?,
               prompt: Int) -> JSONValue {
        var choice: [(String, JSONValue)] = [("index", .int(Int64(index)))]
        switch job.kind {
        case .completion:
            var t = text
            if job.echo && !c.sentPreamble {
                t = job.promptTexts[prompt] + t
                c.sentPreamble = true
            }
            choice.append(("text", .string(t)))
            choice.append(("logprobs", job.logprobs == nil ? .null : completionLogprobs(logprobs, offset: 0)))
        case .chat:
            var delta: [(String, JSONValue)] = []
            if !c.sentPreamble {
                delta.append(("role", "assistant"))
                c.sentPreamble = true
            }
            if !text.isEmpty || finish == nil { delta.append(("content", .string(text))) }
            choice.append(("delta", .object(delta)))
            choice.append(("logprobs", job.logprobs == nil ? .null : chatLogprobs(logprobs)))
        }
        choice.append(("finish_reason", finish.map { .string($0.rawValue) } ?? .null))
        return envelope([("choices", .array([.object(choice)]))])
    }

    func usageChunk(_ usage: [EngineUsage?]) -> JSONValue {
        envelope([("choices", .array([])), ("usage", usageJSON(usage))])
    }

    func usageJSON(_ usage: [EngineUsage?]) -> JSONValue {
        let prompt = usage.reduce(0) { $0 + ($1?.promptTokens ?? 0) }
        let cached = usage.reduce(0) { $0 + ($1?.cachedPromptTokens ?? 0) }
        let completion = usage.reduce(0) { $0 + ($1?.completionTokens ?? 0) }
        let accepted = usage.reduce(0) { $0 + ($1?.acceptedPredictionTokens ?? 0) }
        let rejected = usage.reduce(0) { $0 + ($1?.rejectedPredictionTokens ?? 0) }
        return .object([("prompt_tokens", .int(Int64(prompt))), ("completion_tokens", .int(Int64(completion))),
                        ("total_tokens", .int(Int64(prompt + completion))),
                        ("prompt_tokens_details", .object([("cached_tokens", .int(Int64(cached)))])),
                        ("completion_tokens_details", .object([("reasoning_tokens", .int(0)),
                                                               ("accepted_prediction_tokens", .int(Int64(accepted))),
                                                               ("rejected_prediction_tokens", .int(Int64(rejected)))]))])
    }

    /// The non-streamed body once every choice is done.
    func body(choices: [Choice], usage: [EngineUsage?], promptLogprobs: [[TokenLogprob?]]) -> JSONValue {
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
                    choice.append(("logprobs", completionLogprobs(c.logprobs, offset: 0, prompt: prefix,
                                                                  promptTokens: job.requests[p].promptTokens)))
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
        return envelope([("choices", .array(out)), ("usage", usageJSON(usage))])
    }

    // MARK: logprobs formats

    private func tokenText(_ t: Int32) -> String { tokenizer.decode([t]) }

    /// Completions format: tokens, token_logprobs, top_logprobs, text_offset (echoed prompt tokens first).
    private func completionLogprobs(_ lps: [TokenLogprob], offset: Int, prompt: [TokenLogprob?] = [],
                                    promptTokens: [Int32] = []) -> JSONValue {
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
