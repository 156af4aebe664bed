// One sequence's view of the paged KV store: a block table per cache group (logical block → physical block) over
// a KVBlockPool. Shared blocks (forks, cached prefixes) are copied before the first write (copy-on-write); full
// blocks are published to the pool's prefix cache as they fill; a sliding-window group hands back the blocks that
// left its window and keeps the null block in their place. `count` is the next logical position; the rows a group
// holds are counted apart (`storedRows`). With an eviction policy (`eviction`, single-group layouts only) rows
// and positions part: each (layer, KV head) keeps its own positions in the same number of rows, evicted rows are
// filled with rows from the end and emptied blocks go back to the pool; new positions are stored at
// `position − dropped` and the attention kernels see rows numbered in storage order. Engine-thread only.

import CKernels

/// Physical blocks of one cache group for one sequence, in logical order.
public struct BlockTable: Sendable {
    /// `KVBlockPool.nullBlock` where the group no longer holds the block (it slid out of a window).
    public fileprivate(set) var blocks: [Int32] = []
    /// Leading entries that are null (released by a window).
    public fileprivate(set) var releasedPrefix = 0
    /// Positions below this are backed by blocks this sequence may write.
    fileprivate var writableUpTo = 0
    /// Positions evicted from this table: a new position p is stored at row p − dropped.
    public fileprivate(set) var dropped = 0
}

public final class PagedKVMemory: KVMemory {
    public let pool: KVBlockPool
    public let capacity: Int
    public let layout: KVCacheLayout
    public private(set) var tables: [BlockTable]
    public private(set) var count = 0
    /// Tokens stored so far (to name full blocks in the prefix cache).
    public private(set) var tokens: [Int32] = []
    /// Hash of each full block, in order (the same for every group; the pool keys it by group).
    private var hashes: [UInt64] = []
    /// Whether full blocks go to the pool's prefix cache. Off when nobody looks them up (prefix caching off):
    /// a published block outlives its sequence as an idle cached block, holding memory for no one.
    public var publishesBlocks = true
    /// Rows a window group keeps beyond its window, so that rolling back this many rows (rejected speculative
    /// tokens) never needs a row already handed back.
    public var windowSlack = 0
    /// The eviction policy's state; nil keeps every position. Only a layout with one group evicts.
    public private(set) var eviction: KVEvictionState?

    public var layerCount: Int { layout.layerCount }
    public var rowWidth: Int { pool.rowWidth }
    public var storage: KVStorage { pool.storage }
    public var blockSize: Int { pool.blockSize }
    /// The first group's block table (the only one for a model whose layers all attend fully).
    public var blocks: [Int32] { tables[0].blocks }

    /// `layout` defaults to one full-attention group of the pool's layers.
    public init(pool: KVBlockPool, capacity: Int, layout: KVCacheLayout? = nil) {
        let layout = layout ?? .fullAttention(layers: pool.layerCount)
        precondition(layout.layersPerBlock == pool.layerCount, "the pool's blocks hold \(pool.layerCount) layers, the layout \(layout.layersPerBlock)")
        self.pool = pool
        self.capacity = capacity
        self.layout = layout
        tables = Array(repeating: BlockTable(), count: layout.groups.count)
        tokens.reserveCapacity(min(capacity, 4096))
    }

    deinit { releaseAll() }

    public func storedRows(group: Int) -> Int {
        max(0, count - tables[group].dropped - tables[group].releasedPrefix * pool.blockSize)
    }

    /// Positions evicted so far (the kernels' row numbers are positions shifted by this).
    public var droppedPositions: Int { tables.count == 1 ? tables[0].dropped : 0 }

    /// Positions every group may write (the least over the tables; runs on every commit, so no array is built).
    private var writableUpTo: Int {
        var w = Int.max
        for t in tables { w = min(w, t.writableUpTo) }
        return tables.isEmpty ? 0 : w
    }

    /// Blocks still needed to absorb `n` more tokens (including copies of shared last blocks).
    public func blocksNeeded(for n: Int) -> Int {
        let bs = pool.blockSize
        var need = 0
        for t in tables {
            let row = count - t.dropped, end = row + n
            need += max(0, (end + bs - 1) / bs - t.blocks.count)
            if n > 0, row < t.blocks.count * bs, !isWritable(t.blocks[row / bs]) { need += 1 }
        }
        return need
    }

    private func isWritable(_ b: Int32) -> Bool {
        b == KVBlockPool.nullBlock || (pool.referenceCount(b) == 1 && !pool.isPublished(b))
    }

