// Cache groups: a layout that mixes full-attention and sliding-window layers, cut to one block size; a window
// group hands its old blocks back while a full group keeps them; what each group lists for attention equals a
// dense attention over exactly the positions the group must keep; prefix hits and forks across groups; and
// every block comes back.
import CKernels
import Foundation
import XCTest
@testable import TernCore

final class CacheGroupTests: XCTestCase {
    // Layers 0 and 3 attend fully; 1, 2, 4, 5 over the last 8 positions.
    let specs = [CacheGroupSpec(kind: .fullAttention, layers: [0, 3]),
                 CacheGroupSpec(kind: .slidingWindow(8), layers: [1, 2, 4, 5])]

    func testLayoutCutsGroupsToOneBlockSize() {
        let layout = KVCacheLayout(specs: specs, layerCount: 6)
        XCTAssertEqual(layout.layersPerBlock, 2)
        XCTAssertEqual(layout.groups.map(\.layers), [[0, 3], [1, 2], [4, 5]])
        XCTAssertEqual(layout.groups.map(\.window), [nil, 8, 8])
        XCTAssertEqual(layout.groupOfLayer, [0, 1, 1, 0, 2, 2])
        XCTAssertEqual(layout.slotOfLayer, [0, 0, 1, 1, 0, 1])
        XCTAssertEqual(KVCacheLayout.fullAttention(layers: 30).groups.count, 1)
    }

    func testWindowGroupReleasesBlocksAndReadsOnlyItsWindow() throws {
        let layout = KVCacheLayout(specs: specs, layerCount: 6)
        let width = 16, bs = 4
        let pool = try KVBlockPool(layers: 2, rowWidth: width, blockSize: bs, storage: .f32, bytes: 1 << 20)
        let memory = PagedKVMemory(pool: pool, capacity: 256, layout: layout)
        var rng = AttentionKernelTests.Random(state: 5)
        var keys: [[[Float]]] = Array(repeating: [], count: 6)   // [layer][position][width]
        var values: [[[Float]]] = Array(repeating: [], count: 6)
        var position = 0
        for chunk in [3, 1, 6, 1, 1, 9, 1, 4] {
            try memory.reserve(chunk)
            for p in position..<(position + chunk) {
                for l in 0..<6 {
                    let k = rng.array(width), v = rng.array(width)
                    keys[l].append(k)
                    values[l].append(v)
                    memory.store(layer: l, position: p, key: k, value: v)
                }
            }
            memory.commit(chunk)
            position += chunk
            memory.appendTokens((0..<chunk).map { Int32($0) })
            XCTAssertEqual(memory.count, position)

            // The full group holds every block; each window group only blocks reaching the next query's window.
            let full = (position + bs - 1) / bs
            let firstNeeded = max(0, position - 8 + 1)
            XCTAssertEqual(memory.tables[0].blocks.filter { $0 != KVBlockPool.nullBlock }.count, full)
            for g in [1, 2] {
                let held = memory.tables[g].blocks.filter { $0 != KVBlockPool.nullBlock }.count
                XCTAssertEqual(held, full - firstNeeded / bs, "group \(g) at \(position)")
                XCTAssertEqual(memory.storedRows(group: g), position - (firstNeeded / bs) * bs)
            }
            XCTAssertEqual(pool.usedBlocks, full + 2 * (full - firstNeeded / bs))
        }

        // Attention of a query at the last position, per layer, through the listed segments, equals a dense
        // softmax over exactly the positions the layer must see.
        let p = position - 1
        var segments: [tern_kv_segment] = []
        let hd = width
        for l in 0..<6 {
            let g = layout.groupOfLayer[l]
            segments.removeAll()
            memory.appendSegments(group: g, below: position, to: &segments)
            let lo = layout.groups[g].window.map { max(0, p - $0 + 1) } ?? 0
            let q = rng.array(hd)
            var out = [Float](repeating: 0, count: hd), lse: Float = 0
            var scratch = [Float](repeating: 0, count: 256)
            tern_attn_rows(Int32(TERN_F32), Int64(hd), 0.25, q, 1, hd, segments, Int64(segments.count), memory.layerOffset(l),
                           memory.kvRowStride, memory.kvSliceOffset(0), Int64(lo), Int64(p + 1), &scratch, &out, hd, &lse, nil)
            var s = (lo...p).map { j in Double(zip(q, keys[l][j]).map { Double($0) * Double($1) }.reduce(0, +)) * 0.25 }
            let mx = s.max()!
            s = s.map { exp($0 - mx) }
            let sum = s.reduce(0, +)
            for d in 0..<hd {
                let want = (lo...p).enumerated().map { s[$0.offset] / sum * Double(values[l][$0.element][d]) }.reduce(0, +)
                XCTAssertEqual(Double(out[d]), want, accuracy: 1e-5, "layer \(l)")
            }
            XCTAssertEqual(Double(lse), mx + log(sum), accuracy: 1e-4)
        }
        // A window group cannot roll back behind what it released; a full rollback inside the window can.
        XCTAssertFalse(memory.rollback(to: 2))
        XCTAssertTrue(memory.rollback(to: position - 1))
        memory.releaseAll()
        XCTAssertNil(pool.checkInvariants())
        XCTAssertEqual(pool.availableBlocks, pool.blockCount)
    }

