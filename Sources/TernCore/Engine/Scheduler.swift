// Decides what one engine step computes, by counting tokens (vLLM v1's scheduler): every sequence has tokens
// known and tokens computed, and the step hands each one the number it may compute under the token budget —
// decoding sequences first (one token, or k+1 verification rows later), then chunks of the prefills under way,
// then preempted sequences coming back, then new requests. When KV blocks run out the youngest sequence is
// preempted (its blocks freed; recomputed later). The output is a value the model runner consumes.
//
// Tokens are not all equal: a token's attention grows with its position, so a prefill chunk deep in a long prompt
// costs several times one near the start. Each step therefore also has a cost budget — tokens weighted by
// 1 + position / attentionEquivalentPosition, as many units as the step has tokens — so one long uncached prompt
// goes in chunks that take about as long as a step near the start, instead of ever longer steps that stall the
// running streams; and while requests wait, one prefill takes at most half of what is left, so short new
// requests start in the same step. While sequences are generating, the engine may lower the step's cost budget
// further (`decodingCostLimit`, from a target step time and the measured seconds per cost unit), so a long prompt
// computes in steps short enough for the streams' inter-token latency.
//
// Engine-thread only. Every pass over the running set is linear: the running set is kept in admission order, so
// the youngest is at its end, and finished sequences are compacted out once per step.

import DequeModule
import Foundation

/// Tokens of one sequence computed in a step: `tokens[start..<start+count]` followed by `draft` (speculated
/// tokens to verify), then sampled from if `sample` (every draft row too).
struct ScheduledChunk {
    let sequence: SequenceState
    let start: Int
    let count: Int
    let sample: Bool
    var draft: [Int32] = []
}

/// What a step computes, and what the scheduler decided on the way.
struct SchedulerOutput {
    var chunks: [ScheduledChunk] = []
    /// Requests that started this step (their first sequence was admitted).
    var admitted: [RequestState] = []
    /// Sequences that cannot grow any more (context full, or larger than the whole KV store).
    var endedForLength: [SequenceState] = []
    /// A waiting request whose prompt cannot fit even into an empty KV store.
    var rejected: [RequestState] = []
    var preemptions = 0
    /// Estimated cost of the step's chunks (Scheduler.cost).
    var cost = 0.0

    /// Adds `n` tokens of `s` from what it has computed, and a draft after them, with their estimated cost.
    mutating func add(_ s: SequenceState, count n: Int, sample: Bool, draft: [Int32] = []) {
        chunks.append(ScheduledChunk(sequence: s, start: s.computed, count: n, sample: sample, draft: draft))
        cost += Scheduler.cost(start: s.computed, count: n + draft.count)
    }

    /// Tokens the step carries, drafts included.
    var tokenCount: Int { chunks.reduce(0) { $0 + $1.count + $1.draft.count } }
}

final class Scheduler {
    struct Limits {
        var maxBatchTokens: Int
        var maxRunning: Int
        var prefixCaching: Bool
    }

    /// The position at which a token's attention costs about as much as the rest of its forward pass (measured
    /// roughly on SmolLM2-sized models; only the shape of the estimate matters).
    static let attentionEquivalentPosition = 2048.0
    /// Smallest prefill chunk a cost budget cuts a prompt into…
    static let minimumChunk = 16
    /// …and under the decoding step target, where deep in a long prompt even 16 tokens can take longer than it.
    static let minimumChunkWhileDecoding = 8

    /// Estimated cost of computing positions [start, start + n) in units of one position-0 token.
    static func cost(start: Int, count n: Int) -> Double {
        Double(n) * (1 + (Double(start) + Double(n - 1) / 2) / attentionEquivalentPosition)
    }

    /// Most tokens from position `start` whose cost fits in `budget`.
    static func tokens(from start: Int, within budget: Double) -> Int {
        let c = attentionEquivalentPosition
        let a = 1 / (2 * c), b = 1 + (Double(start) - 0.5) / c
        let n = (-b + (b * b + 4 * a * max(0, budget)).squareRoot()) / (2 * a)
        return max(0, Int(n.rounded(.down)))
    }

    let limits: Limits
    let pool: KVBlockPool?
    private let makeMemory: (EngineRequest) -> SequenceMemory
    private let tokenizer: Tokenizer
    private(set) var waiting = Deque<RequestState>()
    /// In admission order (the youngest last).
    private(set) var running: [SequenceState] = []
    private(set) var preempted = Deque<SequenceState>()

    init(limits: Limits, pool: KVBlockPool?, tokenizer: Tokenizer, makeMemory: @escaping (EngineRequest) -> SequenceMemory) {
        self.limits = limits
        self.pool = pool
        self.tokenizer = tokenizer
        self.makeMemory = makeMemory
    }

