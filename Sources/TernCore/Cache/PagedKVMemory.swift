// One sequence's view of the paged KV store: a block table (logical block → physical block) over a
// KVBlockPool. Shared blocks (forks, cached prefixes) are copied before the first write (copy-on-write);
// full blocks are published to the pool's prefix cache as they fill. Engine-thread only, like the pool.

import CKernels

public final class PagedKVMemory: KVMemory {
    public let pool: KVBlockPool
    public let capacity: Int
    public private(set) var blocks: [Int32] = []
    public private(set) var count = 0
    /// Tokens stored so far (to name full blocks in the prefix cache).
    public private(set) var tokens: [Int32] = []
    /// Hash of each full block, in order.
    private var hashes: [UInt64] = []
    /// Positions below this are backed by blocks this sequence may write.
    private var writableUpTo = 0

    public var layerCount: Int { pool.layerCount }
    public var rowWidth: Int { pool.rowWidth }
    public var storage: KVStorage { pool.storage }
    public var blockSize: Int { pool.blockSize }

    public init(pool: KVBlockPool, capacity: Int) {
        self.pool = pool
        self.capacity = capacity
        tokens.reserveCapacity(min(capacity, 4096))
    }

    deinit { releaseAll() }

    /// Blocks still needed to absorb `n` more tokens (including a copy of a shared last block).
    public func blocksNeeded(for n: Int) -> Int {
        let bs = pool.blockSize
        let end = count + n
        let have = blocks.count
        var need = max(0, (end + bs - 1) / bs - have)
        if n > 0, count < have * bs, !isWritable(block: count / bs) { need += 1 }
        return need
    }

    private func isWritable(block i: Int) -> Bool {
        let b = blocks[i]
        return pool.referenceCount(b) == 1 && !pool.isPublished(b)
    }

    public func reserve(_ n: Int) throws {
        let end = count + n
        guard n >= 0, end <= capacity else { throw KVMemoryFullError(capacity: capacity) }
        if end <= writableUpTo { return }
        let bs = pool.blockSize
        // The partly filled last block may be shared or published: copy it before writing.
        if count < blocks.count * bs {
            let i = count / bs
            if !isWritable(block: i) {
                guard let fresh = pool.allocate() else { throw KVMemoryFullError(capacity: count) }
                pool.copyBlock(from: blocks[i], to: fresh)
                pool.release(blocks[i])
                blocks[i] = fresh
            }
        }
        while blocks.count * bs < end {
            guard let b = pool.allocate() else { throw KVMemoryFullError(capacity: count) }
            blocks.append(b)
        }
        writableUpTo = end
    }

    public func store(layer: Int, position: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        let bs = pool.blockSize
        let b = blocks[position / bs]
        let offset = (position % bs) * pool.storage.rowBytes(rowWidth)
        let kd = pool.keys(block: b, layer: layer) + offset, vd = pool.values(block: b, layer: layer) + offset
        switch pool.storage {
        case .f32:
            kd.assumingMemoryBound(to: Float.self).update(from: key, count: rowWidth)
            vd.assumingMemoryBound(to: Float.self).update(from: value, count: rowWidth)
        case .f16:
            tern_f32_to_f16(key, kd.assumingMemoryBound(to: UInt16.self), Int64(rowWidth))
            tern_f32_to_f16(value, vd.assumingMemoryBound(to: UInt16.self), Int64(rowWidth))
        case .q8_0:
            _ = tern_quantize_row(Int32(TERN_Q8_0), key, kd, Int64(rowWidth))
            _ = tern_quantize_row(Int32(TERN_Q8_0), value, vd, Int64(rowWidth))
        }
    }

    public func forEachSegment(layer: Int, positions: Int,
                               _ body: (Int, Int, UnsafeRawPointer, UnsafeRawPointer) -> Void) {
        let bs = pool.blockSize
        var first = 0
        var i = 0
        while first < positions {
            let n = min(bs, positions - first)
            body(first, n, UnsafeRawPointer(pool.keys(block: blocks[i], layer: layer)),
                 UnsafeRawPointer(pool.values(block: blocks[i], layer: layer)))
            first += n
            i += 1
        }
    }

    public func commit(_ n: Int) {
        count = min(count + n, writableUpTo)
    }

    /// Records the tokens whose K/V were just committed and publishes blocks that became full.
    public func appendTokens(_ new: [Int32]) {
        tokens.append(contentsOf: new)
        let bs = pool.blockSize
        while (hashes.count + 1) * bs <= min(tokens.count, count) {
            let i = hashes.count
            let h = KVBlockPool.blockHash(parent: hashes.last ?? 0, tokens: tokens[(i * bs)..<((i + 1) * bs)])
            hashes.append(h)
            pool.register(block: blocks[i], hash: h)
        }
    }

    public func truncate(to newCount: Int) {
        let n = max(0, min(count, newCount))
        count = n
        let bs = pool.blockSize
        let keep = (n + bs - 1) / bs
        while blocks.count > keep { pool.release(blocks.removeLast()) }
        if tokens.count > n { tokens.removeLast(tokens.count - n) }
        if hashes.count > n / bs { hashes.removeLast(hashes.count - n / bs) }
        writableUpTo = min(writableUpTo, n)
    }

    public func rollback(to newCount: Int) -> Bool {
        truncate(to: newCount)
        return true
    }

    /// Attaches cached blocks for the longest cached prefix of `prompt`, at most `limit` tokens, whole blocks
    /// only. Returns the number of tokens attached. The memory must be empty.
    @discardableResult
    public func attachCachedPrefix(_ prompt: [Int32], limit: Int) -> Int {
        precondition(count == 0 && blocks.isEmpty)
        let bs = pool.blockSize
        let full = min(limit, prompt.count) / bs
        var parent: UInt64 = 0
        var hits = 0
        for i in 0..<full {
            let h = KVBlockPool.blockHash(parent: parent, tokens: prompt[(i * bs)..<((i + 1) * bs)])
            guard let b = pool.lookup(hash: h) else { break }
            blocks.append(b)
            hashes.append(h)
            parent = h
            hits += 1
        }
        pool.countPrefixQuery(hitBlocks: hits, queriedBlocks: full)
        count = hits * bs
        tokens = Array(prompt[0..<count])
        writableUpTo = 0
        return count
    }

    /// A second sequence sharing everything stored so far (n > 1 choices); it copies on its first write.
    public func fork() -> PagedKVMemory {
        let f = PagedKVMemory(pool: pool, capacity: capacity)
        for b in blocks { pool.retain(b) }
        f.blocks = blocks
        f.count = count
        f.tokens = tokens
        f.hashes = hashes
        f.writableUpTo = 0
        // Our own partial last block is now shared too.
        writableUpTo = min(writableUpTo, count)
        return f
    }

    /// Returns every block to the pool (finish, cancel, preemption).
    public func releaseAll() {
        for b in blocks { pool.release(b) }
        blocks.removeAll()
        hashes.removeAll()
        tokens.removeAll()
        count = 0
        writableUpTo = 0
    }
}