    public func reserve(_ n: Int) throws {
        let end = count + n
        guard n >= 0, end <= capacity else { throw KVMemoryFullError(capacity: capacity) }
        let bs = pool.blockSize
        for g in tables.indices where end > tables[g].writableUpTo {
            let row = count - tables[g].dropped, rowEnd = end - tables[g].dropped
            // The partly filled last block may be shared or published: copy it before writing.
            if row < tables[g].blocks.count * bs {
                let i = row / bs
                let b = tables[g].blocks[i]
                if !isWritable(b) {
                    guard let fresh = pool.allocate() else { throw KVMemoryFullError(capacity: count) }
                    pool.copyBlock(from: b, to: fresh)
                    pool.release(b)
                    tables[g].blocks[i] = fresh
                }
            }
            while tables[g].blocks.count * bs < rowEnd {
                guard let b = pool.allocate() else { throw KVMemoryFullError(capacity: count) }
                tables[g].blocks.append(b)
            }
            tables[g].writableUpTo = end
        }
    }

    public func store(layer: Int, position: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        let bs = pool.blockSize
        let t = tables[layout.groupOfLayer[layer]]
        let row = position - t.dropped
        let b = t.blocks[row / bs]
        precondition(b != KVBlockPool.nullBlock, "writing position \(position) of a block the window released")
        let slot = layout.slotOfLayer[layer]
        let kBase = pool.keys(block: b, layer: slot), vBase = pool.values(block: b, layer: slot)
        // One slice per KV head: the pool keeps a head's rows together.
        let width = rowWidth / pool.kvHeads
        for h in 0..<pool.kvHeads {
            let offset = pool.offset(row: row % bs, valueIndex: h * width)
            let kd = kBase + offset, vd = vBase + offset, k = key + h * width, v = value + h * width
            switch pool.storage {
            case .f32:
                kd.assumingMemoryBound(to: Float.self).update(from: k, count: width)
                vd.assumingMemoryBound(to: Float.self).update(from: v, count: width)
            case .f16:
                tern_f32_to_f16(k, kd.assumingMemoryBound(to: UInt16.self), Int64(width))
                tern_f32_to_f16(v, vd.assumingMemoryBound(to: UInt16.self), Int64(width))
            case .q8_0:
                _ = tern_quantize_row(Int32(TERN_Q8_0), k, kd, Int64(width))
                _ = tern_quantize_row(Int32(TERN_Q8_0), v, vd, Int64(width))
            }
        }
    }

    public func appendSegments(group: Int, below positions: Int, to segments: inout [tern_kv_segment]) {
        let bs = pool.blockSize
        let t = tables[group]
        // Rows are labelled in storage order (positions − dropped): kept rows lie before every new query.
        let end = min(positions - t.dropped, t.blocks.count * bs)
        var i = t.releasedPrefix
        while i * bs < end {
            let b = t.blocks[i]
            if b != KVBlockPool.nullBlock {
                segments.append(tern_kv_segment(keys: UnsafeRawPointer(pool.keys(block: b, layer: 0)),
                                                values: UnsafeRawPointer(pool.values(block: b, layer: 0)),
                                                first: Int64(i * bs), count: Int64(min(bs, end - i * bs))))
            }
            i += 1
        }
    }

    public func layerOffset(_ layer: Int) -> Int { pool.layerOffset(slot: layout.slotOfLayer[layer]) }

    public var kvRowStride: Int { pool.headBytes }

    public func kvSliceOffset(_ valueIndex: Int) -> Int { pool.offset(row: 0, valueIndex: valueIndex) }

    public func commit(_ n: Int) {
        count = min(count + n, writableUpTo)
        slideWindows()
    }

    /// Hands back the blocks of window groups that no future query can read: the next query sits at `count`
    /// and reads positions from count − window + 1 on.
    private func slideWindows() {
        let bs = pool.blockSize
        for g in tables.indices {
            guard let w = layout.groups[g].window else { continue }
            let firstNeeded = count - w + 1 - windowSlack
            while (tables[g].releasedPrefix + 1) * bs <= firstNeeded && tables[g].releasedPrefix < tables[g].blocks.count {
                let i = tables[g].releasedPrefix
                pool.release(tables[g].blocks[i])
                tables[g].blocks[i] = KVBlockPool.nullBlock
                tables[g].releasedPrefix += 1
            }
        }
    }

    /// Records the tokens whose K/V were just committed and publishes blocks that became full.
    public func appendTokens<C: Collection<Int32>>(_ new: C) {
        tokens.append(contentsOf: new)
        let bs = pool.blockSize
        // Once a position was evicted the blocks no longer hold whole runs of tokens: nothing more is published.
        while publishesBlocks, tables.allSatisfy({ $0.dropped == 0 }), (hashes.count + 1) * bs <= min(tokens.count, count) {
            let i = hashes.count
            let h = KVBlockPool.blockHash(parent: hashes.last ?? 0, tokens: tokens[(i * bs)..<((i + 1) * bs)])
            hashes.append(h)
            for g in tables.indices where tables[g].blocks[i] != KVBlockPool.nullBlock {
                pool.register(block: tables[g].blocks[i], hash: KVBlockPool.groupKey(h, group: g))
            }
        }
    }