    var isIdle: Bool { waiting.isEmpty && running.isEmpty && preempted.isEmpty }

    /// No prompt token can be scheduled until a sequence ends: every seat is taken, every running sequence is
    /// past its prompt, and none waits preempted (it would recompute its prompt).
    var promptWorkBlocked: Bool {
        running.count >= limits.maxRunning && preempted.isEmpty && running.allSatisfy { $0.finished || $0.promptDone }
    }

    /// The cost budget of a step that carries decoding sequences (nil: the token budget's); set by the engine
    /// before each step from its latency target.
    var decodingCostLimit: Double?

    func enqueue(_ r: RequestState) { waiting.append(r) }

    /// Adds a sequence created outside scheduling (a forked choice) as the youngest.
    func addRunning(_ s: SequenceState) {
        running.append(s)
    }

    func schedule() -> SchedulerOutput {
        var out = SchedulerOutput()
        var budget = limits.maxBatchTokens

        // 1. Decoding sequences compute what they have pending; make room, preempting the youngest when full.
        var i = 0
        while i < running.count && budget > 0 {
            let s = running[i]
            i += 1
            guard !s.finished, s.promptDone else { continue }
            let n = s.pending
            guard n > 0, n <= budget else { continue }
            guard ensureRoom(for: s, tokens: n, out: &out) else { continue }
            // A draft rides along when budget and free blocks allow; it never preempts anyone.
            var draft = s.speculation.draft
            if !draft.isEmpty && (n != 1 || n + draft.count > budget || !s.reserve(n + draft.count)) {
                draft = []
                s.speculation.draft = []
            }
            out.add(s, count: n, sample: true, draft: draft)
            budget -= n + draft.count
        }
        // The cost budget: as many cost units as the step has tokens, so a step deep in a long prompt computes
        // fewer tokens and takes about as long as one near the start; lower while streams wait on this step.
        var costBudget = Double(limits.maxBatchTokens)
        let decoding = !out.chunks.isEmpty
        if decoding, let limit = decodingCostLimit { costBudget = min(costBudget, max(limit, out.cost + 1)) }
        // 2. Chunks of prefills under way; while requests wait, one prefill takes at most half of what is left.
        for s in running where !s.finished && !s.promptDone && budget > 0 {
            var room = costBudget - out.cost
            if !waiting.isEmpty { room /= 2 }
            let fit = max(decoding && decodingCostLimit != nil ? Self.minimumChunkWhileDecoding : Self.minimumChunk,
                          Self.tokens(from: s.computed, within: room))
            let n = min(budget, s.pending, fit)
            guard n > 0, out.cost < costBudget, s.reserve(n) else { continue }
            out.add(s, count: n, sample: n == s.pending)
            budget -= n
        }
        // 3. Preempted sequences come back before new requests start.
        while budget > 0, running.count < limits.maxRunning, let s = preempted.first {
            guard admit(s, budget: &budget, costBudget: costBudget, out: &out) else { break }
            preempted.removeFirst()
        }
        // 4. New requests, in order — except one whose next uncached prompt block another sequence is computing
        // right now: it waits for those blocks to be published and then attaches them instead of computing them
        // again (the first of many requests with the same long system prompt computes it once for all).
        let inFlight = waiting.isEmpty ? [] : inFlightPromptBlocks()
        var deferred: [RequestState] = []
        while budget > 0, running.count < limits.maxRunning, let r = waiting.first {
            if limits.prefixCaching && !r.request.promptLogprobs && !inFlight.isEmpty && waitsForInFlight(r, inFlight) {
                waiting.removeFirst()
                deferred.append(r)
                continue
            }
            let s = SequenceState(request: r, choice: 0, memory: makeMemory(r.request), tokenizer: tokenizer)
            if limits.prefixCaching && !r.request.promptLogprobs, let paged = s.paged {
                // Keep at least one prompt token to compute: its logits start the generation.
                let cached = paged.attachCachedPrefix(r.request.promptTokens, limit: r.request.promptTokens.count - 1)
                s.computed = cached
                r.cachedTokens = cached
            }
            guard admit(s, budget: &budget, costBudget: costBudget, out: &out) else {
                s.release()
                break
            }
            waiting.removeFirst()
            r.sequences = [s]
            out.admitted.append(r)
        }
        for r in deferred.reversed() { waiting.prepend(r) }
        if out.chunks.isEmpty && running.allSatisfy({ $0.finished }) {
            if let s = preempted.first {
                // Cannot come back even into an empty pool (it grew past the KV store): it ends here.
                preempted.removeFirst()
                out.endedForLength.append(s)
            } else if let r = waiting.first, out.admitted.isEmpty {
                // Nothing fits even in an empty pool: the prompt is larger than the KV store.
                waiting.removeFirst()
                out.rejected.append(r)
            }
        }
        return out
    }

