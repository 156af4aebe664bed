// What the query rows of one forward pass may read, handed from the cache side to the model: for every batch item
// and cache group, the segments (runs of stored rows at known positions) its memory holds, plus the optional score
// sinks eviction policies read. Built once per forward pass after the new positions are reserved, so every
// layer of a group reads the same list (layers differ only by a byte offset).

import CKernels

public struct AttentionMetadata {
    public private(set) var layout: KVCacheLayout
    /// Segments of every (item, group), item-major.
    private(set) var segments: [tern_kv_segment] = []
    private var ranges: [Range<Int>] = []
    /// Per item: the sink its query rows add attention weights to, if any.
    private(set) var sinks: [AttentionScoreSink?] = []
    public private(set) var hasSinks = false

    public init(layout: KVCacheLayout) {
        self.layout = layout
    }

    /// Lists what each of `memories` holds below `ends[i]` (its positions after this pass's tokens).
    mutating func build(memories: [KVMemory], ends: [Int], sinks: [AttentionScoreSink?]) {
        segments.removeAll(keepingCapacity: true)
        ranges.removeAll(keepingCapacity: true)
        self.sinks = sinks
        hasSinks = sinks.contains { $0 != nil }
        if let first = memories.first { layout = first.layout }
        let groups = layout.groups.count
        for (i, memory) in memories.enumerated() {
            precondition(memory.layout == layout, "every memory of a batch must share the model's cache layout")
            for g in 0..<groups {
                let start = segments.count
                memory.appendSegments(group: g, below: ends[i], to: &segments)
                ranges.append(start..<segments.count)
            }
        }
    }

    /// Segments of `item` in `group`.
    func range(item: Int, group: Int) -> Range<Int> { ranges[item * layout.groups.count + group] }
}

/// Attention weights gathered inside the attention kernels for one sequence: for each layer and KV head, the
/// weight every stored row received from the sequence's query rows of a pass, summed over those rows and over the
/// query heads of that KV head (so each query row adds the group size). Indexed as the kernels number rows (the
/// position, or the storage row once a memory evicts: KVMemory.droppedPositions). The owner zeroes what it read.
public final class AttentionScoreSink {
    public let layers: Int
    public let kvHeads: Int
    public let capacity: Int
    private let weights: UnsafeMutablePointer<Float>

    public init(layers: Int, kvHeads: Int, capacity: Int) {
        self.layers = layers
        self.kvHeads = kvHeads
        self.capacity = capacity
        weights = .allocate(capacity: max(1, layers * kvHeads * capacity))
        reset()
    }

    deinit { weights.deallocate() }

    public func reset() { weights.update(repeating: 0, count: max(1, layers * kvHeads * capacity)) }

    func copy() -> AttentionScoreSink {
        let c = AttentionScoreSink(layers: layers, kvHeads: kvHeads, capacity: capacity)
        c.weights.update(from: weights, count: max(1, layers * kvHeads * capacity))
        return c
    }

    /// The weights of `layer` and `kvHead`, indexed by row.
    public func weights(layer: Int, kvHead: Int) -> UnsafeMutablePointer<Float> {
        precondition(layer < layers && kvHead < kvHeads)
        return weights + (layer * kvHeads + kvHead) * capacity
    }
}
