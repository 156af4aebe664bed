// Swift side of the matrix products: picks the C kernel for a weight's type and splits output rows between the
// worker pool's threads. Activations for quantized weights are quantized once per input and reused by every
// matrix that reads the same input (Q/K/V, gate/up).

import CKernels

/// Scratch for activations quantized to 8-bit blocks; sized for the largest input a model feeds its matrices.
/// The caller quantizes an input once and hands the same blocks to every matrix that reads it.
public final class QuantizedActivations {
    // Owned by the engine thread's workspace; filled before a pool run that only reads it.
    let blocks: UnsafeMutablePointer<tern_q8_block>
    let capacityBlocks: Int
    private(set) var rows = 0
    private(set) var columns = 0

    init(maxRows: Int, maxColumns: Int) {
        capacityBlocks = maxRows * ((maxColumns + 31) / 32)
        blocks = .allocate(capacity: max(1, capacityBlocks))
    }

    deinit { blocks.deallocate() }

    /// Quantizes `rows` × `columns` floats (columns a multiple of 32).
    func quantize(_ x: UnsafePointer<Float>, rows: Int, columns: Int, pool: WorkerPool) {
        // Only quantized weights read the blocks, and those always have rows of whole 32-blocks.
        guard columns % 32 == 0 else { self.rows = 0; self.columns = 0; return }
        precondition(rows * (columns / 32) <= capacityBlocks)
        let perRow = columns / 32
        if rows < 8 {
            for r in 0..<rows { tern_quantize_activations(x + r * columns, blocks + r * perRow, Int64(columns)) }
        } else {
            pool.parallelFor(rows) { range in
                for r in range {
                    tern_quantize_activations(x + r * columns, self.blocks + r * perRow, Int64(columns))
                }
            }
        }
        self.rows = rows
        self.columns = columns
    }
}

public enum Linear {
    /// out[i, r] = Σ_c W[r, c] · x[i, c] for `rows` activation rows, with the output row stride = W's row count.
    /// For quantized weights, `qa` must already hold `x` quantized (see QuantizedActivations.quantize).
    public static func apply(_ w: WeightTensor, input x: UnsafePointer<Float>, rows m: Int,
                             quantized qa: QuantizedActivations, output out: UnsafeMutablePointer<Float>,
                             pool: WorkerPool) {
        let n = w.columns
        let outRows = w.rows
        let type = Int32(w.type.rawValue)
        let rowBytes = w.rowBytes
        // Small matrices are not worth waking the other threads for.
        let granule = 16
        if w.type.isFloat {
            pool.parallelFor(outRows, granule: granule) { r in
                tern_matmul_f(type, w.data, rowBytes, Int64(n), x, Int64(m), out, Int64(outRows), Int64(r.lowerBound), Int64(r.upperBound))
            }
        } else {
            precondition(qa.rows == m && qa.columns == n, "activations were not quantized for \(w.name)")
            let a = UnsafePointer(qa.blocks)
            pool.parallelFor(outRows, granule: granule) { r in
                quantizedProduct(w, a, m: m, out: out, ldo: outRows, r.lowerBound, r.upperBound)
            }
        }
    }
}

extension Linear {
    /// Rows [lo, hi) of a quantized product, from the packed layout when the range starts on a panel.
    @inline(__always)
    static func quantizedProduct(_ w: WeightTensor, _ a: UnsafePointer<tern_q8_block>, m: Int,
                                 out: UnsafeMutablePointer<Float>, ldo: Int, _ lo: Int, _ hi: Int) {
        if let s = w.sparse { s.multiply(a, m: m, out: out, ldo: ldo, lo, hi); return }
        let type = Int32(w.type.rawValue)
        if let p = w.packed, lo % Int(TERN_PACK_ROWS) == 0, hi % Int(TERN_PACK_ROWS) == 0 || hi == w.rows {
            tern_matmul_packed(type, p, Int64(w.rows), Int64(w.columns), a, Int64(m), out, Int64(ldo), Int64(lo), Int64(hi))
        } else {
            tern_matmul_q(type, w.data, w.rowBytes, Int64(w.columns), a, Int64(m), out, Int64(ldo), Int64(lo), Int64(hi))
        }
    }

    /// Several matrices reading the same input (Q/K/V, gate/up) in one pass of the pool: their rows are laid
    /// end to end and split evenly between threads, so a decode step wakes the threads once instead of once
    /// per matrix.
    public static func applyMany(_ targets: [(weight: WeightTensor, output: UnsafeMutablePointer<Float>)],
                                 input x: UnsafePointer<Float>, rows m: Int, quantized qa: QuantizedActivations,
                                 pool: WorkerPool) {
        var starts: [Int] = []
        var total = 0
        for t in targets {
            starts.append(total)
            total += t.weight.rows
            if !t.weight.type.isFloat {
                precondition(qa.rows == m && qa.columns == t.weight.columns, "activations were not quantized for \(t.weight.name)")
            }
        }
        let a = UnsafePointer(qa.blocks)
        pool.parallelFor(total, granule: 16) { range in
            for (i, t) in targets.enumerated() {
                let w = t.weight
                let lo = max(range.lowerBound, starts[i]) - starts[i]
                let hi = min(range.upperBound, starts[i] + w.rows) - starts[i]
                guard lo < hi else { continue }
                let type = Int32(w.type.rawValue)
                if w.type.isFloat {
                    tern_matmul_f(type, w.data, w.rowBytes, Int64(w.columns), x, Int64(m), t.output, Int64(w.rows), Int64(lo), Int64(hi))
                } else {
                    quantizedProduct(w, a, m: m, out: t.output, ldo: w.rows, lo, hi)
                }
            }
        }
    }
}

public enum VectorOps {
    /// y = x / sqrt(mean(x²) + eps) ⊙ weight, for `rows` rows of `n`.
    @inlinable
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, eps: Float,
                               rows: Int, n: Int, output y: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let xr = x + r * n
            let yr = y + r * n
            var sum: Float = 0
            for i in 0..<n { sum += xr[i] * xr[i] }
            let scale = 1 / (sum / Float(n) + eps).squareRoot()
            for i in 0..<n { yr[i] = xr[i] * scale * weight[i] }
        }
    }

    /// gate = silu(gate) ⊙ up, in place (CKernels' tern_swiglu: a vectorised exp on AVX2).
    @inlinable
    public static func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        tern_swiglu(gate, up, Int64(count))
    }

    /// x *= s, in place.
    @inlinable
    public static func scale(_ x: UnsafeMutablePointer<Float>, _ s: Float, count: Int) {
        for i in 0..<count { x[i] *= s }
    }

    @inlinable
    public static func add(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { x[i] += y[i] }
    }
}

#if canImport(Glibc)
import Glibc
#endif
