// Maps a /v1/completions or /v1/chat/completions body onto engine requests. All validation happens here, so a
// bad request never reaches the engine: each problem is an APIError naming its parameter.

import Foundation
import TernCore

struct CompletionJob {
    enum Kind { case completion, chat }

    let kind: Kind
    /// One engine request per prompt (completions accept several prompts).
    var requests: [EngineRequest]
    /// Prompt texts, for `echo`.
    var promptTexts: [String]
    var stream: Bool
    var includeUsage: Bool
    var echo: Bool
    var logprobs: Int?
    var n: Int

    static let maxN = 16
    static let maxStops = 16
    /// Characters of one stop string: every generated token is checked against each stop string's tail.
    static let maxStopLength = 256
    static let maxTopLogprobs = 20
    static let maxPrompts = 64
    /// Sequences one request may start (prompts × n): each holds KV blocks and a place in the batch.
    static let maxChoices = 128
    static let maxLogitBias = 1024
    static let maxPredictionBytes = 1 << 20

    static func parse(_ body: Data, kind: Kind, model: LoadedModel, contextLength: Int, modelName: String,
                      serverEviction: EvictionSettings = EvictionSettings(policy: .none, budget: EvictionSettings.defaultBudget)) throws -> CompletionJob {
        let f = try RequestFields(body: body)
        if let name = try f.string("model"), name != modelName {
            throw APIError(404, "the model '\(name)' does not exist; this server serves '\(modelName)'", param: "model", code: "model_not_found")
        }
        var sampling = SamplingParameters(temperature: 1)
        if let t = try f.number("temperature", { $0 >= 0 && $0 <= 100 }, "between 0 and 100") { sampling.temperature = Float(t) }
        if let p = try f.number("top_p", { $0 > 0 && $0 <= 1 }, "in (0, 1]") { sampling.topP = Float(p) }
        if let k = try f.int("top_k", in: -1...1_000_000) { sampling.topK = max(0, k) }
        if let p = try f.number("min_p", { $0 >= 0 && $0 <= 1 }, "in [0, 1]") { sampling.minP = Float(p) }
        if let p = try f.number("presence_penalty", { $0 >= -2 && $0 <= 2 }, "between -2 and 2") { sampling.presencePenalty = Float(p) }
        if let p = try f.number("frequency_penalty", { $0 >= -2 && $0 <= 2 }, "between -2 and 2") { sampling.frequencyPenalty = Float(p) }
        if let p = try f.number("repetition_penalty", { $0 > 0 && $0 <= 10 }, "in (0, 10]") { sampling.repetitionPenalty = Float(p) }
        if let s = try f.int("seed") { sampling.seed = UInt64(bitPattern: Int64(s)) }
        let n = try f.int("n", in: 1...maxN) ?? 1
        let stream = try f.bool("stream", default: false)
        var includeUsage = false
        if let so = f["stream_options"] {
            guard case .object = so else { throw APIError.invalid("stream_options", "'stream_options' must be an object") }
            if let u = so["include_usage"] {
                guard case .bool(let b) = u else { throw APIError.invalid("stream_options.include_usage", "'include_usage' must be a boolean") }
                includeUsage = b
            }
        }
        let stops = try f.strings("stop", max: maxStops)
        if stops.contains(where: { $0.isEmpty }) { throw APIError.invalid("stop", "stop strings must not be empty") }
        if stops.contains(where: { $0.count > maxStopLength }) {
            throw APIError.invalid("stop", "stop strings may be at most \(maxStopLength) characters long")
        }
        sampling.logitBias = try logitBias(f, vocabularySize: model.model.vocabularySize)
        let ignoreEOS = try f.bool("ignore_eos", default: false)
        _ = try f.string("user")
        let prediction = try predictedOutput(f, model: model)
        let speculative = try f.bool("speculative", default: true)
        let eviction = try evictionSettings(f, server: serverEviction)

        var logprobs: Int?
        var echo = false
        var prompts: [[Int32]] = []
        var promptTexts: [String] = []
        /// What the client asked for, and the parameter that carried it (for the error naming it).
        var maxTokens: (count: Int, param: String)?
        let promptParam = kind == .chat ? "messages" : "prompt"
        switch kind {
        case .completion:
            if let lp = try f.int("logprobs", in: 0...maxTopLogprobs) { logprobs = lp }
            echo = try f.bool("echo", default: false)
            maxTokens = try f.int("max_tokens", in: 0...Int(Int32.max)).map { ($0, "max_tokens") }
            (prompts, promptTexts) = try completionPrompts(f, model: model)
        case .chat:
            if try f.bool("logprobs", default: false) {
                logprobs = try f.int("top_logprobs", in: 0...maxTopLogprobs) ?? 0
            } else if f["top_logprobs"] != nil {
                throw APIError.invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
            }
            if let m = try f.int("max_completion_tokens", in: 1...Int(Int32.max)) {
                maxTokens = (m, "max_completion_tokens")
            } else if let m = try f.int("max_tokens", in: 1...Int(Int32.max)) {
                maxTokens = (m, "max_tokens")
            }
            let tokens = try chatPrompt(f, model: model)
            prompts = [tokens]
            promptTexts = [""]
        }
        guard prompts.count * n <= maxChoices else {
            throw APIError.invalid("n", "\(prompts.count) prompts with n = \(n) would start \(prompts.count * n) sequences; at most \(maxChoices) are allowed")
        }
        var requests: [EngineRequest] = []
        for p in prompts {
            guard !p.isEmpty else { throw APIError.invalid(promptParam, "the prompt is empty") }
            guard p.count < contextLength else {
                throw APIError(400, "This model's maximum context length is \(contextLength) tokens. However, your \(promptParam) "
                               + "resulted in \(p.count) tokens. Please reduce the length of the \(promptParam).",
                               param: promptParam, code: "context_length_exceeded")
            }
            let room = contextLength - p.count
            let count: Int
            if let (wanted, param) = maxTokens {
                // Asking for more than fits is an error (as in vLLM and OpenAI), not a silent cut.
                guard wanted <= room else {
                    throw APIError(400, "This model's maximum context length is \(contextLength) tokens. However, you requested "
                                   + "\(p.count + wanted) tokens (\(p.count) in the \(promptParam), \(wanted) for the completion). "
                                   + "Please reduce the length of the \(promptParam) or completion.",
                                   param: param, code: "context_length_exceeded")
                }
                count = wanted
            } else {
                // Unspecified: chat runs up to the end of the context, completions default to 16 tokens.
                count = kind == .chat ? room : min(16, room)
            }
            requests.append(EngineRequest(promptTokens: p, maxTokens: count, sampling: sampling,
                                          stopStrings: stops, ignoreEOS: ignoreEOS, n: n,
                                          logprobs: logprobs, promptLogprobs: echo && logprobs != nil,
                                          prediction: prediction, speculative: speculative, eviction: eviction))
        }
        return CompletionJob(kind: kind, requests: requests, promptTexts: promptTexts, stream: stream,
                             includeUsage: includeUsage, echo: echo, logprobs: logprobs, n: n)
    }

