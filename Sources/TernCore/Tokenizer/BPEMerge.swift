// The BPE merge loop shared by both tokenizer models: repeatedly join the best-ranked adjacent pair of symbols,
// best first, leftmost on ties (what HF tokenizers and SentencePiece both do), using a binary heap with lazy
// invalidation so a long piece costs O(n log n) rather than O(n²).

/// One symbol of the piece being merged: a byte range of the piece's UTF-8 and the token id it spells (-1 when the
/// range is no token), linked to its live neighbours.
struct BPESymbol {
    var start: Int32
    var end: Int32
    var id: Int32
    var prev: Int32
    var next: Int32
}

/// A candidate merge: `left` and the symbol after it would become `result`.
struct BPECandidate {
    var score: Double      // higher merges first
    var left: Int32
    var right: Int32
    var rightEnd: Int32    // the right symbol's end when queued; a later change means the candidate is stale
    var result: Int32

    @inline(__always) func precedes(_ o: BPECandidate) -> Bool {
        score > o.score || (score == o.score && left < o.left)
    }
}

/// Says whether two adjacent symbols merge, how eagerly, and into what.
protocol BPEPairRanker {
    func rank(_ left: BPESymbol, _ right: BPESymbol, _ bytes: UnsafeBufferPointer<UInt8>) -> (score: Double, result: Int32)?
}

/// Scratch space reused across the pieces of one encode call, so the per-piece loop does not allocate.
struct BPEWorkspace {
    var symbols: [BPESymbol] = []
    var heap: [BPECandidate] = []

    init() {
        symbols.reserveCapacity(64)
        heap.reserveCapacity(64)
    }

    mutating func push(_ c: BPECandidate) {
        heap.append(c)
        var i = heap.count - 1
        while i > 0 {
            let p = (i - 1) >> 1
            if !heap[i].precedes(heap[p]) { break }
            heap.swapAt(i, p)
            i = p
        }
    }

    mutating func pop() -> BPECandidate? {
        guard let top = heap.first else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var i = 0
            let n = heap.count
            while true {
                let l = 2 * i + 1
                if l >= n { break }
                var best = l
                if l + 1 < n && heap[l + 1].precedes(heap[l]) { best = l + 1 }
                if !heap[best].precedes(heap[i]) { break }
                heap.swapAt(i, best)
                i = best
            }
        }
        return top
    }

    @inline(__always) mutating func consider<R: BPEPairRanker>(_ l: Int32, _ ranker: R, _ bytes: UnsafeBufferPointer<UInt8>) {
        let r = symbols[Int(l)].next
        if r < 0 { return }
        if let (score, result) = ranker.rank(symbols[Int(l)], symbols[Int(r)], bytes) {
            push(BPECandidate(score: score, left: l, right: r, rightEnd: symbols[Int(r)].end, result: result))
        }
    }

    /// Merges `symbols` (already filled, linked in order) to completion.
    mutating func merge<R: BPEPairRanker>(_ ranker: R, _ bytes: UnsafeBufferPointer<UInt8>) {
        heap.removeAll(keepingCapacity: true)
        if symbols.count < 2 { return }
        for i in 0..<(symbols.count - 1) { consider(Int32(i), ranker, bytes) }
        while let c = pop() {
            let l = Int(c.left), r = Int(c.right)
            // Stale if either side was absorbed (dead symbols get end == start) or changed since queued.
            if symbols[l].end == symbols[l].start || symbols[r].end == symbols[r].start { continue }
            if symbols[l].next != c.right || symbols[r].end != c.rightEnd { continue }
            symbols[l].end = symbols[r].end
            symbols[l].id = c.result
            let after = symbols[r].next
            symbols[l].next = after
            if after >= 0 { symbols[Int(after)].prev = c.left }
            symbols[r].end = symbols[r].start
            let p = symbols[l].prev
            if p >= 0 { consider(p, ranker, bytes) }
            consider(c.left, ranker, bytes)
        }
    }
}

/// Ranks pairs by an explicit merge list: (left id, right id) -> (rank, result id).
struct MergeTableRanker: BPEPairRanker {
    let table: [UInt64: UInt64]

    @inline(__always) static func key(_ l: Int32, _ r: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: l)) << 32 | UInt64(UInt32(bitPattern: r))
    }

    @inline(__always) func rank(_ left: BPESymbol, _ right: BPESymbol, _ bytes: UnsafeBufferPointer<UInt8>)
        -> (score: Double, result: Int32)? {
        if left.id < 0 || right.id < 0 { return nil }
        guard let v = table[Self.key(left.id, right.id)] else { return nil }
        return (-Double(v >> 32), Int32(truncatingIfNeeded: v & 0xFFFF_FFFF))
    }
}

/// SentencePiece without a merge list: a pair merges when its joined text is a vocabulary piece, the piece's
/// score saying how eagerly.
struct ScoreRanker: BPEPairRanker {
    let vocabulary: VocabularyIndex   // bytes, not String: see Tokenizer.tokenToID
    let scores: [Float]
    let mergeable: [Bool]

    @inline(__always) func rank(_ left: BPESymbol, _ right: BPESymbol, _ bytes: UnsafeBufferPointer<UInt8>)
        -> (score: Double, result: Int32)? {
        let slice = UnsafeBufferPointer(rebasing: bytes[Int(left.start)..<Int(right.end)])
        guard let id = vocabulary[slice], mergeable[Int(id)] else { return nil }
        return (Double(scores[Int(id)]), id)
    }
}
