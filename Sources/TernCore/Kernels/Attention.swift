// Causal grouped-query attention over each sequence's KV memory, read segment by segment (so a paged memory
// serves as well as a contiguous one). Rows of a batch may belong to different sequences; work is split across
// the pool by (batch row, query head).

import CKernels
import Foundation

enum Attention {
    static func causal(queries q: UnsafePointer<Float>, rows m: Int, layer: Int, memories: [KVMemory],
                       headCount: Int, kvHeadCount: Int, headDim hd: Int,
                       output out: UnsafeMutablePointer<Float>, workspace ws: LlamaWorkspace) {
        let group = headCount / kvHeadCount
        let scale = 1 / Float(hd).squareRoot()
        let qDim = headCount * hd
        let tasks = m * headCount
        let threads = ws.pool.threadCount
        ws.pool.run { tid in
            let lo = tasks * tid / threads, hi = tasks * (tid + 1) / threads
            guard lo < hi else { return }
            let scores = ws.scores + tid * ws.scoreStride
            for task in lo..<hi {
                let r = task / headCount, h = task % headCount
                let g = h / group
                let memory = memories[ws.rowItem[r]]
                let rowWidth = memory.rowWidth
                let positions = ws.rowPosition[r] + 1
                precondition(positions <= ws.scoreStride, "context longer than the workspace's score buffer")
                let qv = q + r * qDim + h * hd
                let storage = memory.storage
                let rowBytes = storage.rowBytes(rowWidth)
                // q8_0 rows: this head's slice starts at block g·hd/32 and is dequantized before use.
                let sliceOffset = g * hd / 32 * 34
                let slice = ws.headScratch + tid * hd
                var maxScore = -Float.infinity
                memory.forEachSegment(layer: layer, positions: positions) { first, count, keys, _ in
                    if storage == .q8_0 {
                        for j in 0..<count {
                            tern_dequantize_row(Int32(TERN_Q8_0), keys + j * rowBytes + sliceOffset, slice, Int64(hd))
                            let s = tern_dot_f32(qv, slice, Int64(hd)) * scale
                            scores[first + j] = s
                            if s > maxScore { maxScore = s }
                        }
                    } else if storage == .f16 {
                        let k = keys.assumingMemoryBound(to: UInt16.self) + g * hd
                        for j in 0..<count {
                            let s = tern_dot_f16(k + j * rowWidth, qv, Int64(hd)) * scale
                            scores[first + j] = s
                            if s > maxScore { maxScore = s }
                        }
                    } else {
                        let k = keys.assumingMemoryBound(to: Float.self) + g * hd
                        for j in 0..<count {
                            let s = tern_dot_f32(qv, k + j * rowWidth, Int64(hd)) * scale
                            scores[first + j] = s
                            if s > maxScore { maxScore = s }
                        }
                    }
                }
                var sum: Float = 0
                for j in 0..<positions {
                    let e = expf(scores[j] - maxScore)
                    scores[j] = e
                    sum += e
                }
                let o = out + r * qDim + h * hd
                o.update(repeating: 0, count: hd)
                let inv = 1 / sum
                memory.forEachSegment(layer: layer, positions: positions) { first, count, _, values in
                    if storage == .q8_0 {
                        for j in 0..<count {
                            tern_dequantize_row(Int32(TERN_Q8_0), values + j * rowBytes + sliceOffset, slice, Int64(hd))
                            tern_axpy_f32(scores[first + j] * inv, slice, o, Int64(hd))
                        }
                    } else if storage == .f16 {
                        let v = values.assumingMemoryBound(to: UInt16.self) + g * hd
                        for j in 0..<count { tern_axpy_f16(scores[first + j] * inv, v + j * rowWidth, o, Int64(hd)) }
                    } else {
                        let v = values.assumingMemoryBound(to: Float.self) + g * hd
                        for j in 0..<count { tern_axpy_f32(scores[first + j] * inv, v + j * rowWidth, o, Int64(hd)) }
                    }
                }
            }
        }
    }
}
