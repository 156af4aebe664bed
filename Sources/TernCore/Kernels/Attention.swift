// Causal grouped-query attention of a batch's query rows over what the attention metadata lists for each row's
// sequence and cache group (full attention, or a sliding window).
//
// The work is a list of tasks planned once per forward pass: (item, KV head, up to 16 consecutive query rows),
// each computing all query heads of the KV head's group over those rows in one call of the tiled kernel, so a
// key/value tile is read once for every query row and head that needs it. When a batch has too few tasks to keep
// every thread busy and the context is long (one stream decoding at depth), each task's key range is split
// across threads (flash-decoding) and the parts are merged by their log-sum-exp. Threads claim tasks in order from
// a shared counter, so tasks of unequal cost (the causal triangle's long rows, split parts) spread evenly.
//
// RelayAttention (arXiv 2402.14808): decoding sequences whose block tables start with the same physical blocks (a
// shared system prompt) form a relay group. Per KV head, one pass of the tiled kernel computes the attention of
// every member's queries over the shared prefix — the prefix KV is read once per step, not once per sequence —
// and hands each query's running softmax state (max, sum, unnormalised output) to one pass per member over its own
// positions, which continues from it. The prefix ends on a 16-position tile boundary, so the member computes
// exactly what one pass over all its keys would, bit for bit: a relay group changes no output (a merge by
// log-sum-exp would round differently, and a quantized model's 8-bit activations can carry that to another token).
//
// Score sinks need each position's final weight, which online softmax only knows at the end: when a sink is
// attached, that item's rows go through tern_attn_rows (two passes), which adds every row's weights as it goes.
//
// Positions here are what the kernels compare: a memory that evicted rows numbers them in storage order, and its
// queries sit at their position minus the positions it dropped (`attentionPosition`); RoPE used the real one.

import CKernels
import Foundation
import Synchronization

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
    /// The relay group this task belongs to, or -1.
    var relay: Int = -1
    /// A relay group's shared-prefix pass over members [row0, row0 + rows) of its gathered order.
    var shared = false
    /// A relay member's own pass: its place in the gathered order (where the shared pass left its state).
    var gathered = -1
}

/// Decoding sequences that share their first `prefix` positions in the same physical blocks.
struct RelayGroup {
    /// Each member's batch row, and its item.
    var rows: [Int]
    var items: [Int]
    var prefix: Int
    /// Where the group's members start in the gathered query order.
    var gathered: Int
}

/// What the attention of the last forward pass did (for metrics).
public struct AttentionStats: Sendable {
    public var relayGroups = 0
    /// Prefix positions the relay passes read (once per group).
    public var relayPrefixTokensRead = 0
    /// Prefix positions the members would have read on their own.
    public var relayPrefixTokensPerSequence = 0
    public init() {}
}

/// Tasks of one forward pass, reused across passes.
struct AttentionPlan {
    var tasks: [AttentionTask] = []
    /// Split tasks' families: (first task index, part count).
    var families: [(first: Int, count: Int)] = []
    var relayGroups: [RelayGroup] = []
    var stats = AttentionStats()
    static let rowTile = 16
    /// Relay members' own passes, which start from the shared passes' states (run after `tasks`).
    var relayOwnTasks: [AttentionTask] = []
    /// Shortest shared prefix worth a relay pass.
    static let relayMinimumPrefix = 32
    /// The kernel's key tile: a relay prefix ends on a multiple of it.
    static let keyTile = 16
    /// Split a task's keys only from this context length, and into parts of at least this many keys.
    static let minimumSplitKeys = 512, minimumPartKeys = 128

