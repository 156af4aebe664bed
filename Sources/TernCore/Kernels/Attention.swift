// Causal grouped-query attention over each sequence's KV memory, read segment by segment (so a paged memory
// serves as well as a contiguous one). Rows of a batch may belong to different sequences; work is split across
// the pool by (batch row, query head). Scores and the weighted sum of values run in C over whole segments
// (tern_attn_scores / tern_attn_accumulate), whatever the stored element type.

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
                let positions = ws.rowPosition[r] + 1
                precondition(positions <= ws.scoreStride, "context longer than the workspace's score buffer")
                let storage = memory.storage
                let kvType: Int32
                let sliceOffset: Int
                switch storage {
                case .f32: kvType = Int32(TERN_F32); sliceOffset = g * hd * 4
                case .f16: kvType = Int32(TERN_F16); sliceOffset = g * hd * 2
                case .q8_0: kvType = Int32(TERN_Q8_0); sliceOffset = g * hd / 32 * 34
                }
                let rowBytes = storage.rowBytes(memory.rowWidth)
                let qv = q + r * qDim + h * hd
                var maxScore = -Float.infinity
                memory.forEachSegment(layer: layer, positions: positions) { first, count, keys, _ in
                    let segmentMax = tern_attn_scores(kvType, qv, keys, rowBytes, sliceOffset, Int64(hd), Int64(count), scale, scores + first)
                    maxScore = max(maxScore, segmentMax)
                }
                var sum: Float = 0
                for j in 0..<positions {
                    let e = expf(scores[j] - maxScore)
                    scores[j] = e
                    sum += e
                }
                let o = out + r * qDim + h * hd
                o.update(repeating: 0, count: hd)
                memory.forEachSegment(layer: layer, positions: positions) { first, count, _, values in
                    tern_attn_accumulate(kvType, scores + first, values, rowBytes, sliceOffset, Int64(hd), Int64(count), o)
                }
                let inv = 1 / sum
                for i in 0..<hd { o[i] *= inv }
            }
        }
    }
}
