// The draft model of speculative decoding: a smaller checkpoint with the served model's vocabulary, run on the
// engine thread just before the target's step, with a KV pool and workspace of its own (it shares the engine's
// worker threads). Each speculating sequence keeps a draft memory that follows its tokens: before drafting, the
// memory is cut back to what it shares with the sequence (rejected proposals go) and catches up on the rest, then
// k greedy steps — batched over all drafting sequences — give each sequence k proposals. The proposals are the
// draft's argmax, so verification stays the exact draw-and-compare of SpeculativeDecoder.
// Engine-thread only.

import Foundation

final class DraftModelRunner {
    let loaded: LoadedModel
    private let pool: KVBlockPool
    private let workspace: ModelWorkspace
    private let layout: KVCacheLayout
    private let contextLength: Int
    /// Measured seconds of a draft forward pass by token count (one token per drafting sequence).
    private(set) var cost = StepCostModel()
    /// Draft weight bytes over the target's: the price of a draft pass before any was measured.
    let relativeWeight: Double

    /// Checks that `draft` can draft for `target`: a transformer (its KV rolls back) whose tokens are the target's.
    init(draft: LoadedModel, target: LoadedModel, contextLength: Int, kvBytes: Int, maxBatchTokens: Int, workers: WorkerPool) throws {
        let path = draft.checkpoint.path
        guard let llama = draft.llama else {
            throw CheckpointError(file: path, "a draft model must be a transformer (rejected tokens are rolled back from its KV cache); this one is '\(draft.model.architecture)'")
        }
        let n = target.model.vocabularySize
        guard draft.model.vocabularySize == n, draft.tokenizer.vocabularySize == target.tokenizer.vocabularySize else {
            throw CheckpointError(file: path, "the draft model's vocabulary has \(draft.model.vocabularySize) tokens, the served model's \(n): they must be the same")
        }
        // Same ids must be the same tokens: compare every token's bytes.
        for id in 0..<Int32(target.tokenizer.vocabularySize) where draft.tokenizer.tokenBytes(id) != target.tokenizer.tokenBytes(id) {
            throw CheckpointError(file: path, "the draft model's token \(id) is '\(draft.tokenizer.tokenText(id))', the served model's '\(target.tokenizer.tokenText(id))': the vocabularies differ")
        }
        loaded = draft
        layout = llama.cacheLayout
        self.contextLength = contextLength
        pool = try KVBlockPool(layers: layout.layersPerBlock, rowWidth: llama.kvDim, blockSize: 16, storage: .f16, bytes: kvBytes,
                               kvHeads: llama.config.kvHeadCount)
        workspace = draft.model.makeWorkspace(maxTokens: maxBatchTokens, maxContext: contextLength, pool: workers)
        relativeWeight = Double(draft.model.weightBytesPerToken) / Double(max(1, target.model.weightBytesPerToken))
    }

    /// Estimated seconds of `steps` draft passes for `sequences` drafting sequences.
    func estimate(steps: Int, sequences: Int, target: StepCostModel) -> Double {
        guard steps > 0 else { return 0 }
        let one = cost.isCalibrated ? cost.estimate(tokens: sequences) : target.estimate(tokens: sequences) * relativeWeight
        return Double(steps) * one
    }

    /// Sets `speculation.draft` of each sequence to `count` proposals of the draft model (fewer, or none, when its
    /// KV pool runs out).
    func propose(_ sequences: [SequenceState], count k: Int) {
        guard k > 0, !sequences.isEmpty else { return }
        var active: [SequenceState] = []
        var pending: [[Int32]] = []
        for s in sequences {
            s.speculation.draft.removeAll(keepingCapacity: true)
            let memory = s.speculation.draftMemory ?? PagedKVMemory(pool: pool, capacity: contextLength, layout: layout)
            s.speculation.draftMemory = memory
            // Keep what the draft computed of the sequence's tokens; the last token is always computed again, its
            // logits give the first proposal.
            let known = s.speculation.draftTokens
            let tokens = s.tokens
            var common = 0
            let limit = min(known.count, memory.count, tokens.count - 1)
            while common < limit && known[common] == tokens[common] { common += 1 }
            if !memory.rollback(to: common) {
                memory.releaseAll()
                common = 0
            }
            s.speculation.draftTokens = Array(tokens[0..<common])
            active.append(s)
            pending.append(Array(tokens[common...]))
        }
        // Catch up, in passes the workspace holds; a sequence's last pending token yields its first proposal.
        let budget = workspace.maxTokens
        while pending.contains(where: { !$0.isEmpty }) {
            var items: [ForwardItem] = []
            var owners: [Int] = []
            var room = budget
            for i in active.indices where !pending[i].isEmpty && room > 0 {
                let n = min(room, pending[i].count)
                let memory = active[i].speculation.draftMemory!
                guard (try? memory.reserve(n)) != nil else {
                    // The draft's KV pool is full: this sequence does not draft this step.
                    memory.releaseAll()
                    active[i].speculation.draftTokens = []
                    pending[i] = []
                    continue
                }
                let chunk = Array(pending[i].prefix(n))
                let last = n == pending[i].count
                items.append(ForwardItem(tokens: chunk, memory: memory, logitRows: last ? (n - 1)..<n : 0..<0))
                owners.append(i)
                room -= n
            }
            guard !items.isEmpty else { break }
            guard let logits = run(items) else { return abandon(active) }
            var row = 0
            for (item, i) in zip(items, owners) {
                active[i].speculation.draftTokens += item.tokens
                pending[i].removeFirst(item.tokens.count)
                if !item.logitRows.isEmpty {
                    active[i].speculation.draft = [Sampler.argmax(logits + row * vocab, vocab)]
                    row += 1
                }
            }
        }
        // k − 1 more greedy steps, one token per sequence each.
        for _ in 1..<k {
            var items: [ForwardItem] = []
            var owners: [SequenceState] = []
            for s in active where !s.speculation.draft.isEmpty && s.speculation.draft.count < k {
                let memory = s.speculation.draftMemory!
                guard (try? memory.reserve(1)) != nil else { continue }
                items.append(ForwardItem(tokens: [s.speculation.draft.last!], memory: memory, logitRows: 0..<1))
                owners.append(s)
            }
            guard !items.isEmpty else { break }
            let t0 = DispatchTime.now().uptimeNanoseconds
            guard let logits = run(items) else { return abandon(active) }
            cost.observe(tokens: items.count, seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            for (r, s) in owners.enumerated() {
                s.speculation.draftTokens.append(s.speculation.draft.last!)
                s.speculation.draft.append(Sampler.argmax(logits + r * vocab, vocab))
            }
        }
    }

    private var vocab: Int { loaded.model.vocabularySize }

    private func run(_ items: [ForwardItem]) -> UnsafeMutablePointer<Float>? {
        try? loaded.model.forward(items, workspace: workspace)
    }

    /// A failed draft pass: no proposals, and the draft memories start over.
    private func abandon(_ sequences: [SequenceState]) {
        for s in sequences {
            s.speculation.draft = []
            s.speculation.draftMemory?.releaseAll()
            s.speculation.draftTokens = []
        }
    }
}
