// Causal grouped-query attention of a batch's query rows over what the attention metadata lists for each row's
// sequence and cache group (full attention, or a sliding window). The arithmetic is tern_attn_rows in C: scores
// and the weighted value sum over whole segments, whatever the stored element type, with each row's
// log-sum-exp, so partial results over different key sets can be merged exactly.
//
// Work is split across the pool by (row, query head), or by (row, KV head) with the group's query heads in one
// call when there are enough rows to keep every thread busy — and always when a score sink is attached, so that
// one thread owns each sink row.

import CKernels
import Foundation

enum Attention {
    static func causal(queries q: UnsafePointer<Float>, rows m: Int, layer: Int, metadata: AttentionMetadata,
                       memories: [KVMemory], headCount: Int, kvHeadCount: Int, headDim hd: Int,
                       output out: UnsafeMutablePointer<Float>, workspace ws: LlamaWorkspace) {
        let group = headCount / kvHeadCount
        let scale = 1 / Float(hd).squareRoot()
        let qDim = headCount * hd
        let cacheGroup = metadata.layout.groupOfLayer[layer]
        let window = metadata.layout.groups[cacheGroup].window
        let threads = ws.pool.threadCount
        let perKVHead = metadata.hasSinks || m * kvHeadCount >= 4 * threads
        let unit = perKVHead ? group : 1
        let tasksPerRow = headCount / unit
        let tasks = m * tasksPerRow
        metadata.segments.withUnsafeBufferPointer { segments in
            let segs = segments.baseAddress
            ws.pool.run { tid in
                let lo = tasks * tid / threads, hi = tasks * (tid + 1) / threads
                guard lo < hi else { return }
                let scores = ws.scores + tid * ws.scoreStride
                let lse = ws.lse + tid * group
                for task in lo..<hi {
                    let r = task / tasksPerRow, h0 = (task % tasksPerRow) * unit
                    let kvHead = h0 / group
                    let item = ws.rowItem[r]
                    let memory = memories[item]
                    let position = ws.rowPosition[r]
                    let first = window.map { max(0, position - $0 + 1) } ?? 0
                    precondition(position + 1 - first <= ws.scoreStride, "context longer than the workspace's score buffer")
                    let kvType: Int32
                    let sliceOffset: Int
                    switch memory.storage {
                    case .f32: kvType = Int32(TERN_F32); sliceOffset = kvHead * hd * 4
                    case .f16: kvType = Int32(TERN_F16); sliceOffset = kvHead * hd * 2
                    case .q8_0: kvType = Int32(TERN_Q8_0); sliceOffset = kvHead * hd / 32 * 34
                    }
                    var sink: UnsafeMutablePointer<Float>?
                    if let s = metadata.sinks[item], ws.lastRowOfItem[item] == r {
                        sink = s.weights(layer: layer, kvHead: kvHead)
                    }
                    let range = metadata.range(item: item, group: cacheGroup)
                    tern_attn_rows(kvType, Int64(hd), scale, q + r * qDim + h0 * hd, Int64(unit), hd,
                                   segs.map { $0 + range.lowerBound }, Int64(range.count), memory.layerOffset(layer),
                                   memory.storage.rowBytes(memory.rowWidth), sliceOffset,
                                   Int64(first), Int64(position + 1), scores, out + r * qDim + h0 * hd, hd, lse, sink)
                }
            }
        }
    }
}
