// Per-sequence key/value memory for attention, and its contiguous implementation.
// Models write K/V rows of new positions and read them back segment by segment: the contiguous memory is one
// segment per layer; a paged cache presents one segment per block, so the attention code serves both.

/// Element type of stored keys and values. q8_0 keeps GGML's Q8_0 blocks (32 values: an f16 scale and 32
/// int8), so a row of `width` values (a multiple of 32) takes width/32 × 34 bytes.
public enum KVStorage: String, Sendable {
    case f32, f16, q8_0

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
    /// Values per position per layer (KV heads × head dimension).
    var rowWidth: Int { get }
    var storage: KVStorage { get }
    /// Makes room for `n` more positions after `count`; throws when the memory is full.
    func reserve(_ n: Int) throws
    /// Writes the key and value rows (rowWidth floats each) of one reserved position.
    func store(layer: Int, position: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>)
    /// Calls `body(firstPosition, positionCount, keys, values)` for consecutive runs covering positions
    /// 0..<positions; within a run, position p's row starts at byte (p - firstPosition) * storage.rowBytes(rowWidth).
    func forEachSegment(layer: Int, positions: Int,
                        _ body: (Int, Int, UnsafeRawPointer, UnsafeRawPointer) -> Void)
    /// Marks `n` reserved positions as written.
    func commit(_ n: Int)
    /// Forgets every position from `count` on (speculation rollback, perplexity windows).
    func truncate(to count: Int)
}

public struct KVMemoryFullError: Error, CustomStringConvertible {
    public let capacity: Int
    public var description: String { "context is full (\(capacity) positions)" }
}

/// One f32 slab per layer for keys and one for values. Not thread-safe: owned by the engine thread; the forward
/// pass reads it from worker threads only while the engine thread waits for them.
public final class ContiguousKVMemory: KVMemory {
    public let layerCount: Int
    public let rowWidth: Int
    public let capacity: Int
    public var storage: KVStorage { .f32 }
    public private(set) var count = 0
    private let keys: UnsafeMutablePointer<Float>
    private let values: UnsafeMutablePointer<Float>
    private let layerStride: Int

    public init(layers: Int, rowWidth: Int, capacity: Int) {
        self.layerCount = layers
        self.rowWidth = rowWidth
        self.capacity = capacity
        layerStride = capacity * rowWidth
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
        (keys + layer * layerStride + position * rowWidth).update(from: key, count: rowWidth)
        (values + layer * layerStride + position * rowWidth).update(from: value, count: rowWidth)
    }

    public func forEachSegment(layer: Int, positions: Int,
                               _ body: (Int, Int, UnsafeRawPointer, UnsafeRawPointer) -> Void) {
        body(0, positions, UnsafeRawPointer(keys + layer * layerStride), UnsafeRawPointer(values + layer * layerStride))
    }

    public func commit(_ n: Int) { count = min(capacity, count + n) }

    public func truncate(to newCount: Int) { count = max(0, min(count, newCount)) }

    public func rollback(to newCount: Int) -> Bool {
        truncate(to: newCount)
        return true
    }
}