    /// Plans the tasks of a batch whose items' rows are contiguous (`lastRowOfItem` ascending).
    mutating func plan(items: Int, lastRowOfItem: [Int], rowPosition: [Int], kvHeads: Int, threads: Int, maxParts: Int,
                       memories: [KVMemory], sinks: [AttentionScoreSink?], relay: Bool) {
        tasks.removeAll(keepingCapacity: true)
        families.removeAll(keepingCapacity: true)
        relayGroups.removeAll(keepingCapacity: true)
        relayOwnTasks.removeAll(keepingCapacity: true)
        stats = AttentionStats()
        var relayOf = [Int](repeating: -1, count: items)
        if relay && items >= 2 { findRelayGroups(items: items, lastRowOfItem: lastRowOfItem, rowPosition: rowPosition,
                                                 memories: memories, sinks: sinks, relayOf: &relayOf) }
        // Shared passes are the heavy tasks: cut each group's members into enough tiles that every thread gets
        // an even share of them (each tile reads the prefix once).
        let tilesPerHead = max(1, (2 * threads + kvHeads - 1) / kvHeads)
        for (g, group) in relayGroups.enumerated() {
            let tile = min(Self.rowTile, max(1, (group.rows.count + tilesPerHead - 1) / tilesPerHead))
            var k = 0
            while k < group.rows.count {
                let n = min(tile, group.rows.count - k)
                for h in 0..<kvHeads {
                    tasks.append(AttentionTask(item: group.items[k], kvHead: h, row0: group.gathered + k, rows: n, keyLow: 0,
                                               keyHigh: group.prefix, part: -1, relay: g, shared: true))
                }
                k += n
            }
            for (k, (r, item)) in zip(group.rows, group.items).enumerated() {
                for h in 0..<kvHeads {
                    relayOwnTasks.append(AttentionTask(item: item, kvHead: h, row0: r, rows: 1, keyLow: group.prefix,
                                                       keyHigh: rowPosition[r] + 1, part: -1, relay: g,
                                                       gathered: group.gathered + k))
                }
            }
        }
        var row0 = 0
        for item in 0..<items {
            let end = lastRowOfItem[item] + 1
            if relayOf[item] >= 0 { row0 = end; continue }
            var r = row0
            while r < end {
                // An item with a score sink is one task per KV head: its rows add to the same sink row.
                let n = sinks[item] != nil ? end - r : min(Self.rowTile, end - r)
                for h in 0..<kvHeads {
                    tasks.append(AttentionTask(item: item, kvHead: h, row0: r, rows: n, keyLow: 0,
                                               keyHigh: rowPosition[r + n - 1] + 1, part: -1))
                }
                r += n
            }
            row0 = end
        }
        // Flash-decoding: tasks much larger than the rest (one stream decoding at depth, or a prefill chunk deep in
        // a long prompt beside short decodes) would leave threads idle; split their keys into parts of about half a
        // thread's share of the work. (Items with a score sink run whole: their kernel adds each position's final
        // weight; relay passes have their own split.)
        guard relayGroups.isEmpty, !sinks.contains(where: { $0 != nil }), threads > 1 else { return }
        let work = tasks.map { $0.rows * ($0.keyHigh - $0.keyLow) }
        let target = max(1, work.reduce(0, +) / (2 * threads))
        let parts = zip(tasks, work).map { t, w in
            w <= target || t.keyHigh < Self.minimumSplitKeys ? 1 : min((w + target - 1) / target, t.keyHigh / Self.minimumPartKeys)
        }
        guard parts.contains(where: { $0 > 1 }), parts.filter({ $0 > 1 }).reduce(0, +) <= maxParts else { return }
        let whole = tasks
        tasks.removeAll(keepingCapacity: true)
        var slot = 0
        for (t, n) in zip(whole, parts) {
            guard n > 1 else { tasks.append(t); continue }
            families.append((tasks.count, n))
            for k in 0..<n {
                var p = t
                p.keyLow = t.keyHigh * k / n
                p.keyHigh = t.keyHigh * (k + 1) / n
                p.part = slot
                slot += 1
                tasks.append(p)
            }
        }
    }
}

extension AttentionPlan {
    /// Groups decoding items (one row, no sink, paged memory with a single cache group) by their first physical
    /// block, and keeps groups of two or more whose common prefix is long enough.
    private mutating func findRelayGroups(items: Int, lastRowOfItem: [Int], rowPosition: [Int], memories: [KVMemory],
                                          sinks: [AttentionScoreSink?], relayOf: inout [Int]) {
        var byFirstBlock: [Int32: [Int]] = [:]
        var row0 = 0
        for item in 0..<items {
            let end = lastRowOfItem[item] + 1
            defer { row0 = end }
            guard end - row0 == 1, sinks[item] == nil, let paged = memories[item] as? PagedKVMemory,
                  paged.tables.count == 1, let first = paged.tables[0].blocks.first, first != KVBlockPool.nullBlock else { continue }
            byFirstBlock[first, default: []].append(item)
        }
        var gathered = 0
        for (_, members) in byFirstBlock where members.count >= 2 {
            let lead = (memories[members[0]] as! PagedKVMemory).tables[0].blocks
            var common = lead.count
            var lowest = Int.max
            for item in members {
                let b = (memories[item] as! PagedKVMemory).tables[0].blocks
                var k = 0
                while k < min(common, b.count) && b[k] == lead[k] { k += 1 }
                common = k
                lowest = min(lowest, rowPosition[lastRowOfItem[item]])
            }
            let bs = (memories[members[0]] as! PagedKVMemory).blockSize
            // Every member must see the whole prefix (it lies before each member's own query position), and it ends
            // on a key tile so the members' own passes continue the shared one exactly.
            let prefix = min(common * bs, lowest) / Self.keyTile * Self.keyTile
            guard prefix >= Self.relayMinimumPrefix else { continue }
            let g = relayGroups.count
            for item in members { relayOf[item] = g }
            relayGroups.append(RelayGroup(rows: members.map { lastRowOfItem[$0] }, items: members, prefix: prefix, gathered: gathered))
            gathered += members.count
            stats.relayGroups += 1
            stats.relayPrefixTokensRead += prefix
            stats.relayPrefixTokensPerSequence += prefix * members.count
        }
    }
}

