// Float buffers of a forward pass's workspace, zeroed once at creation and freed together.
// Owned by the workspace (one thread at a time).

final class FloatScratch {
    private var owned: [UnsafeMutablePointer<Float>] = []

    func make(_ n: Int) -> UnsafeMutablePointer<Float> {
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, n))
        p.initialize(repeating: 0, count: max(1, n))
        owned.append(p)
        return p
    }

    deinit { for b in owned { b.deallocate() } }
}

extension VectorOps {
    /// The hidden-state rows that want logits, contiguous: `x` itself when they are its leading rows in order,
    /// otherwise copied into `spare`.
    static func gatherRows(_ rows: [Int], from x: UnsafeMutablePointer<Float>, width: Int,
                           spare: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        if rows.enumerated().allSatisfy({ $0.offset == $0.element }) { return x }
        for (o, r) in rows.enumerated() { (spare + o * width).update(from: x + r * width, count: width) }
        return spare
    }
}
