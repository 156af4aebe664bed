// The paged KV store (vLLM's PagedAttention layout): one preallocated region cut into fixed-size blocks of
// `blockSize` positions × the layers of one cache group (KVCacheLayout.layersPerBlock) × keys and values. Blocks carry reference counts so sequences can share
// them (forks, cached prompt prefixes); a full block is named by hash(parent's hash, its tokens) and stays
// findable after its last user leaves, until it is reclaimed least-recently-used first.
//
// Resident memory follows use (the region is mapped lazily, so a page costs memory once written): free blocks
// are a stack, so the most recently freed block, whose pages are resident and warm, is handed out first; pages
// of blocks that stayed free for a while are given back to the kernel (`releaseIdleMemory`); and idle cached
// prefix blocks are held up to `maxIdleCachedBlocks`, beyond which the least recently used leave the cache.
//
// Inside a block's layer, each KV head's rows lie together (head-major: head h's 16 rows, then head h+1's), so
// attention, which reads one head at a time, streams contiguous bytes; with whole rows together it read a third
// of every cache line's neighbourhood and waited on memory (one decoding row at depth 4096: 1.7× slower).
//
// Owned by the engine thread: every method must be called from that one thread; no locks inside.

import CKernels
import Foundation

public final class KVBlockPool {
    /// The block id a block table holds where its group no longer keeps a block.
    public static let nullBlock: Int32 = -1
    /// Layers one block holds (all of a model's layers when they form one cache group).
    public let layerCount: Int
    public let rowWidth: Int
    public let blockSize: Int
    public let storage: KVStorage
    public let blockCount: Int
    /// KV heads a row holds, stored head-major within a block's layer (1: whole rows together).
    public let kvHeads: Int
    /// Bytes of one head's slice of one row (the row stride the kernels read with).
    public let headBytes: Int
    /// Bytes of one layer's keys (or values) in one block.
    let layerBytes: Int
    /// Bytes of one block: all layers, keys then values per layer.
    let blockBytes: Int
    private let region: UnsafeMutableRawPointer
    private let regionBytes: Int

    private var refCounts: [Int32]
    /// Free blocks, the most recently freed last, and when each was freed (monotonic nanoseconds). Pushes come
    /// in time order and pops take the newest, so the times never decrease from the bottom up: the bottom of
    /// the stack is the block that has been free longest.
    private var freeList: [Int32]
    private var freedAt: [UInt64]
    /// The bottom `releasedFree` entries of `freeList` hold no resident pages (never written, or given back).
    private var releasedFree: Int
    /// Idle cached blocks kept at most; past it, the least recently used leaves the prefix cache and its pages
    /// are given back. Int.max: the cache may hold every block nobody uses.
    public var maxIdleCachedBlocks = Int.max
    /// Prefix cache: block hash → block, and each cached block's hash.
    private var blockByHash: [UInt64: Int32] = [:]
    private var hashOfBlock: [UInt64?]
    /// Cached blocks nobody uses, oldest first (reclaimed before failing an allocation). Tracked with a
    /// monotonically increasing stamp so a block can be touched in O(1) and the oldest found lazily.
    private var idleStamp: [UInt64]
    private var idleQueue: [(block: Int32, stamp: UInt64)] = []
    private var idleHead = 0
    private var clock: UInt64 = 0
    public private(set) var idleCachedCount = 0

    // Counters for metrics.
    public private(set) var prefixQueries = 0
    public private(set) var prefixHits = 0

    public init(layers: Int, rowWidth: Int, blockSize: Int, storage: KVStorage, bytes: Int, kvHeads: Int = 1) throws {
        precondition(layers > 0 && rowWidth > 0 && blockSize > 0 && kvHeads > 0 && rowWidth % kvHeads == 0)
        layerCount = layers
        self.rowWidth = rowWidth
        self.kvHeads = kvHeads
        self.blockSize = blockSize
        self.storage = storage
        precondition(storage != .q8_0 || (rowWidth / kvHeads) % 32 == 0, "q8_0 KV heads must hold whole 32-value blocks")
        headBytes = storage.rowBytes(rowWidth / kvHeads)
        layerBytes = blockSize * storage.rowBytes(rowWidth)
        blockBytes = layers * 2 * layerBytes
        blockCount = bytes / blockBytes
        guard blockCount >= 2 else {
            throw KVMemoryFullError(capacity: blockCount * blockSize)
        }
        regionBytes = blockCount * blockBytes
        // Anonymous mmap: pages cost resident memory only once a block is first written.
        guard let p = mmap(nil, regionBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            throw KVMemoryFullError(capacity: 0)
        }
        region = p
        refCounts = [Int32](repeating: 0, count: blockCount)
        hashOfBlock = [UInt64?](repeating: nil, count: blockCount)
        idleStamp = [UInt64](repeating: 0, count: blockCount)
        freeList = (0..<Int32(blockCount)).reversed().map { $0 }
        freedAt = [UInt64](repeating: 0, count: blockCount)
        releasedFree = blockCount
    }

