// The engine's public vocabulary: what a caller submits, what it hears back, and how the engine is sized.

import Foundation

public struct EngineConfiguration: Sendable {
    public var threads: Int
    /// Longest sequence (prompt + output) one request may reach.
    public var contextLength: Int
    /// Bytes of the paged KV store.
    public var kvCacheBytes: Int
    public var blockSize: Int = 16
    public var kvStorage: KVStorage = .f16
    /// Tokens one engine step may carry (decodes plus prefill chunks).
    public var maxBatchTokens: Int = 512
    /// Sequences decoding at once at most.
    public var maxRunning: Int = 64
    /// Requests waiting to start at most; beyond, submit fails with `.queueFull`.
    public var maxQueue: Int = 256
    public var prefixCaching: Bool = true
    /// Bytes idle cached prefix blocks may keep resident at most (nil: all the KV store's unused blocks).
    public var prefixCacheMaxBytes: Int?
    /// While sequences are generating, prefill chunks are sized so that a step takes about this long (their
    /// inter-token latency while long prompts are computed); nil: steps are sized by tokens and cost only.
    public var decodingStepTarget: Double? = 0.2
    /// Seconds a KV block stays free before its pages go back to the kernel, so resident memory follows use
    /// after a burst (0: as soon as the engine looks; nil: never).
    public var kvReleaseDelay: Double? = 10
    /// RelayAttention for decoding sequences that share prefix blocks.
    public var relay: Bool = true
    /// Speculative decoding (transformers only; Mamba's recurrent state cannot roll back rejected tokens).
    public var speculation = SpeculationConfiguration()
    /// KV eviction for requests that do not choose their own (`EngineRequest.eviction`). Models with one cache
    /// group of full attention evict; Mamba (a fixed state) and models with sliding-window layers ignore it.
    public var eviction = EvictionSettings(policy: .none, budget: EvictionSettings.defaultBudget)

    public init(threads: Int, contextLength: Int, kvCacheBytes: Int) {
        self.threads = threads
        self.contextLength = contextLength
        self.kvCacheBytes = kvCacheBytes
    }
}

public struct EngineRequest: Sendable {
    public var promptTokens: [Int32]
    public var maxTokens: Int
    public var sampling: SamplingParameters
    public var stopStrings: [String]
    public var stopTokens: [Int32]
    public var ignoreEOS: Bool
    /// Choices to generate from the one prompt (they share its KV blocks).
    public var n: Int
    /// nil: no logprobs; k ≥ 0: the chosen token's logprob and the k most likely alternatives.
    public var logprobs: Int?
    /// Logprobs of the prompt's tokens (echo); the first token has none.
    public var promptLogprobs: Bool
    /// OpenAI's predicted output, tokenized: text the answer is expected to repeat, used as a draft.
    public var prediction: [Int32]?
    /// false opts this request out of speculative decoding.
    public var speculative: Bool
    /// This request's KV eviction (policy and budget); nil takes the server's.
    public var eviction: EvictionSettings?

    public init(promptTokens: [Int32], maxTokens: Int, sampling: SamplingParameters = .greedy,
                stopStrings: [String] = [], stopTokens: [Int32] = [], ignoreEOS: Bool = false, n: Int = 1,
                logprobs: Int? = nil, promptLogprobs: Bool = false, prediction: [Int32]? = nil, speculative: Bool = true,
                eviction: EvictionSettings? = nil) {
        self.eviction = eviction
        self.promptTokens = promptTokens
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopStrings = stopStrings
        self.stopTokens = stopTokens
        self.ignoreEOS = ignoreEOS
        self.n = n
        self.logprobs = logprobs
        self.promptLogprobs = promptLogprobs
        self.prediction = prediction
        self.speculative = speculative
    }
}

public struct TokenLogprob: Sendable {
    public var token: Int32
    public var logprob: Float
    /// Most likely tokens at this position with their logprobs, best first.
    public var top: [(token: Int32, logprob: Float)]
}

