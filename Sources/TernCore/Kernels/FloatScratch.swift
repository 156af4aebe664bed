// Float buffers of a forward pass's workspace, zeroed once at creation, their pages given back on request
// (`releasePages`), and freed together.
// Owned by the workspace (one thread at a time).

import Foundation

final class FloatScratch {
    private var owned: [(start: UnsafeMutablePointer<Float>, count: Int)] = []

    /// Zeroed floats from calloc: a large buffer comes as fresh zero pages that become resident only when a
    /// pass writes them, so a workspace sized for 256-token prefill chunks costs little while only decoding (or
    /// serving short prompts); filling it with zeros here made all of it resident at once (12 MiB for Gemma 3).
    func make(_ n: Int) -> UnsafeMutablePointer<Float> {
        guard let raw = calloc(max(1, n), MemoryLayout<Float>.stride) else {
            fatalError("out of memory for a \(n)-float workspace buffer")
        }
        let p = raw.bindMemory(to: Float.self, capacity: max(1, n))
        owned.append((p, max(1, n)))
        return p
    }

    /// Gives the whole pages inside every buffer back to the system, so a workspace whose prompt-sized rows sit
    /// idle stops holding them; the next pass that writes a page gets a fresh zero page. Only for buffers whose
    /// contents do not outlive a pass (a workspace's are all scratch).
    func releasePages() {
        for b in owned { WeightTensor.releasePages(b.start, b.count * MemoryLayout<Float>.stride) }
    }

    deinit { for b in owned { free(b.start) } }
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
