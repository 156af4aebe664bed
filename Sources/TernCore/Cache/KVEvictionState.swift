// One sequence's eviction bookkeeping (EvictionPolicy.swift has the policies): for every layer and KV head, the
// position each stored row holds and that row's score, and the sink the attention kernels add weights to. Heads
// keep different positions, but every (layer, head) keeps the same number, so the rows of a block stay aligned
// across heads: row r of head h holds positions[l·H + h][r]. The rows the kernels read are numbered in storage
// order (PagedKVMemory shifts query positions by the positions dropped, so every kept row lies before every new
// query and causality among the new rows is kept). Owned by its PagedKVMemory; engine thread only.

import Foundation

public final class KVEvictionState {
    public let settings: EvictionSettings
    public let layers: Int
    public let kvHeads: Int
    public let headDim: Int
    /// Per (layer · kvHeads + head): the position of each stored row.
    private(set) var positions: [[Int32]]
    /// Per (layer · kvHeads + head): each row's score (alisa: decayed attention; dms: attention while recent).
    private(set) var scores: [[Float]]
    /// Where the kernels put the last pass's attention weights, by row; nil for policies without scores.
    private var sink: AttentionScoreSink?
    /// Rows of the sink the last pass may have written (0: the last pass gathered no weights).
    private var sinkRows = 0
    /// Query rows since the scores were last folded (ALISA's decay catches up at the next fold).
    private var rowsSinceFold = 0
    /// One-row passes since the last one that gathered weights.
    private var unscoredDecodes = 0
    /// What the weights of the pass in flight count for.
    private var weightScale: Float = 1

    /// Positions dropped per (layer, head) since the memory was last emptied (metrics).
    public internal(set) var evicted = 0

    public init(settings: EvictionSettings, layers: Int, kvHeads: Int, headDim: Int) {
        precondition(settings.isActive, "eviction state for policy none")
        self.settings = settings
        self.layers = layers
        self.kvHeads = kvHeads
        self.headDim = headDim
        positions = Array(repeating: [], count: layers * kvHeads)
        scores = Array(repeating: [], count: layers * kvHeads)
    }

    /// A copy for a forked sequence: the same kept positions and scores, and a copy of the sink (a fork made
    /// after a pass and before its eviction folds in the same weights as its parent).
    func copy() -> KVEvictionState {
        let c = KVEvictionState(settings: settings, layers: layers, kvHeads: kvHeads, headDim: headDim)
        c.positions = positions
        c.scores = scores
        c.evicted = evicted
        c.sink = sink?.copy()
        c.sinkRows = sinkRows
        c.rowsSinceFold = rowsSinceFold
        c.unscoredDecodes = unscoredDecodes
        c.weightScale = weightScale
        return c
    }

    /// The memory was emptied.
    func reset() {
        for i in positions.indices {
            positions[i].removeAll(keepingCapacity: true)
            scores[i].removeAll(keepingCapacity: true)
        }
        sink?.reset()
        sinkRows = 0
        rowsSinceFold = 0
        unscoredDecodes = 0
        evicted = 0
    }

    /// Rows whose positions are recorded (the rows stored before the last pass).
    var recordedRows: Int { positions.first?.count ?? 0 }

    /// Kept positions of (`layer`, `kvHead`), in row order (tests and metrics).
    public func keptPositions(layer: Int, kvHead: Int) -> [Int32] { positions[layer * kvHeads + kvHead] }

    /// The sink for a forward pass of `newRows` query rows after which the memory holds `rows` rows (grown when
    /// needed); nil when the policy reads no scores, or for a decode pass that is not sampled.
    public func sinkForPass(rows: Int, newRows: Int) -> AttentionScoreSink? {
        guard settings.policy.needsScores else { return nil }
        if newRows == 1 {
            unscoredDecodes += 1
            guard unscoredDecodes >= settings.decodeScoreInterval else { return nil }
            weightScale = Float(unscoredDecodes)
        } else {
            weightScale = 1
        }
        unscoredDecodes = 0
        if sink == nil || sink!.capacity < rows {
            // Room for a few more passes before the next growth.
            sink = AttentionScoreSink(layers: layers, kvHeads: kvHeads, capacity: max(rows, settings.budget) + 64)
        }
        sinkRows = max(sinkRows, rows)
        return sink
    }