    public func truncate(to newCount: Int) {
        let n = max(0, min(count, newCount))
        if n == 0 {
            releaseAll()
            return
        }
        count = n
        let bs = pool.blockSize
        for g in tables.indices {
            // Only rows appended after the last eviction can go (they hold positions in order).
            precondition(tables[g].dropped == 0 || n - tables[g].dropped >= (eviction?.recordedRows ?? 0),
                         "truncating below rows an eviction rearranged")
            let keep = (n - tables[g].dropped + bs - 1) / bs
            while tables[g].blocks.count > keep {
                let b = tables[g].blocks.removeLast()
                if b != KVBlockPool.nullBlock { pool.release(b) }
            }
            tables[g].releasedPrefix = min(tables[g].releasedPrefix, tables[g].blocks.count)
            tables[g].writableUpTo = min(tables[g].writableUpTo, n)
        }
        if tokens.count > n { tokens.removeLast(tokens.count - n) }
        if hashes.count > n / bs { hashes.removeLast(hashes.count - n / bs) }
        eviction?.truncate(rows: n - droppedPositions)
    }

    /// Fails when a window group already released rows that the query at `newCount` would read.
    public func rollback(to newCount: Int) -> Bool {
        let bs = pool.blockSize
        for g in tables.indices {
            if let w = layout.groups[g].window, tables[g].releasedPrefix * bs > max(0, newCount - w + 1) { return false }
        }
        truncate(to: newCount)
        return true
    }

    /// Attaches cached blocks for the longest cached prefix of `prompt`, at most `limit` tokens, whole blocks
    /// only. Full-attention groups need every block of the prefix; a window group only the blocks its window
    /// still reads at the cut (older ones stay null). Returns the number of tokens attached. The memory must be
    /// empty.
    @discardableResult
    public func attachCachedPrefix(_ prompt: [Int32], limit: Int) -> Int {
        precondition(count == 0 && tables.allSatisfy { $0.blocks.isEmpty })
        let bs = pool.blockSize
        let full = min(limit, prompt.count) / bs
        var found: [[Int32?]] = Array(repeating: [], count: tables.count)
        var chain: [UInt64] = []
        var parent: UInt64 = 0
        // Longest run of blocks every full-attention group has.
        for i in 0..<full {
            let h = KVBlockPool.blockHash(parent: parent, tokens: prompt[(i * bs)..<((i + 1) * bs)])
            var complete = true
            for g in tables.indices {
                let b = pool.peek(hash: KVBlockPool.groupKey(h, group: g))
                found[g].append(b)
                if b == nil && layout.groups[g].window == nil { complete = false }
            }
            if !complete { for g in tables.indices { found[g].removeLast() }; break }
            chain.append(h)
            parent = h
        }
        // Shrink the cut until every window group has the blocks its window reads there.
        var n = chain.count
        while n > 0 {
            var ok = true
            for g in tables.indices {
                guard let w = layout.groups[g].window else { continue }
                let firstNeeded = max(0, n * bs - w)
                for i in (firstNeeded / bs)..<n where found[g][i] == nil { ok = false }
            }
            if ok { break }
            n -= 1
        }
        pool.countPrefixQuery(hitBlocks: n, queriedBlocks: full)
        for g in tables.indices {
            let firstNeeded = layout.groups[g].window.map { max(0, n * bs - $0) / bs } ?? 0
            for i in 0..<n {
                if i >= firstNeeded, let b = found[g][i] {
                    pool.retain(b)
                    tables[g].blocks.append(b)
                } else {
                    tables[g].blocks.append(KVBlockPool.nullBlock)
                    tables[g].releasedPrefix = i + 1
                }
            }
        }
        hashes = Array(chain[0..<n])
        count = n * bs
        tokens = Array(prompt[0..<count])
        return count
    }

    /// A second sequence sharing everything stored so far (n > 1 choices); it copies on its first write.
    public func fork() -> PagedKVMemory {
        let f = PagedKVMemory(pool: pool, capacity: capacity, layout: layout)
        for g in tables.indices {
            for b in tables[g].blocks where b != KVBlockPool.nullBlock { pool.retain(b) }
            f.tables[g] = tables[g]
            f.tables[g].writableUpTo = 0
            // Our own partial last block is now shared too.
            tables[g].writableUpTo = min(tables[g].writableUpTo, count)
        }
        f.count = count
        f.tokens = tokens
        f.hashes = hashes
        f.eviction = eviction?.copy()
        return f
    }

    /// Returns every block to the pool (finish, cancel, preemption).
    public func releaseAll() {
        for g in tables.indices {
            for b in tables[g].blocks where b != KVBlockPool.nullBlock { pool.release(b) }
            tables[g] = BlockTable()
        }
        hashes.removeAll()
        tokens.removeAll()
        count = 0
        eviction?.reset()
    }