enum Attention {
    static func causal(queries q: UnsafePointer<Float>, rows m: Int, layer: Int, metadata: AttentionMetadata,
                       memories: [KVMemory], headCount: Int, kvHeadCount: Int, headDim hd: Int, scale: Float,
                       output out: UnsafeMutablePointer<Float>, workspace ws: LlamaWorkspace) {
        let group = headCount / kvHeadCount
        let qDim = headCount * hd
        let cacheGroup = metadata.layout.groupOfLayer[layer]
        let window = metadata.layout.groups[cacheGroup].window ?? 0
        let tasks = ws.attentionPlan.tasks
        let partStride = AttentionPlan.rowTile * group * hd
        let relayGroups = ws.attentionPlan.relayGroups
        // Relay groups' queries, gathered member by member so a shared pass reads them with one row stride.
        for g in relayGroups {
            for (k, r) in g.rows.enumerated() { (ws.relayQ + (g.gathered + k) * qDim).update(from: q + r * qDim, count: qDim) }
        }
        metadata.segments.withUnsafeBufferPointer { segments in
            let segs = segments.baseAddress
            func runAll(_ tasks: [AttentionTask]) {
                // Threads claim tasks in order from one counter: tasks differ in cost (depth, split parts, relay
                // passes), and a fixed share per thread left one waiting at the end of the layer.
                let next = Atomic<Int>(0)
                func claimTasks(_ tid: Int) {
                    let work = ws.attentionWork + tid * ws.attentionWorkStride
                    let lse = ws.lse + tid * ws.lseStride
                    while true {
                        let t = next.wrappingAdd(1, ordering: .relaxed).oldValue
                        if t >= tasks.count { break }
                        let task = tasks[t]
                        let memory = memories[task.item]
                        let kvType = memory.storage.kernelType, sliceOffset = memory.kvSliceOffset(task.kvHead * hd)
                        let range = metadata.range(item: task.item, group: cacheGroup)
                        let qBase = q + task.row0 * qDim + task.kvHead * group * hd
                        let rowBytes = memory.kvRowStride
                        if metadata.sinks[task.item] != nil {
                            rowsWithSink(task: task, q: qBase, qDim: qDim, group: group, hd: hd, scale: scale, window: window,
                                         kvType: kvType, sliceOffset: sliceOffset, rowBytes: rowBytes, segs: segs, range: range,
                                         layer: layer, memory: memory, metadata: metadata, out: out, ws: ws, tid: tid, lse: lse)
                            continue
                        }
                        if task.relay >= 0 {
                            relayTask(task, q: q, qDim: qDim, group: group, hd: hd, scale: scale, kvType: kvType,
                                      sliceOffset: sliceOffset, rowBytes: rowBytes, segs: segs, range: range,
                                      layerOffset: memory.layerOffset(layer), headCount: headCount, out: out, ws: ws,
                                      work: work, lse: lse, tid: tid)
                            continue
                        }
                        let toPart = task.part >= 0
                        let o = toPart ? ws.partials + task.part * partStride : out + task.row0 * qDim + task.kvHead * group * hd
                        tern_attn_tiled(kvType, Int64(hd), scale, qBase, Int64(task.rows), Int64(group), qDim,
                                        Int64(ws.attentionPosition[task.row0]), Int64(window), segs.map { $0 + range.lowerBound },
                                        Int64(range.count), memory.layerOffset(layer), rowBytes, sliceOffset,
                                        Int64(task.keyLow), Int64(task.keyHigh), work, o, toPart ? group * hd : qDim,
                                        toPart ? ws.partialLse + task.part * AttentionPlan.rowTile * group : lse)
                    }
                }
                // One task (one sequence decoding in a short context) is not worth waking the other threads for.
                if tasks.count > 1 { ws.pool.run(claimTasks) } else { claimTasks(0) }
            }
            runAll(tasks)
            // Relay members' own positions continue from the shared passes' states, so they run after them.
            let own = ws.attentionPlan.relayOwnTasks
            if !own.isEmpty { runAll(own) }
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

    /// One pass of a relay group: the shared prefix for a tile of members (keys [0, prefix)), which leaves each
    /// query's softmax state in `relayState`, or one member's own positions (keys [prefix, position]), which starts
    /// from that state and writes the finished output.
    private static func relayTask(_ task: AttentionTask, q: UnsafePointer<Float>, qDim: Int, group: Int,
                                  hd: Int, scale: Float, kvType: Int32, sliceOffset: Int, rowBytes: Int,
                                  segs: UnsafePointer<tern_kv_segment>?, range: Range<Int>, layerOffset: Int,
                                  headCount: Int, out: UnsafeMutablePointer<Float>, ws: LlamaWorkspace,
                                  work: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>, tid: Int) {
        let head0 = task.kvHead * group
        let stateSize = hd + 2
        if task.shared {
            // No causal limit inside the prefix: every member's position lies after it.
            let scratch = ws.relayStateScratch + tid * ws.relayStateScratchStride
            tern_attn_tiled_state(kvType, Int64(hd), scale, ws.relayQ + task.row0 * qDim + head0 * hd, Int64(task.rows), Int64(group),
                                  qDim, 1 << 40, 0, segs.map { $0 + range.lowerBound }, Int64(range.count), layerOffset, rowBytes,
                                  sliceOffset, 0, Int64(task.keyHigh), work, nil, 0, nil, nil, scratch)
            for r in 0..<task.rows {
                (ws.relayState + ((task.row0 + r) * headCount + head0) * stateSize)
                    .update(from: scratch + r * group * stateSize, count: group * stateSize)
            }
        } else {
            tern_attn_tiled_state(kvType, Int64(hd), scale, q + task.row0 * qDim + head0 * hd, 1, Int64(group), qDim,
                                  Int64(ws.attentionPosition[task.row0]), 0, segs.map { $0 + range.lowerBound }, Int64(range.count),
                                  layerOffset, rowBytes, sliceOffset, Int64(task.keyLow), Int64(task.keyHigh), work,
                                  out + task.row0 * qDim + head0 * hd, qDim, lse,
                                  ws.relayState + (task.gathered * headCount + head0) * stateSize, nil)
        }
    }

    /// The two-pass kernel, row by row, adding every row's weights to the item's sink.
    private static func rowsWithSink(task: AttentionTask, q: UnsafePointer<Float>, qDim: Int, group: Int, hd: Int,
                                     scale: Float, window: Int, kvType: Int32, sliceOffset: Int, rowBytes: Int,
                                     segs: UnsafePointer<tern_kv_segment>?, range: Range<Int>, layer: Int,
                                     memory: KVMemory, metadata: AttentionMetadata, out: UnsafeMutablePointer<Float>,
                                     ws: LlamaWorkspace, tid: Int, lse: UnsafeMutablePointer<Float>) {
        let scores = ws.scores + tid * ws.scoreStride
        for r in task.row0..<(task.row0 + task.rows) {
            let position = ws.attentionPosition[r]
            let first = window > 0 ? max(0, position - window + 1) : 0
            precondition(position + 1 - first <= ws.scoreStride, "context longer than the workspace's score buffer")
            let sink = metadata.sinks[task.item]?.weights(layer: layer, kvHead: task.kvHead)
            precondition(metadata.sinks[task.item].map { position < $0.capacity } ?? true, "a score sink smaller than the rows it scores")
            tern_attn_rows(kvType, Int64(hd), scale, q + (r - task.row0) * qDim, Int64(group), hd,
                           segs.map { $0 + range.lowerBound }, Int64(range.count), memory.layerOffset(layer), rowBytes,
                           sliceOffset, Int64(first), Int64(position + 1), scores,
                           out + r * qDim + task.kvHead * group * hd, hd, lse, sink)
        }
    }
}