    func testPrefixHitsAndForksAcrossGroups() throws {
        let layout = KVCacheLayout(specs: specs, layerCount: 6)
        let pool = try KVBlockPool(layers: 2, rowWidth: 8, blockSize: 4, storage: .f16, bytes: 1 << 20)
        let prompt = (0..<30).map { Int32($0 * 7 % 50) }
        let zeros = [Float](repeating: 0.5, count: 8)
        let a = PagedKVMemory(pool: pool, capacity: 64, layout: layout)
        try a.reserve(prompt.count)
        for p in 0..<prompt.count { for l in 0..<6 { a.store(layer: l, position: p, key: zeros, value: zeros) } }
        a.commit(prompt.count)
        a.appendTokens(prompt)
        // A second request with the same prompt finds 7 full blocks (28 tokens); its window groups take only the
        // blocks the window still reads at the cut, older entries stay null.
        let b = PagedKVMemory(pool: pool, capacity: 64, layout: layout)
        let cached = b.attachCachedPrefix(prompt, limit: prompt.count - 1)
        XCTAssertEqual(cached, 28)
        XCTAssertEqual(b.tables[0].blocks.count, 7)
        XCTAssertFalse(b.tables[0].blocks.contains(KVBlockPool.nullBlock))
        for g in [1, 2] {
            XCTAssertEqual(b.tables[g].blocks.count, 7)
            XCTAssertEqual(b.tables[g].blocks.prefix(5).allSatisfy { $0 == KVBlockPool.nullBlock }, true)
            XCTAssertEqual(b.tables[g].blocks.suffix(2).contains(KVBlockPool.nullBlock), false)
        }
        // The shared blocks are the same physical blocks as a's.
        XCTAssertEqual(Array(b.tables[0].blocks), Array(a.tables[0].blocks.prefix(7)))
        // A fork shares everything and, in every group, copies the partly filled last block before writing.
        let f = a.fork()
        try f.reserve(1)
        for l in 0..<6 { f.store(layer: l, position: 30, key: zeros, value: zeros) }
        f.commit(1)
        for g in 0..<3 {
            XCTAssertNotEqual(f.tables[g].blocks.last, a.tables[g].blocks.last, "group \(g)")
            XCTAssertEqual(pool.referenceCount(a.tables[g].blocks.last!), 1)
        }
        for m in [a, b, f] { m.releaseAll() }
        XCTAssertNil(pool.checkInvariants())
        XCTAssertEqual(pool.availableBlocks, pool.blockCount)
    }
}