    deinit { munmap(region, regionBytes) }

    // MARK: memory access

    @inline(__always)
    func keys(block: Int32, layer: Int) -> UnsafeMutableRawPointer {
        region + Int(block) * blockBytes + layer * 2 * layerBytes
    }

    @inline(__always)
    func values(block: Int32, layer: Int) -> UnsafeMutableRawPointer {
        region + Int(block) * blockBytes + (layer * 2 + 1) * layerBytes
    }

    /// Bytes from the start of a block's layer to the value `valueIndex` of row `row` (a head's slice starts
    /// there; `valueIndex` is a multiple of 32 for q8_0).
    @inline(__always)
    func offset(row: Int, valueIndex: Int) -> Int {
        let width = rowWidth / kvHeads
        return (valueIndex / width * blockSize + row) * headBytes + storage.rowBytes(valueIndex % width)
    }

    /// Byte distance from a row of slot 0 to the same row of slot `slot` (keys and values alike).
    @inline(__always)
    func layerOffset(slot: Int) -> Int { slot * 2 * layerBytes }

    func copyBlock(from src: Int32, to dst: Int32) {
        (region + Int(dst) * blockBytes).copyMemory(from: region + Int(src) * blockBytes, byteCount: blockBytes)
    }

    // MARK: allocation

    /// Blocks that can be handed out right now (free plus idle cached ones).
    public var availableBlocks: Int { freeList.count + idleCachedCount }
    public var usedBlocks: Int { blockCount - availableBlocks }

    /// A block with reference count 1, or nil when every block is in use.
    func allocate() -> Int32? {
        if let b = freeList.popLast() {
            freedAt.removeLast()
            releasedFree = min(releasedFree, freeList.count)
            refCounts[Int(b)] = 1
            return b
        }
        guard let b = takeOldestIdle() else { return nil }
        refCounts[Int(b)] = 1
        return b
    }

    /// Removes the least recently used idle cached block from the prefix cache and returns it (reference
    /// count 0, on no list), or nil when no block is idle.
    private func takeOldestIdle() -> Int32? {
        while idleHead < idleQueue.count {
            let (b, stamp) = idleQueue[idleHead]
            idleHead += 1
            if refCounts[Int(b)] == 0, idleStamp[Int(b)] == stamp, let h = hashOfBlock[Int(b)] {
                blockByHash[h] = nil
                hashOfBlock[Int(b)] = nil
                idleCachedCount -= 1
                compactIdleQueue()
                return b
            }
        }
        compactIdleQueue()
        return nil
    }

    func retain(_ b: Int32) {
        if refCounts[Int(b)] == 0 {
            // An idle cached block comes back into use.
            idleCachedCount -= 1
            idleStamp[Int(b)] = 0
        }
        refCounts[Int(b)] += 1
    }

    func release(_ b: Int32) {
        precondition(refCounts[Int(b)] > 0, "block released more often than retained")
        refCounts[Int(b)] -= 1
        guard refCounts[Int(b)] == 0 else { return }
        if hashOfBlock[Int(b)] != nil {
            clock += 1
            idleStamp[Int(b)] = clock
            idleQueue.append((b, clock))
            idleCachedCount += 1
            while idleCachedCount > maxIdleCachedBlocks, let old = takeOldestIdle() {
                // Cold by construction: its pages go back now, and it goes to the bottom of the free stack.
                releasePages(old)
                freeList.insert(old, at: 0)
                freedAt.insert(0, at: 0)
                releasedFree += 1
            }
        } else {
            freeList.append(b)
            freedAt.append(DispatchTime.now().uptimeNanoseconds)
        }
    }

    // MARK: resident memory