    /// `prompt`: a string, an array of strings, an array of token ids, or an array of such arrays.
    static func completionPrompts(_ f: RequestFields, model: LoadedModel) throws -> ([[Int32]], [String]) {
        guard let p = f["prompt"] else { throw APIError.invalid("prompt", "'prompt' is required") }
        let vocab = model.model.vocabularySize
        func ids(_ items: [JSONValue]) throws -> [Int32] {
            try items.map {
                guard case .int(let i) = $0 else { throw APIError.invalid("prompt", "token arrays must hold integers") }
                guard i >= 0 && i < vocab else { throw APIError.invalid("prompt", "token id \(i) is outside the vocabulary (0..<\(vocab))") }
                return Int32(i)
            }
        }
        let special = try specialTokenOptions(f)
        func textPrompt(_ s: String) -> [Int32] { model.promptTokens(text: s, parseSpecial: special.parse, addSpecial: special.add) }
        switch p {
        case .string(let s): return ([textPrompt(s)], [s])
        case .array(let items):
            guard !items.isEmpty else { throw APIError.invalid("prompt", "'prompt' must not be an empty array") }
            if case .int = items[0] {
                let t = try ids(items)
                return ([t], [model.tokenizer.decode(t)])
            }
            guard items.count <= maxPrompts else { throw APIError.invalid("prompt", "at most \(maxPrompts) prompts per request") }
            var out: [[Int32]] = [], texts: [String] = []
            for item in items {
                switch item {
                case .string(let s): out.append(textPrompt(s)); texts.append(s)
                case .array(let inner):
                    let t = try ids(inner)
                    out.append(t)
                    texts.append(model.tokenizer.decode(t))
                default: throw APIError.invalid("prompt", "'prompt' must be a string, an array of strings, or token-id arrays")
                }
            }
            return (out, texts)
        default:
            throw APIError.invalid("prompt", "'prompt' must be a string, an array of strings, or token-id arrays")
        }
    }

    /// Tern's KV eviction per request: `kv_policy` (none, window, alisa, dms) and `kv_budget` (positions kept per
    /// layer and KV head); either alone takes the other from the server (`--kv-policy`, `--kv-budget`). nil when
    /// neither is given.
    static func evictionSettings(_ f: RequestFields, server serverEviction: EvictionSettings) throws -> EvictionSettings? {
        let name = try f.string("kv_policy")
        let budget = try f.int("kv_budget", in: EvictionSettings.minimumBudget...Int(Int32.max))
        guard name != nil || budget != nil else { return nil }
        var policy: EvictionPolicy?
        if let name {
            guard let p = EvictionPolicy(rawValue: name) else {
                throw APIError.invalid("kv_policy", "'kv_policy' must be one of none, window, alisa, dms; got '\(name)'")
            }
            policy = p
        }
        return EvictionSettings(policy: policy ?? serverEviction.policy, budget: budget ?? serverEviction.budget)
    }

