// What the engine needs from any model architecture (Llama-family transformers, Mamba state-space models):
// per-sequence memory, a reusable workspace, and one forward pass over a batch of sequences. A model is a pure
// function of (weights, tokens, memory) → logits; scheduling, sampling and HTTP live elsewhere.

/// The memory one sequence carries between forward passes: a KV cache for transformers, conv and SSM
/// states for Mamba. Owned by the engine thread.
public protocol SequenceMemory: AnyObject {
    /// Tokens this memory has absorbed (the next token's position).
    var count: Int { get }
    /// Tokens it can absorb at most.
    var capacity: Int { get }
    /// Forgets everything from position `count` on, if the memory can (KV caches can; recurrent states only
    /// back to 0). Returns false when it cannot.
    func rollback(to count: Int) -> Bool
}

/// One sequence's share of a batched forward pass.
public struct ForwardItem {
    public var tokens: [Int32]
    public var memory: SequenceMemory
    /// Which of this item's token rows want logits (indices into `tokens`).
    public var logitRows: Range<Int>
    /// Where the attention kernels add the attention weights of this item's rows (transformers only).
    public var scoreSink: AttentionScoreSink?

    public init(tokens: [Int32], memory: SequenceMemory, logitRows: Range<Int>, scoreSink: AttentionScoreSink? = nil) {
        self.tokens = tokens
        self.memory = memory
        self.logitRows = logitRows
        self.scoreSink = scoreSink
    }

    /// Logits for the last token only (decoding, the end of a prefill).
    public init(tokens: [Int32], memory: SequenceMemory, lastLogits: Bool) {
        self.init(tokens: tokens, memory: memory, logitRows: lastLogits ? (tokens.count - 1)..<tokens.count : 0..<0)
    }
}

/// Scratch memory of one forward pass; owned by one thread at a time.
public protocol ModelWorkspace: AnyObject {
    /// Most tokens (summed over the batch) one forward pass may carry.
    var maxTokens: Int { get }
    var pool: WorkerPool { get }
    /// Whether decoding sequences that share prefix blocks read that prefix once (RelayAttention).
    var relayEnabled: Bool { get set }
    /// What the attention of the last forward pass did.
    var attentionStats: AttentionStats { get }
    /// Gives the pages of the per-pass buffers back to the system (a prompt chunk made them resident; decode
    /// steps need only their first rows). The next pass refaults what it writes.
    func releaseIdlePages()
}

public protocol LanguageModel: AnyObject, Sendable {
    var architecture: String { get }
    var vocabularySize: Int { get }
    /// The longest context the checkpoint was trained for.
    var trainedContextLength: Int { get }
    /// Weight bytes read to decode one token (the memory-bandwidth cost).
    var weightBytesPerToken: Int { get }
    /// How the layers keep their past: attention groups (full or sliding window) get paged KV blocks, a
    /// recurrent group a fixed-size state per sequence.
    var cacheGroups: [CacheGroupSpec] { get }

    func makeWorkspace(maxTokens: Int, maxContext: Int, pool: WorkerPool) -> ModelWorkspace
    func makeMemory(capacity: Int) -> SequenceMemory
    /// Runs every item's tokens through the model, appending them to that item's memory, and returns the
    /// logits of the requested rows, item by item in order (vocabularySize floats per row). The pointer is
    /// valid until the workspace's next forward pass.
    func forward(_ batch: [ForwardItem], workspace: ModelWorkspace) throws -> UnsafeMutablePointer<Float>
}

public enum ModelError: Error, CustomStringConvertible {
    case tokenOutOfRange(Int32, vocabulary: Int)
    case batchTooLarge(Int, max: Int)
    case memoryFull(capacity: Int)
    case wrongWorkspace
    case wrongMemory

    public var description: String {
        switch self {
        case .tokenOutOfRange(let t, let v): return "token id \(t) is outside the vocabulary (0..<\(v))"
        case .batchTooLarge(let n, let m): return "batch of \(n) tokens exceeds the workspace (\(m))"
        case .memoryFull(let c): return "the sequence's context is full (\(c) tokens)"
        case .wrongWorkspace: return "workspace belongs to another model"
        case .wrongMemory: return "sequence memory belongs to another model"
        }
    }
}

extension LanguageModel {
    /// Single-sequence convenience: runs `tokens` after what `memory` holds and returns the logits of
    /// `logitRows` (indices into `tokens`).
    @discardableResult
    public func forward(tokens: [Int32], memory: SequenceMemory, workspace: ModelWorkspace,
                        logitRows: Range<Int>) throws -> UnsafeMutablePointer<Float> {
        try forward([ForwardItem(tokens: tokens, memory: memory, logitRows: logitRows)], workspace: workspace)
    }
}

/// Picks the model implementation for a checkpoint's architecture.
public enum ModelLoader {
    public static func load(_ checkpoint: Checkpoint) throws -> LanguageModel {
        switch checkpoint.architecture {
        case "mamba", "mamba2":
            return try loadMamba(checkpoint)
        default:
            return try LlamaModel(checkpoint: checkpoint)
        }
    }
}
