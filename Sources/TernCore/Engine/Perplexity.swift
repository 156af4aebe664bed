// Perplexity as llama.cpp's llama-perplexity computes it: the text is tokenized once; non-overlapping windows
// of `context` tokens are evaluated from an empty cache (the first token replaced by BOS when the tokenizer
// adds one); in each window only the second half is scored (each position predicts the next token).
// With an eviction policy the window goes through in chunks of `evictionChunk` tokens over paged f32 KV (the
// precision of the contiguous cache), the policy evicting after each chunk, so later tokens see only what it kept.

import Foundation

public struct PerplexityResult: Sendable {
    public var perplexity: Double
    /// Running estimate after each window.
    public var perWindow: [Double]
    public var tokensScored: Int
    public var seconds: Double
}

public enum PerplexityError: Error, CustomStringConvertible {
    case tooShort(tokens: Int, context: Int)
    case badContext(Int)
    case cannotEvict(String)
    public var description: String {
        switch self {
        case .tooShort(let t, let c): return "the text has \(t) tokens; at least one window of \(c) is needed"
        case .badContext(let c): return "context \(c) must be at least 4"
        case .cannotEvict(let arch): return "\(arch) cannot evict KV positions (a fixed-size state or sliding-window layers)"
        }
    }
}

public enum Perplexity {
    /// Tokens per forward pass when evicting.
    public static let evictionChunk = 32

    public static func evaluate(loaded: LoadedModel, text: String, context: Int, maxWindows: Int?,
                                threads: Int, eviction: EvictionSettings? = nil,
                                progress: (Int, Double) -> Void = { _, _ in }) throws -> PerplexityResult {
        guard context >= 4 else { throw PerplexityError.badContext(context) }
        let tokenizer = loaded.tokenizer
        let model = loaded.model
        let addBOS = tokenizer.spec.addBOS && tokenizer.spec.bosID != nil
        var tokens: [Int32] = []
        if addBOS { tokens.append(tokenizer.spec.bosID!) }
        tokens += tokenizer.encode(text, parseSpecial: false)
        var windows = tokens.count / context
        guard windows > 0 else { throw PerplexityError.tooShort(tokens: tokens.count, context: context) }
        if let m = maxWindows, m > 0 { windows = min(windows, m) }

        let evicting = eviction.map { $0.isActive && $0.budget < context } ?? false
        let batch = min(context, evicting ? evictionChunk : 256)
        let workspace = model.makeWorkspace(maxTokens: batch, maxContext: context, pool: WorkerPool(threads: threads))
        var makeMemory: () -> SequenceMemory = { model.makeMemory(capacity: context) }
        if let eviction, evicting {
            guard let llama = loaded.llama, Engine.canEvict(loaded) else { throw PerplexityError.cannotEvict(model.architecture) }
            let layout = llama.cacheLayout
            let rows = min(context, eviction.budget + batch) + 2 * 16
            let pool = try KVBlockPool(layers: layout.layersPerBlock, rowWidth: llama.kvDim, blockSize: 16, storage: .f32,
                                       bytes: (rows / 16 + 1) * 16 * layout.layersPerBlock * 2 * KVStorage.f32.rowBytes(llama.kvDim),
                                       kvHeads: llama.config.kvHeadCount)
            makeMemory = {
                let memory = PagedKVMemory(pool: pool, capacity: context, layout: layout)
                memory.enableEviction(eviction, kvHeads: llama.config.kvHeadCount, headDim: llama.config.headDim)
                return memory
            }
        }
        var memory = makeMemory()
        let vocab = model.vocabularySize
        let first = context / 2
        var nll = 0.0
        var count = 0
        var running: [Double] = []
        let t0 = Date()
        for w in 0..<windows {
            var window = Array(tokens[(w * context)..<((w + 1) * context)])
            if addBOS { window[0] = tokenizer.spec.bosID! }
            if memory.count > 0 && !memory.rollback(to: 0) {
                memory = makeMemory()
            }
            var pos = 0
            while pos < context {
                let end = min(pos + batch, context)
                // Rows predicting tokens first+1 … context-1, i.e. batch positions in [first, context-1).
                let lo = max(pos, first), hi = min(end, context - 1)
                let rows = lo < hi ? (lo - pos)..<(hi - pos) : 0..<0
                let paged = memory as? PagedKVMemory
                let sink = paged?.scoreSink(forPass: end - pos)
                let logits = try model.forward([ForwardItem(tokens: Array(window[pos..<end]), memory: memory, logitRows: rows,
                                                            scoreSink: sink)], workspace: workspace)
                paged?.applyEviction()
                for (k, r) in rows.enumerated() {
                    let row = logits + k * vocab
                    let target = Int(window[pos + r + 1])
                    let (maxL, logSum) = TokenLogprobs.logSumExpParts(row, vocab: vocab)
                    nll += logSum + Double(maxL) - Double(row[target])
                    count += 1
                }
                pos = end
            }
            let ppl = exp(nll / Double(count))
            running.append(ppl)
            progress(w + 1, ppl)
        }
        return PerplexityResult(perplexity: exp(nll / Double(count)), perWindow: running, tokensScored: count,
                                seconds: Date().timeIntervalSince(t0))
    }
}
