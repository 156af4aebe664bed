// Causal grouped-query attention of a batch's query rows over what the attention metadata lists for each row's
// sequence and cache group (full attention, or a sliding window).
//
// The work is a list of tasks planned once per forward pass: (item, KV head, up to 16 consecutive query rows),
// each computing all query heads of the KV head's group over those rows in one call of the tiled kernel, so a
// key/value tile is read once for every query row and head that needs it. When a batch has too few tasks to keep
// every thread busy and the context is long (one stream decoding at depth), each task's key range is split
// across threads (flash-decoding) and the parts are merged by their log-sum-exp. Tasks go to threads round-robin
// so the causal triangle's long rows spread evenly.
//
// Score sinks need each position's final weight, which online softmax only knows at the end: when a sink is
// attached, that item's rows go through tern_attn_rows (two passes), which adds the weights as it goes.

import CKernels
import Foundation

struct AttentionTask {
    var item: Int
    var kvHead: Int
    var row0: Int
    var rows: Int
    /// Key positions this task covers (split tasks cover part of the range).
    var keyLow: Int
    var keyHigh: Int
    /// Index of the partial-result slot of a split task, or -1.
    var part: Int
}

/// Tasks of one forward pass, reused across passes.
struct AttentionPlan {
    var tasks: [AttentionTask] = []
    /// Split tasks' families: (first task index, part count).
    var families: [(first: Int, count: Int)] = []
    static let rowTile = 16

    /// Plans the tasks of a batch whose items' rows are contiguous (`lastRowOfItem` ascending).
    mutating func plan(items: Int, lastRowOfItem: [Int], rowPosition: [Int], kvHeads: Int, threads: Int, maxParts: Int) {
        tasks.removeAll(keepingCapacity: true)
        families.removeAll(keepingCapacity: true)
        var row0 = 0
        for item in 0..<items {
            let end = lastRowOfItem[item] + 1
            var r = row0
            while r < end {
                let n = min(Self.rowTile, end - r)
                for h in 0..<kvHeads {
                    tasks.append(AttentionTask(item: item, kvHead: h, row0: r, rows: n, keyLow: 0,
                                               keyHigh: rowPosition[r + n - 1] + 1, part: -1))
                }
                r += n
            }
            row0 = end
        }
        // Flash-decoding: few tasks over a long context leave threads idle; split each task's keys.
        let longest = tasks.map { $0.keyHigh }.max() ?? 0
        guard threads > 1, tasks.count < 2 * threads, longest >= 512 else { return }
        let parts = threads * ((2 + tasks.count - 1) / tasks.count)
        guard tasks.count * parts <= maxParts else { return }
        let whole = tasks
        tasks.removeAll(keepingCapacity: true)
        var slot = 0
        for t in whole {
            families.append((tasks.count, parts))
            for k in 0..<parts {
                var p = t
                p.keyLow = t.keyHigh * k / parts
                p.keyHigh = t.keyHigh * (k + 1) / parts
                p.part = slot
                slot += 1
                tasks.append(p)
            }
        }
    }
}