    /// Records the rows the last pass added (rows `recordedRows..<stored`, which hold positions `row + dropped`)
    /// and folds the pass's attention weights into the scores. `count` is the positions seen so far.
    func observe(stored: Int, dropped: Int, count: Int) {
        let before = recordedRows
        precondition(stored >= before, "rows disappeared without eviction")
        for i in positions.indices {
            for r in before..<stored {
                positions[i].append(Int32(r + dropped))
                scores[i].append(0)
            }
        }
        let newRows = stored - before
        rowsSinceFold += newRows
        guard settings.policy.needsScores, sinkRows > 0, let sink else { return }
        // DMS scores a position while it is in the recent window of the pass's first query: for a decode step
        // that is the last `recentWindow` positions; a prefill chunk scores all its own positions.
        let recentEdge = Int32(count - newRows - settings.recentWindow + 1)
        let decay = settings.policy == .alisa ? Float(pow(1 - 1 / Double(settings.decayHorizon), Double(rowsSinceFold))) : 1
        let scale = weightScale
        rowsSinceFold = 0
        for l in 0..<layers {
            for h in 0..<kvHeads {
                let i = l * kvHeads + h
                let w = sink.weights(layer: l, kvHead: h)
                positions[i].withUnsafeBufferPointer { pos in
                    scores[i].withUnsafeMutableBufferPointer { sc in
                        if settings.policy == .alisa {
                            for r in 0..<stored { sc[r] = sc[r] * decay + scale * w[r] }
                        } else {
                            // DMS: scored while recent, frozen once the position left the delay window.
                            for r in 0..<stored where pos[r] >= recentEdge { sc[r] += scale * w[r] }
                        }
                    }
                }
                w.update(repeating: 0, count: min(sinkRows, sink.capacity))
            }
        }
        sinkRows = 0
    }

    /// The `k` rows of (layer · kvHeads + head) `i` to drop, ascending. `count` is the positions seen so far.
    func victims(_ i: Int, k: Int, count: Int) -> [Int] {
        let pos = positions[i]
        var candidates: [Int] = []
        candidates.reserveCapacity(pos.count)
        switch settings.policy {
        case .none:
            return []
        case .window:
            let sinks = Int32(settings.sinkTokens)
            for r in pos.indices where pos[r] >= sinks { candidates.append(r) }
            if k == 1 { return candidates.min { pos[$0] < pos[$1] }.map { [$0] } ?? [] }
            candidates.sort { pos[$0] < pos[$1] }
        case .alisa, .dms:
            let edge = Int32(count - settings.recentWindow)
            for r in pos.indices where pos[r] < edge { candidates.append(r) }
            let sc = scores[i]
            let less = { (a: Int, b: Int) -> Bool in sc[a] < sc[b] || (sc[a] == sc[b] && pos[a] < pos[b]) }
            if k == 1 { return candidates.min(by: less).map { [$0] } ?? [] }
            candidates.sort(by: less)
        }
        return Array(candidates.prefix(k)).sorted()
    }

    /// Row `from` moved into row `to` of (layer · kvHeads + head) `i`.
    func move(_ i: Int, from: Int, to: Int) {
        positions[i][to] = positions[i][from]
        scores[i][to] = scores[i][from]
    }

    /// Every (layer, head) keeps its first `rows` rows.
    func truncate(rows: Int) {
        for i in positions.indices where positions[i].count > rows {
            positions[i].removeLast(positions[i].count - rows)
            scores[i].removeLast(scores[i].count - rows)
        }
    }
}