    /// Gives back to the kernel the pages of blocks free since before `cutoff` (monotonic nanoseconds, as
    /// DispatchTime's uptime); their next user finds them zero-filled, which no reader depends on (rows are
    /// written before attention reads them). Returns the number of blocks released.
    @discardableResult
    public func releaseIdleMemory(freedBefore cutoff: UInt64) -> Int {
        var released = 0
        while releasedFree < freeList.count && freedAt[releasedFree] <= cutoff {
            releasePages(freeList[releasedFree])
            releasedFree += 1
            released += 1
        }
        return released
    }

    /// When the block free longest but still resident was freed (monotonic nanoseconds), or nil if none is.
    public var oldestResidentFreeTime: UInt64? {
        releasedFree < freeList.count ? freedAt[releasedFree] : nil
    }

    /// Blocks whose pages may be resident: in use, idle in the prefix cache, or free but not yet given back.
    public var residentBlocks: Int { blockCount - releasedFree }

    /// The whole pages inside block `b` (a block need not start or end on a page).
    private func releasePages(_ b: Int32) {
        let page = Self.pageSize
        let start = (Int(bitPattern: region) + Int(b) * blockBytes + page - 1) / page * page
        let end = (Int(bitPattern: region) + (Int(b) + 1) * blockBytes) / page * page
        guard end > start else { return }
        _ = madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, MADV_DONTNEED)
    }

    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Bytes of the pool's region the kernel holds in memory right now (mincore; for tests and diagnostics).
    public func residentRegionBytes() -> Int {
        let page = Self.pageSize
        let pages = (regionBytes + page - 1) / page
        var vec = [UInt8](repeating: 0, count: pages)
        guard mincore(region, regionBytes, &vec) == 0 else { return -1 }
        return vec.reduce(0) { $0 + Int($1 & 1) } * page
    }

    func referenceCount(_ b: Int32) -> Int { Int(refCounts[Int(b)]) }

    private func compactIdleQueue() {
        if idleHead > 1024 && idleHead * 2 > idleQueue.count {
            idleQueue.removeFirst(idleHead)
            idleHead = 0
        }
    }

    // MARK: prefix cache

    /// Hash naming a full block: its parent's hash and its tokens (FNV-1a over 64-bit words).
    public static func blockHash(parent: UInt64, tokens: ArraySlice<Int32>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ parent
        h = h &* 0x1000_0000_01b3
        for t in tokens {
            h ^= UInt64(UInt32(bitPattern: t))
            h = h &* 0x1000_0000_01b3
            h ^= h >> 29
        }
        return h
    }

    /// The prefix-cache key of a block of cache group `group` whose content hash is `hash`.
    static func groupKey(_ hash: UInt64, group: Int) -> UInt64 {
        group == 0 ? hash : (hash ^ (UInt64(group) &* 0x9E37_79B9_7F4A_7C15)) &* 0x1000_0000_01b3
    }

    /// Whether a block with this content hash (first cache group) is in the prefix cache.
    func isCached(hash: UInt64) -> Bool { blockByHash[hash] != nil }

    /// Finds a cached block by hash without taking a reference.
    func peek(hash: UInt64) -> Int32? { blockByHash[hash] }

    /// Publishes a full block under `hash` (unless another block already holds that content).
    func register(block b: Int32, hash: UInt64) {
        guard blockByHash[hash] == nil, hashOfBlock[Int(b)] == nil else { return }
        blockByHash[hash] = b
        hashOfBlock[Int(b)] = hash
    }

    /// Whether writes to `b` would change what the prefix cache promises for its hash.
    func isPublished(_ b: Int32) -> Bool { hashOfBlock[Int(b)] != nil }

    func countPrefixQuery(hitBlocks: Int, queriedBlocks: Int) {
        prefixQueries += queriedBlocks
        prefixHits += hitBlocks
    }

    /// Invariant check for tests: every block is either free, idle-cached, or referenced.
    public func checkInvariants() -> String? {
        var free = Set(freeList)
        if free.count != freeList.count { return "a block is on the free list twice" }
        if freedAt.count != freeList.count || releasedFree > freeList.count { return "free-list bookkeeping is off" }
        if zip(freedAt, freedAt.dropFirst()).contains(where: { $0 > $1 }) { return "free-list times out of order" }
        for b in 0..<Int32(blockCount) {
            let rc = refCounts[Int(b)]
            if rc < 0 { return "block \(b) has reference count \(rc)" }
            if rc == 0 && hashOfBlock[Int(b)] == nil && !free.contains(b) { return "block \(b) leaked" }
            if rc > 0 && free.contains(b) { return "block \(b) is in use and free" }
            free.remove(b)
        }
        return nil
    }
}