    /// Evicts by `settings` from now on (policy none: keeps everything). The memory must be empty and have one
    /// cache group (models with sliding-window layers keep their fixed window and evict nothing). A sequence that
    /// will never hold more than the budget (`longest`: its most positions, the capacity by default) neither
    /// evicts nor scores, so it computes exactly what it would without a policy.
    public func enableEviction(_ settings: EvictionSettings, kvHeads: Int, headDim: Int, longest: Int? = nil) {
        // Policy none asks nothing of the layout (`tern bench --kv-type f16` on Gemma 3 stopped here).
        guard settings.isActive else { eviction = nil; return }
        precondition(count == 0 && tables.count == 1, "eviction needs an empty memory with one cache group")
        precondition(kvHeads * headDim == rowWidth)
        let needed = min(longest ?? capacity, capacity) > settings.budget
        eviction = needed ? KVEvictionState(settings: settings, layers: layerCount, kvHeads: kvHeads, headDim: headDim) : nil
    }

    /// The score sink for a forward pass of `n` new rows: nil unless the eviction policy reads scores and samples
    /// this pass (KVEvictionState.sinkForPass).
    public func scoreSink(forPass n: Int) -> AttentionScoreSink? {
        eviction?.sinkForPass(rows: storedRows(group: 0) + n, newRows: n)
    }

    /// Applies the eviction policy after a step: folds the step's attention weights into the scores, then, past
    /// the budget, drops the policy's choice of rows per (layer, KV head), moves rows from the end into the holes
    /// (copying a shared or published block before writing into it) and hands back blocks that emptied. Returns
    /// the positions each (layer, KV head) dropped (0 also when no free block was left for a copy: it retries
    /// after the next step).
    @discardableResult
    public func applyEviction() -> Int {
        guard let ev = eviction else { return 0 }
        let bs = pool.blockSize
        let stored = storedRows(group: 0)
        ev.observe(stored: stored, dropped: tables[0].dropped, count: count)
        let k = stored - ev.settings.budget
        guard k > 0 else { return 0 }
        let kept = stored - k
        // Every (layer, head) chooses first: the blocks that receive rows must be private before anything moves.
        var moves: [(holes: [Int], movers: [Int])] = []
        moves.reserveCapacity(ev.layers * ev.kvHeads)
        var targets = Set<Int>()
        for i in 0..<(ev.layers * ev.kvHeads) {
            let victims = ev.victims(i, k: k, count: count)
            precondition(victims.count == k, "the policy found \(victims.count) of \(k) rows to evict")
            let holes = victims.filter { $0 < kept }
            var movers: [Int] = []
            movers.reserveCapacity(holes.count)
            var v = victims.count - 1
            var r = stored - 1
            // Rows at or past `kept` that stay, highest first... then reversed to pair with ascending holes.
            while r >= kept {
                if v >= 0 && victims[v] == r { v -= 1 } else { movers.append(r) }
                r -= 1
            }
            movers.reverse()
            for h in holes { targets.insert(h / bs) }
            moves.append((holes, movers))
        }
        for i in targets.sorted() where !isWritable(tables[0].blocks[i]) {
            guard let fresh = pool.allocate() else { return 0 }
            pool.copyBlock(from: tables[0].blocks[i], to: fresh)
            pool.release(tables[0].blocks[i])
            tables[0].blocks[i] = fresh
        }
        let headBytes = pool.storage.rowBytes(ev.headDim)
        for (i, m) in moves.enumerated() {
            precondition(m.holes.count == m.movers.count)
            let slot = layout.slotOfLayer[i / ev.kvHeads]
            let head = (i % ev.kvHeads) * ev.headDim
            for (to, from) in zip(m.holes, m.movers) {
                let src = tables[0].blocks[from / bs], dst = tables[0].blocks[to / bs]
                let so = pool.offset(row: from % bs, valueIndex: head), dO = pool.offset(row: to % bs, valueIndex: head)
                (pool.keys(block: dst, layer: slot) + dO).copyMemory(from: pool.keys(block: src, layer: slot) + so, byteCount: headBytes)
                (pool.values(block: dst, layer: slot) + dO).copyMemory(from: pool.values(block: src, layer: slot) + so, byteCount: headBytes)
                ev.move(i, from: from, to: to)
            }
        }
        ev.truncate(rows: kept)
        ev.evicted += k
        tables[0].dropped += k
        let keep = (kept + bs - 1) / bs
        while tables[0].blocks.count > keep { pool.release(tables[0].blocks.removeLast()) }
        // The partly filled last block is checked again (copied if shared) by the next reserve.
        tables[0].writableUpTo = min(tables[0].writableUpTo, count)
        return k
    }
}