enum Attention {
    static func causal(queries q: UnsafePointer<Float>, rows m: Int, layer: Int, metadata: AttentionMetadata,
                       memories: [KVMemory], headCount: Int, kvHeadCount: Int, headDim hd: Int,
                       output out: UnsafeMutablePointer<Float>, workspace ws: LlamaWorkspace) {
        let group = headCount / kvHeadCount
        let scale = 1 / Float(hd).squareRoot()
        let qDim = headCount * hd
        let cacheGroup = metadata.layout.groupOfLayer[layer]
        let window = metadata.layout.groups[cacheGroup].window ?? 0
        let threads = ws.pool.threadCount
        let tasks = ws.attentionPlan.tasks
        let partStride = AttentionPlan.rowTile * group * hd
        metadata.segments.withUnsafeBufferPointer { segments in
            let segs = segments.baseAddress
            ws.pool.run { tid in
                let work = ws.attentionWork + tid * ws.attentionWorkStride
                let lse = ws.lse + tid * ws.lseStride
                var t = tid
                while t < tasks.count {
                    let task = tasks[t]
                    t += threads
                    let memory = memories[task.item]
                    let (kvType, sliceOffset) = kvSlice(memory.storage, kvHead: task.kvHead, hd: hd)
                    let range = metadata.range(item: task.item, group: cacheGroup)
                    let qBase = q + task.row0 * qDim + task.kvHead * group * hd
                    let rowBytes = memory.storage.rowBytes(memory.rowWidth)
                    if metadata.sinks[task.item] != nil {
                        rowsWithSink(task: task, q: qBase, qDim: qDim, group: group, hd: hd, scale: scale, window: window,
                                     kvType: kvType, sliceOffset: sliceOffset, rowBytes: rowBytes, segs: segs, range: range,
                                     layer: layer, memory: memory, metadata: metadata, out: out, ws: ws, tid: tid, lse: lse)
                        continue
                    }
                    let toPart = task.part >= 0
                    let o = toPart ? ws.partials + task.part * partStride : out + task.row0 * qDim + task.kvHead * group * hd
                    tern_attn_tiled(kvType, Int64(hd), scale, qBase, Int64(task.rows), Int64(group), qDim,
                                    Int64(ws.rowPosition[task.row0]), Int64(window), segs.map { $0 + range.lowerBound },
                                    Int64(range.count), memory.layerOffset(layer), rowBytes, sliceOffset,
                                    Int64(task.keyLow), Int64(task.keyHigh), work, o, toPart ? group * hd : qDim,
                                    toPart ? ws.partialLse + task.part * AttentionPlan.rowTile * group : lse)
                }
            }
        }
        // Merge the parts of split tasks into the output.
        for family in ws.attentionPlan.families {
            let first = tasks[family.first]
            let nq = first.rows * group
            let o0 = ws.partials + first.part * partStride
            let l0 = ws.partialLse + first.part * AttentionPlan.rowTile * group
            for k in 1..<family.count {
                let t = tasks[family.first + k]
                let ok = ws.partials + t.part * partStride
                let lk = ws.partialLse + t.part * AttentionPlan.rowTile * group
                for i in 0..<nq { tern_attn_merge(Int64(hd), o0 + i * hd, l0 + i, ok + i * hd, lk[i]) }
            }
            for r in 0..<first.rows {
                (out + (first.row0 + r) * qDim + first.kvHead * group * hd).update(from: o0 + r * group * hd, count: group * hd)
            }
        }
    }

    @inline(__always)
    static func kvSlice(_ storage: KVStorage, kvHead: Int, hd: Int) -> (Int32, Int) {
        switch storage {
        case .f32: return (Int32(TERN_F32), kvHead * hd * 4)
        case .f16: return (Int32(TERN_F16), kvHead * hd * 2)
        case .q8_0: return (Int32(TERN_Q8_0), kvHead * hd / 32 * 34)
        }
    }

    /// The two-pass kernel, row by row, adding the last row's weights to the item's sink.
    private static func rowsWithSink(task: AttentionTask, q: UnsafePointer<Float>, qDim: Int, group: Int, hd: Int,
                                     scale: Float, window: Int, kvType: Int32, sliceOffset: Int, rowBytes: Int,
                                     segs: UnsafePointer<tern_kv_segment>?, range: Range<Int>, layer: Int,
                                     memory: KVMemory, metadata: AttentionMetadata, out: UnsafeMutablePointer<Float>,
                                     ws: LlamaWorkspace, tid: Int, lse: UnsafeMutablePointer<Float>) {
        let scores = ws.scores + tid * ws.scoreStride
        for r in task.row0..<(task.row0 + task.rows) {
            let position = ws.rowPosition[r]
            let first = window > 0 ? max(0, position - window + 1) : 0
            precondition(position + 1 - first <= ws.scoreStride, "context longer than the workspace's score buffer")
            var sink: UnsafeMutablePointer<Float>?
            if let s = metadata.sinks[task.item], ws.lastRowOfItem[task.item] == r {
                sink = s.weights(layer: layer, kvHead: task.kvHead)
            }
            tern_attn_rows(kvType, Int64(hd), scale, q + (r - task.row0) * qDim, Int64(group), hd,
                           segs.map { $0 + range.lowerBound }, Int64(range.count), memory.layerOffset(layer), rowBytes,
                           sliceOffset, Int64(first), Int64(position + 1), scores,
                           out + r * qDim + task.kvHead * group * hd, hd, lse, sink)
        }
    }
}
