// How a model's layers keep their past, and how the cache manager lays that out in blocks.
//
// A model declares cache groups (vLLM's kv_cache_interface): layers that attend over every past position, layers
// that attend over a sliding window of the last w positions, and layers whose past is a fixed-size recurrent
// state. One block pool serves every attention group, so a block must be the same size whatever group holds it:
// groups are cut into pieces with the same number of layers (the greatest common divisor of the group sizes),
// and a block holds `blockSize` positions of the layers of one piece. Each piece has its own block table per
// sequence, so a window group can hand back blocks that slid out of its window while a full group keeps them.

public enum CacheGroupKind: Equatable, Sendable {
    /// Every past position stays readable.
    case fullAttention
    /// Only the last `window` positions (the query's own included) are read; older blocks are released.
    case slidingWindow(Int)
    /// A fixed-size per-sequence state (Mamba): no KV blocks.
    case recurrentState
}

public struct CacheGroupSpec: Equatable, Sendable {
    public var kind: CacheGroupKind
    /// Model layer indices in this group, ascending.
    public var layers: [Int]

    public init(kind: CacheGroupKind, layers: [Int]) {
        self.kind = kind
        self.layers = layers
    }

    /// The window of a sliding-window group, nil for full attention.
    public var window: Int? {
        if case .slidingWindow(let w) = kind { return w }
        return nil
    }
}

/// The attention groups of a model cut to one block size. Layer `l` is stored in group `groupOfLayer[l]` at
/// slot `slotOfLayer[l]` of that group's blocks.
public struct KVCacheLayout: Equatable, Sendable {
    public let groups: [CacheGroupSpec]
    /// Layers every block holds.
    public let layersPerBlock: Int
    public let groupOfLayer: [Int]
    public let slotOfLayer: [Int]

    /// Lays out the attention groups among `specs` (recurrent groups take no blocks). Every layer below
    /// `layerCount` must belong to exactly one attention group.
    public init(specs: [CacheGroupSpec], layerCount: Int) {
        let attention = specs.filter { $0.kind != .recurrentState && !$0.layers.isEmpty }
        precondition(!attention.isEmpty, "a KV cache layout needs at least one attention group")
        func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
        let size = attention.map(\.layers.count).reduce(0, gcd)
        var groups: [CacheGroupSpec] = []
        var groupOf = [Int](repeating: -1, count: layerCount)
        var slotOf = [Int](repeating: -1, count: layerCount)
        for spec in attention {
            var start = 0
            while start < spec.layers.count {
                let piece = Array(spec.layers[start..<(start + size)])
                for (slot, l) in piece.enumerated() {
                    precondition(l >= 0 && l < layerCount && groupOf[l] == -1, "layer \(l) is in no group or in two")
                    groupOf[l] = groups.count
                    slotOf[l] = slot
                }
                groups.append(CacheGroupSpec(kind: spec.kind, layers: piece))
                start += size
            }
        }
        precondition(!groupOf.contains(-1), "every layer must belong to an attention group")
        self.groups = groups
        layersPerBlock = size
        groupOfLayer = groupOf
        slotOfLayer = slotOf
    }

    /// Every layer attends over the whole past: one group.
    public static func fullAttention(layers: Int) -> KVCacheLayout {
        KVCacheLayout(specs: [CacheGroupSpec(kind: .fullAttention, layers: Array(0..<layers))], layerCount: layers)
    }

    public var layerCount: Int { groupOfLayer.count }
}