public struct EngineUsage: Sendable {
    public var promptTokens: Int
    public var cachedPromptTokens: Int
    public var completionTokens: Int
    /// Per choice: the end-of-generation or stop token that ended it (not part of its output), if one did.
    public var stopTokens: [Int32?] = []
    /// Predicted-output tokens the output followed, summed over choices, and the prediction's tokens it did not
    /// (OpenAI's completion_tokens_details); 0 without a prediction.
    public var acceptedPredictionTokens = 0
    public var rejectedPredictionTokens = 0
    /// Speculative tokens drafted for this request and accepted, summed over choices.
    public var draftedTokens = 0
    public var acceptedDraftTokens = 0
}

public enum EngineEvent: Sendable {
    /// Prefill began; `cachedTokens` prompt tokens came from the prefix cache.
    case started(cachedTokens: Int)
    /// Logprobs of prompt tokens 1…; entry 0 (the first token) is nil.
    case promptLogprobs([TokenLogprob?])
    /// A generated token of one choice and the text it completes (may be empty while a character or a
    /// possible stop string is incomplete).
    case token(choice: Int, token: Int32, text: String, logprob: TokenLogprob?)
    /// Trailing text of a choice released at its end, then its finish reason.
    case finished(choice: Int, reason: FinishReason, text: String)
    /// Every choice has finished.
    case completed(EngineUsage)
    /// The request ended without an answer; the server goes on.
    case failed(String, EngineFailure)
}

/// Why the engine gave up on a request: it cannot take it now (shutting down, larger than the KV store), or
/// computing it went wrong (the forward pass threw, the model produced non-finite logits).
public enum EngineFailure: Sendable, Equatable {
    case unavailable
    case internalError
}

public enum EngineSubmitError: Error, CustomStringConvertible, Sendable {
    case queueFull(waiting: Int)
    case promptTooLong(tokens: Int, context: Int)
    case emptyPrompt
    case stopped

    public var description: String {
        switch self {
        case .queueFull(let w): return "the server is busy: \(w) requests are already waiting"
        case .promptTooLong(let t, let c): return "the prompt has \(t) tokens, but the context holds \(c)"
        case .emptyPrompt: return "the prompt is empty"
        case .stopped: return "the engine is shutting down"
        }
    }
}

/// Counters and gauges for /metrics, copied out under the engine's lock.
public struct EngineMetrics: Sendable {
    public var requestsRunning = 0
    public var requestsWaiting = 0
    public var requestsFinished = 0
    public var promptTokens = 0
    public var cachedPromptTokens = 0
    public var generatedTokens = 0
    public var kvBlocksUsed = 0
    public var kvBlocksTotal = 0
    /// Blocks whose pages may be resident (in use, idle cached, or free and not yet given back).
    public var kvBlocksResident = 0
    public var prefixCacheQueries = 0
    public var prefixCacheHits = 0
    public var preemptions = 0
    public var steps = 0
    /// Relay groups in the last step.
    public var relayGroups = 0
    /// Shared-prefix positions the relay passes read (once per group and step)…
    public var relayPrefixTokensRead = 0
    /// …and what the members would have read on their own.
    public var relayPrefixTokensPerSequence = 0
    public var speculation = SpeculationMetrics()
    /// Positions evicted per (layer, KV head) row, by policy (counter)…
    public var kvEvictedTokens: [EvictionPolicy: Int] = [:]
    /// …and the positions running sequences keep now, by policy (none included).
    public var kvKeptTokens: [EvictionPolicy: Int] = [:]
    public var timeToFirstToken = Histogram(bounds: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
    public var interTokenLatency = Histogram(bounds: [0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28])
    public var requestLatency = Histogram(bounds: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120])
    public var batchSize = Histogram(bounds: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
}

public struct Histogram: Sendable {
    public let bounds: [Double]
    public private(set) var counts: [Int]
    public private(set) var sum: Double = 0
    public private(set) var count = 0

    public init(bounds: [Double]) {
        self.bounds = bounds
        counts = [Int](repeating: 0, count: bounds.count)
    }

    public mutating func observe(_ v: Double) {
        for (i, b) in bounds.enumerated() where v <= b { counts[i] += 1 }
        sum += v
        count += 1
    }
}