    /// Hashes of the prompt blocks that prefilling sequences have still to compute (they are published as
    /// soon as they are full and computed).
    private func inFlightPromptBlocks() -> Set<UInt64> {
        guard let pool, limits.prefixCaching else { return [] }
        var set = Set<UInt64>()
        for s in running where !s.finished && !s.promptDone && s.paged != nil {
            let hashes = s.request.promptBlockHashes(blockSize: pool.blockSize)
            let from = s.computed / pool.blockSize
            if from < hashes.count { set.formUnion(hashes[from...]) }
        }
        return set
    }

    /// Whether the first prompt block of `r` that is not cached yet is being computed by another sequence.
    private func waitsForInFlight(_ r: RequestState, _ inFlight: Set<UInt64>) -> Bool {
        guard let pool else { return false }
        let hashes = r.request.promptTokens.count > pool.blockSize ? r.promptBlockHashes(blockSize: pool.blockSize) : []
        // Only blocks before the last prompt token can be taken from the cache.
        let usable = (r.request.promptTokens.count - 1) / pool.blockSize
        for i in 0..<min(usable, hashes.count) where !pool.isCached(hash: hashes[i]) {
            return inFlight.contains(hashes[i])
        }
        return false
    }

    /// Puts a new or preempted sequence into the step with its first prefill chunk, if blocks allow.
    private func admit(_ s: SequenceState, budget: inout Int, costBudget: Double, out: inout SchedulerOutput) -> Bool {
        // Something always runs; past that, the cost budget decides.
        guard out.chunks.isEmpty || out.cost < costBudget else { return false }
        // Admit only when the whole remaining prompt fits in free blocks, so admission cannot thrash.
        if let paged = s.paged, let pool {
            // An evicting sequence never holds more than its budget and one step's tokens.
            var peak = s.pending + 1
            if let e = paged.eviction { peak = min(peak, max(1, e.settings.budget + limits.maxBatchTokens - paged.storedRows(group: 0))) }
            guard paged.blocksNeeded(for: peak) <= pool.availableBlocks else { return false }
        }
        let fit = out.chunks.isEmpty ? budget : max(Self.minimumChunk, Self.tokens(from: s.computed, within: costBudget - out.cost))
        let n = min(budget, s.pending, fit)
        guard s.reserve(n) else { return false }
        addRunning(s)
        out.add(s, count: n, sample: n == s.pending)
        budget -= n
        return true
    }

    /// Reserves memory for `tokens` more tokens of `s`, preempting the youngest sequences while the pool is
    /// exhausted. Returns false if `s` cannot run this step (it ended, or was itself preempted).
    private func ensureRoom(for s: SequenceState, tokens: Int, out: inout SchedulerOutput) -> Bool {
        if s.memory.count + tokens > s.memory.capacity {
            s.finished = true
            out.endedForLength.append(s)
            return false
        }
        while !s.reserve(tokens) {
            while let last = running.last, last.finished { running.removeLast() }
            guard let victim = running.last else { return false }
            if victim === s && running.lazy.filter({ !$0.finished }).count == 1 {
                // Alone and still out of blocks: the KV store is smaller than this sequence; recomputing it
                // would only run out again. It ends here, as if its context were full.
                s.finished = true
                out.endedForLength.append(s)
                return false
            }
            preempt(victim)
            out.preemptions += 1
            if victim === s { return false }
        }
        return true
    }

    /// Frees the youngest running sequence's memory; it recomputes prompt and output when it comes back.
    private func preempt(_ s: SequenceState) {
        precondition(running.last === s)
        running.removeLast()
        s.release()
        s.promptDone = false
        preempted.append(s)
    }

    /// Records that the step's chunks were computed: the memories hold them now.
    func didCompute(_ output: SchedulerOutput) {
        for c in output.chunks {
            let s = c.sequence
            s.computed = c.start + c.count
            s.paged?.appendTokens(s.tokens[c.start..<(c.start + c.count)])
        }
    }

    /// Drops finished sequences from the running set (once per step).
    func compact() {
        running.removeAll { $0.finished }
    }

    /// Removes every trace of `r` (cancel, failure, shutdown); the caller releases its sequences.
    func remove(_ r: RequestState) {
        if let i = waiting.firstIndex(where: { $0 === r }) { waiting.remove(at: i) }
        running.removeAll { $0.request === r }
        preempted.removeAll { $0.request === r }
    }
}
