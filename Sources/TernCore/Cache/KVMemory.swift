// Per-sequence key/value memory for attention, and its contiguous implementation.
// Models write K/V rows of new positions and read them back as segments (runs of rows at known positions), one
// list per cache group: the contiguous memory is one segment; a paged cache presents one segment per block it
// still holds, so the attention code serves both, and a window group simply lists fewer blocks.

import CKernels

/// Element type of stored keys and values. q8_0 keeps GGML's Q8_0 blocks (32 values: an f16 scale and 32
/// int8), so a row of `width` values (a multiple of 32) takes width/32 × 34 bytes.
public enum KVStorage: String, Sendable {
    case f32, f16, q8_0

    /// The element type as the C kernels name it (TERN_F32, TERN_F16, TERN_Q8_0).
    public var kernelType: Int32 {
        switch self {
        case .f32: return Int32(TERN_F32)
        case .f16: return Int32(TERN_F16)
        case .q8_0: return Int32(TERN_Q8_0)
        }
    }

    /// Bytes of one stored row of `width` values.
    public func rowBytes(_ width: Int) -> Int {
        switch self {
        case .f32: return width * 4
        case .f16: return width * 2
        case .q8_0: return width / 32 * 34
        }
    }
}

public protocol KVMemory: SequenceMemory {
    var layerCount: Int { get }
    /// The cache groups the layers are stored in.
    var layout: KVCacheLayout { get }
    /// Rows this memory holds for `group` (equal to `count` for full attention, fewer for a sliding window; a
    /// logical position and a stored row are different things once rows are dropped).
    func storedRows(group: Int) -> Int
    /// Values per position per layer (KV heads × head dimension).
    var rowWidth: Int { get }
    var storage: KVStorage { get }
    /// Makes room for `n` more positions after `count`; throws when the memory is full.
    func reserve(_ n: Int) throws
    /// Writes the key and value rows (rowWidth floats each) of one reserved position.
    func store(layer: Int, position: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>)
    /// Appends the segments of `group` that hold positions below `positions`, in position order, with pointers
    /// into the group's first layer; `layerOffset(layer)` bytes further are the same rows of `layer`.
    func appendSegments(group: Int, below positions: Int, to segments: inout [tern_kv_segment])
    /// Byte distance from a row of the group's first layer to the same row of `layer`.
    func layerOffset(_ layer: Int) -> Int
    /// Bytes from one stored row of a KV head's slice to the next row's (the kernels' row stride).
    var kvRowStride: Int { get }
    /// Where the slice starting at value `valueIndex` of a row (a KV head's first value) lies, in bytes from the
    /// row's start as a segment points at it.
    func kvSliceOffset(_ valueIndex: Int) -> Int
    /// Positions an eviction policy dropped: segments number rows in storage order, so a query at position p is
    /// at p − droppedPositions for the attention kernels (0 without eviction).
    var droppedPositions: Int { get }
    /// Marks `n` reserved positions as written.
    func commit(_ n: Int)
    /// Forgets every position from `count` on (speculation rollback, perplexity windows).
    func truncate(to count: Int)
}

public struct KVMemoryFullError: Error, CustomStringConvertible {
    public let capacity: Int
    public var description: String { "context is full (\(capacity) positions)" }
}

/// One f32 slab per layer for keys and one for values, each KV head's positions together in it (so one head's
/// attention reads contiguous memory, as in the paged pool). Not thread-safe: owned by the engine thread; the
/// forward pass reads it from worker threads only while the engine thread waits for them.
public final class ContiguousKVMemory: KVMemory {
    public let layerCount: Int
    public let rowWidth: Int
    public let capacity: Int
    public let layout: KVCacheLayout
    /// KV heads a row holds; each head's rows lie together in a layer's slab.
    public let kvHeads: Int
    public var storage: KVStorage { .f32 }
    public private(set) var count = 0
    private let keys: UnsafeMutablePointer<Float>
    private let values: UnsafeMutablePointer<Float>
    private let layerStride: Int

    /// Every group of `layout` reads the same slabs (nothing is released); a window group's limit is applied by
    /// the attention kernel, which clips each query to its window.
    public init(layers: Int, rowWidth: Int, capacity: Int, layout: KVCacheLayout? = nil, kvHeads: Int = 1) {
        precondition(kvHeads > 0 && rowWidth % kvHeads == 0)
        self.layerCount = layers
        self.rowWidth = rowWidth
        self.kvHeads = kvHeads
        self.capacity = capacity
        layerStride = capacity * rowWidth
        self.layout = layout ?? .fullAttention(layers: layers)
        // Large allocations come from mmap, so untouched pages of a long context cost no resident memory.
        keys = .allocate(capacity: max(1, layers * layerStride))
        values = .allocate(capacity: max(1, layers * layerStride))
    }

    deinit {
        keys.deallocate()
        values.deallocate()
    }

    public func reserve(_ n: Int) throws {
        guard n >= 0, count + n <= capacity else { throw KVMemoryFullError(capacity: capacity) }
    }

    public func store(layer: Int, position: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>) {
        let width = rowWidth / kvHeads
        for h in 0..<kvHeads {
            let at = layer * layerStride + h * capacity * width + position * width
            (keys + at).update(from: key + h * width, count: width)
            (values + at).update(from: value + h * width, count: width)
        }
    }

    public func storedRows(group: Int) -> Int { count }

    public func appendSegments(group: Int, below positions: Int, to segments: inout [tern_kv_segment]) {
        guard positions > 0 else { return }
        segments.append(tern_kv_segment(keys: UnsafeRawPointer(keys), values: UnsafeRawPointer(values),
                                        first: 0, count: Int64(min(positions, capacity))))
    }

    public func layerOffset(_ layer: Int) -> Int { layer * layerStride * MemoryLayout<Float>.stride }

    public var kvRowStride: Int { storage.rowBytes(rowWidth / kvHeads) }

    public func kvSliceOffset(_ valueIndex: Int) -> Int {
        let width = rowWidth / kvHeads
        return storage.rowBytes(valueIndex / width * capacity * width + valueIndex % width)
    }

    public var droppedPositions: Int { 0 }

    public func commit(_ n: Int) { count = min(capacity, count + n) }

    public func truncate(to newCount: Int) { count = max(0, min(count, newCount)) }

    public func rollback(to newCount: Int) -> Bool {
        truncate(to: newCount)
        return true
    }
}