    /// OpenAI's predicted outputs: `prediction: {"type": "content", "content": "…"}`, the content a string or an
    /// array of text parts. Tokenized as plain text (no BOS, special-token text left as text).
    static func predictedOutput(_ f: RequestFields, model: LoadedModel) throws -> [Int32]? {
        guard let p = f["prediction"] else { return nil }
        guard case .object = p else { throw APIError.invalid("prediction", "'prediction' must be an object like {\"type\": \"content\", \"content\": \"…\"}") }
        guard case .string(let type)? = p["type"], type == "content" else {
            throw APIError.invalid("prediction.type", "'prediction.type' must be \"content\"")
        }
        let text: String
        switch p["content"] {
        case .string(let s)?: text = s
        case .array(let parts)?:
            var joined = ""
            for part in parts {
                guard case .string("text")? = part["type"], case .string(let t)? = part["text"] else {
                    throw APIError.invalid("prediction.content", "'prediction.content' parts must be {\"type\": \"text\", \"text\": \"…\"}")
                }
                joined += t
            }
            text = joined
        default:
            throw APIError.invalid("prediction.content", "'prediction.content' must be a string or an array of text parts")
        }
        guard text.utf8.count <= maxPredictionBytes else {
            throw APIError.invalid("prediction.content", "'prediction.content' may be at most \(maxPredictionBytes) bytes")
        }
        return model.promptTokens(text: text, parseSpecial: false, addSpecial: false)
    }

    /// llama-server's fields for text prompts: `parse_special` (special-token text such as "<|im_start|>"
    /// becomes its token, as llama-server and vLLM do by default) and `add_special` (BOS when the model wants
    /// it; vLLM calls it `add_special_tokens`). Both default to true.
    static func specialTokenOptions(_ f: RequestFields) throws -> (parse: Bool, add: Bool) {
        let parse = try f.bool("parse_special", default: true)
        let add = try f.bool("add_special", default: f.bool("add_special_tokens", default: true))
        return (parse, add)
    }

    /// OpenAI's `logit_bias`: token ids written as strings, each mapped to a bias from -100 to 100 that the
    /// sampler adds to the token's logit.
    static func logitBias(_ f: RequestFields, vocabularySize: Int) throws -> [Int32: Float] {
        guard let v = f["logit_bias"] else { return [:] }
        guard case .object(let pairs) = v else {
            throw APIError.invalid("logit_bias", "'logit_bias' must be an object mapping token ids (strings) to numbers from -100 to 100")
        }
        guard pairs.count <= maxLogitBias else {
            throw APIError.invalid("logit_bias", "'logit_bias' may hold at most \(maxLogitBias) tokens, got \(pairs.count)")
        }
        var bias: [Int32: Float] = [:]
        for (key, value) in pairs {
            guard !key.isEmpty, key.utf8.count <= 10, key.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                  let id = Int(key), id < vocabularySize else {
                throw APIError.invalid("logit_bias", "'logit_bias' key '\(key.prefix(40))' is not a token id in 0..<\(vocabularySize)")
            }
            let b: Double
            switch value {
            case .int(let i): b = Double(i)
            case .double(let d): b = d
            default: throw APIError.invalid("logit_bias", "'logit_bias' value for token \(id) must be a number")
            }
            guard b >= -100 && b <= 100 else {
                throw APIError.invalid("logit_bias", "'logit_bias' value for token \(id) must be between -100 and 100, got \(b)")
            }
            bias[Int32(id)] = Float(b)
        }
        return bias
    }

    static func chatPrompt(_ f: RequestFields, model: LoadedModel) throws -> [Int32] {
        guard let m = f["messages"] else { throw APIError.invalid("messages", "'messages' is required") }
        guard case .array(let items) = m, !items.isEmpty else { throw APIError.invalid("messages", "'messages' must be a non-empty array") }
        var messages: [ChatMessage] = []
        for (i, item) in items.enumerated() {
            guard case .object = item else { throw APIError.invalid("messages[\(i)]", "each message must be an object") }
            guard case .string(let role)? = item["role"] else { throw APIError.invalid("messages[\(i)].role", "each message needs a string 'role'") }
            guard ["system", "user", "assistant", "tool", "developer"].contains(role) else {
                throw APIError.invalid("messages[\(i)].role", "unknown role '\(role)'")
            }
            var content = ""
            switch item["content"] {
            case .string(let s)?: content = s
            case .null?, nil:
                guard role == "assistant" else { throw APIError.invalid("messages[\(i)].content", "'content' is required") }
            case .array(let parts)?:
                // OpenAI content parts: only text can be served here.
                for (j, part) in parts.enumerated() {
                    guard case .string("text")? = part["type"], case .string(let t)? = part["text"] else {
                        throw APIError.invalid("messages[\(i)].content[\(j)]", "only text content parts are supported")
                    }
                    content += t
                }
            default: throw APIError.invalid("messages[\(i)].content", "'content' must be a string or an array of text parts")
            }
            messages.append(ChatMessage(role: role == "developer" ? "system" : role, content: content))
        }
        guard model.chatTemplate != nil else {
            throw APIError(400, "this model has no chat template; use /v1/completions", param: "messages")
        }
        do {
            return try model.chatPromptTokens(messages: messages)
        } catch {
            throw APIError(400, "the chat template rejected the messages: \(error)", param: "messages")
        }
    }
}
