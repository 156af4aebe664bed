// tern_attn_rows and tern_attn_merge against attention computed in Double from the decoded rows: several query
// rows per call, visibility windows, gaps between segments, the log-sum-exp that lets partial results over
// disjoint key sets merge exactly, and the score sink. Segmentation must not change a single bit.
import CKernels
import Foundation
import XCTest

final class AttentionRowsTests: XCTestCase {
    typealias Random = AttentionKernelTests.Random

    override func tearDown() {
        tern_force_path(-1)
        super.tearDown()
    }

    /// Reference attention of one query over rows `visible` of `decoded` (positions = row indices + base).
    func reference(_ q: [Float], _ decoded: [[Float]], positions: [Int], lo: Int, hi: Int, scale: Float)
        -> (out: [Double], lse: Double, weights: [Int: Double]) {
        var s: [(Int, Double)] = []
        for (row, p) in positions.enumerated() where p >= lo && p < hi {
            var d = 0.0
            for i in 0..<q.count { d += Double(q[i]) * Double(decoded[row][i]) }
            s.append((row, d * Double(scale)))
        }
        guard let mx = s.map(\.1).max() else { return ([Double](repeating: 0, count: q.count), -.infinity, [:]) }
        let sum = s.reduce(0.0) { $0 + exp($1.1 - mx) }
        var out = [Double](repeating: 0, count: q.count)
        var weights: [Int: Double] = [:]
        for (row, v) in s {
            let w = exp(v - mx) / sum
            weights[positions[row]] = w
            for i in 0..<q.count { out[i] += w * Double(decoded[row][i]) }
        }
        return (out, mx + log(sum), weights)
    }

    /// Segments over `seg`'s rows: pieces of the given lengths, placed at positions with a gap of `gap` between
    /// pieces. Returns the C segments and each row's position.
    func pieces(_ base: UnsafeRawPointer, stride: Int, lengths: [Int], gap: Int) -> ([tern_kv_segment], [Int]) {
        var segs: [tern_kv_segment] = []
        var positions: [Int] = []
        var row = 0, pos = 0
        for n in lengths {
            let p = base + row * stride
            segs.append(tern_kv_segment(keys: p, values: p, first: Int64(pos), count: Int64(n)))
            for k in 0..<n { positions.append(pos + k) }
            row += n
            pos += n + gap
        }
        return (segs, positions)
    }

    func run(_ type: Int32, hd: Int, nq: Int, segs: [tern_kv_segment], stride: Int, offset: Int, lo: Int, hi: Int,
             q: [Float], sink: inout [Float]) -> (out: [Float], lse: [Float]) {
        var out = [Float](repeating: .nan, count: nq * hd)
        var lse = [Float](repeating: .nan, count: nq)
        var scratch = [Float](repeating: 0, count: 4096)
        sink.withUnsafeMutableBufferPointer { sp in
            tern_attn_rows(type, Int64(hd), 1 / Float(hd).squareRoot(), q, Int64(nq), hd, segs, Int64(segs.count), 0,
                           stride, offset, Int64(lo), Int64(hi), &scratch, &out, hd, &lse, sp.count > 0 ? sp.baseAddress : nil)
        }
        return (out, lse)
    }

    func testRowsMatchReferenceWithWindowsAndGaps() {
        var rng = Random(state: 7)
        for path in AttentionKernelTests.paths {
            tern_force_path(path)
            for (name, type) in AttentionKernelTests.types {
                for hd in [64, 128] {
                    let n = 70
                    let seg = AttentionKernelTests.segment(type, hd: hd, n: n, head: 1, rng: &rng)
                    let nq = 3
                    let q = rng.array(nq * hd)
                    seg.bytes.withUnsafeBytes { raw in
                        let (segs, positions) = pieces(raw.baseAddress!, stride: seg.stride, lengths: [16, 16, 5, 33], gap: 3)
                        let last = positions.last! + 1
                        for (lo, hi) in [(0, last), (20, last), (0, 30), (40, 41), (200, 300)] {
                            var sink = [Float](repeating: 0, count: last + 1)
                            let got = run(type, hd: hd, nq: nq, segs: segs, stride: seg.stride, offset: seg.offset,
                                          lo: lo, hi: hi, q: q, sink: &sink)
                            var sinkWant = [Double](repeating: 0, count: last + 1)
                            for i in 0..<nq {
                                let want = reference(Array(q[(i * hd)..<((i + 1) * hd)]), seg.decoded, positions: positions,
                                                     lo: lo, hi: hi, scale: 1 / Float(hd).squareRoot())
                                for (p, w) in want.weights { sinkWant[p] += w }
                                let what = "\(name) hd \(hd) path \(path) [\(lo), \(hi)) query \(i)"
                                if want.lse == -.infinity {
                                    XCTAssertEqual(got.lse[i], -.infinity, what)
                                    XCTAssertTrue(got.out[(i * hd)..<((i + 1) * hd)].allSatisfy { $0 == 0 }, what)
                                    continue
                                }
                                XCTAssertEqual(Double(got.lse[i]), want.lse, accuracy: 1e-4 * max(1, abs(want.lse)), what)
                                for d in 0..<hd {
                                    XCTAssertEqual(Double(got.out[i * hd + d]), want.out[d], accuracy: 2e-5, what)
                                }
                            }
                            for p in 0...last {
                                XCTAssertEqual(Double(sink[p]), sinkWant[p], accuracy: 1e-5, "\(name) sink at \(p)")
                            }
                        }
                    }
                }
            }
        }
    }

    func testSegmentationDoesNotChangeABit() {
        var rng = Random(state: 11)
        for (_, type) in AttentionKernelTests.types {
            let hd = 64, n = 50
            let seg = AttentionKernelTests.segment(type, hd: hd, n: n, head: 2, rng: &rng)
            let q = rng.array(2 * hd)
            var noSink: [Float] = []
            seg.bytes.withUnsafeBytes { raw in
                let whole = pieces(raw.baseAddress!, stride: seg.stride, lengths: [n], gap: 0).0
                let cut = pieces(raw.baseAddress!, stride: seg.stride, lengths: [16, 16, 16, 2], gap: 0).0
                let a = run(type, hd: hd, nq: 2, segs: whole, stride: seg.stride, offset: seg.offset, lo: 3, hi: 47, q: q, sink: &noSink)
                let b = run(type, hd: hd, nq: 2, segs: cut, stride: seg.stride, offset: seg.offset, lo: 3, hi: 47, q: q, sink: &noSink)
                XCTAssertEqual(a.out, b.out)
                XCTAssertEqual(a.lse, b.lse)
            }
        }
    }

    /// Attention over keys A ∪ B equals the LSE merge of attention over A and over B (the RelayAttention and
    /// split-KV identity).
    func testMergeOfDisjointKeySetsEqualsWhole() {
        var rng = Random(state: 3)
        var noSink: [Float] = []
        for (name, type) in AttentionKernelTests.types {
            let hd = 64, n = 90
            let seg = AttentionKernelTests.segment(type, hd: hd, n: n, head: 0, rng: &rng)
            let q = rng.array(hd)
            seg.bytes.withUnsafeBytes { raw in
                let segs = pieces(raw.baseAddress!, stride: seg.stride, lengths: [16, 16, 16, 16, 16, 10], gap: 0).0
                for split in [1, 16, 37, 89] {
                    let whole = run(type, hd: hd, nq: 1, segs: segs, stride: seg.stride, offset: seg.offset, lo: 0, hi: n, q: q, sink: &noSink)
                    var a = run(type, hd: hd, nq: 1, segs: segs, stride: seg.stride, offset: seg.offset, lo: 0, hi: split, q: q, sink: &noSink)
                    let b = run(type, hd: hd, nq: 1, segs: segs, stride: seg.stride, offset: seg.offset, lo: split, hi: n, q: q, sink: &noSink)
                    tern_attn_merge(Int64(hd), &a.out, &a.lse, b.out, b.lse[0])
                    XCTAssertEqual(a.lse[0], whole.lse[0], accuracy: 1e-5, "\(name) split \(split)")
                    for d in 0..<hd { XCTAssertEqual(a.out[d], whole.out[d], accuracy: 2e-6 * max(1, abs(whole.out[d])), "\(name) split \(split)") }
                }
                // An empty side leaves the other unchanged.
                var empty = run(type, hd: hd, nq: 1, segs: segs, stride: seg.stride, offset: seg.offset, lo: 500, hi: 600, q: q, sink: &noSink)
                let full = run(type, hd: hd, nq: 1, segs: segs, stride: seg.stride, offset: seg.offset, lo: 0, hi: n, q: q, sink: &noSink)
                tern_attn_merge(Int64(hd), &empty.out, &empty.lse, full.out, full.lse[0])
                XCTAssertEqual(empty.out, full.out)
            }
        }
    }

    /// One decoding row's heads (at most four queries) read whole f16/f32 tiles straight from the cache; more
    /// queries go through a tile copy. A query must get the same bits either way — relay passes and split keys
    /// mix the two — and match the reference, for head dims 64, 128 and 256 (SmolLM2, Llama, Gemma 3).
    func testDecodingTileEqualsBatchedTileBitForBit() {
        var rng = Random(state: 33)
        for path in AttentionKernelTests.paths {
            tern_force_path(path)
            for (name, type) in AttentionKernelTests.types {
                for hd in [64, 128, 256] {
                    let n = 75
                    let seg = AttentionKernelTests.segment(type, hd: hd, n: n, head: 1, rng: &rng)
                    seg.bytes.withUnsafeBytes { raw in
                        let (segs, positions) = pieces(raw.baseAddress!, stride: seg.stride, lengths: [n], gap: 0)
                        let q = rng.array(8 * hd)
                        // The first `heads` query heads alone, or beside others (8 queries: the copied tile).
                        func attend(_ heads: Int, of all: Int) -> [Float] {
                            var out = [Float](repeating: .nan, count: all * hd), lse = [Float](repeating: .nan, count: all)
                            var work = [Float](repeating: 0, count: tern_attn_tiled_work_floats(Int64(hd), Int64(all)))
                            tern_attn_tiled(type, Int64(hd), 0.1, q, 1, Int64(all), all * hd, Int64(n - 1), 0, segs, 1, 0,
                                            seg.stride, seg.offset, 0, Int64(n), &work, &out, all * hd, &lse)
                            return Array(out[0..<(heads * hd)]) + Array(lse[0..<heads])
                        }
                        for heads in [1, 3, 4] {
                            let what = "\(name) path \(path) hd \(hd) heads \(heads)"
                            let alone = attend(heads, of: heads)
                            XCTAssertEqual(alone, attend(heads, of: 8), what)
                            for h in 0..<heads {
                                let want = reference(Array(q[(h * hd)..<((h + 1) * hd)]), seg.decoded, positions: positions,
                                                     lo: 0, hi: n, scale: 0.1)
                                XCTAssertEqual(Double(alone[heads * hd + h]), want.lse, accuracy: 1e-4 * max(1, abs(want.lse)), what)
                                for d in 0..<hd { XCTAssertEqual(Double(alone[h * hd + d]), want.out[d], accuracy: 3e-5, what) }
                            }
                        }
                    }
                }
            }
        }
    }

    /// tern_attn_tiled: rows × heads queries, causal per row, optional window and key range, against the Double
    /// reference on every path; and one segment or many give the same bits.
    func testTiledMatchesReference() {
        var rng = Random(state: 21)
        for path in AttentionKernelTests.paths {
            tern_force_path(path)
            for (name, type) in AttentionKernelTests.types {
                let hd = 64, n = 75, heads = 3
                let seg = AttentionKernelTests.segment(type, hd: hd, n: n, head: 1, rng: &rng)
                seg.bytes.withUnsafeBytes { raw in
                    let (gapped, positions) = pieces(raw.baseAddress!, stride: seg.stride, lengths: [5, 16, 11, 43], gap: 2)
                    for (rows, pos0, window, kLo, kHi) in [(1, 80, 0, 0, 1000), (7, 60, 0, 0, 1000), (17, 40, 20, 0, 1000),
                                                           (3, 81, 0, 17, 50), (20, 2, 0, 0, 1000), (1, 500, 0, 0, 1000)] {
                        let q = rng.array(rows * heads * hd)
                        var out = [Float](repeating: .nan, count: rows * heads * hd)
                        var lse = [Float](repeating: .nan, count: rows * heads)
                        var work = [Float](repeating: 0, count: tern_attn_tiled_work_floats(Int64(hd), Int64(rows * heads)))
                        tern_attn_tiled(type, Int64(hd), 0.125, q, Int64(rows), Int64(heads), heads * hd, Int64(pos0), Int64(window),
                                        gapped, Int64(gapped.count), 0, seg.stride, seg.offset, Int64(kLo), Int64(kHi),
                                        &work, &out, heads * hd, &lse)
                        for r in 0..<rows {
                            let p = pos0 + r
                            let lo = max(kLo, window > 0 ? p - window + 1 : 0), hi = min(kHi, p + 1)
                            for h in 0..<heads {
                                let i = r * heads + h
                                let want = reference(Array(q[(i * hd)..<((i + 1) * hd)]), seg.decoded, positions: positions,
                                                     lo: lo, hi: hi, scale: 0.125)
                                let what = "\(name) path \(path) rows \(rows) pos0 \(pos0) window \(window) row \(r) head \(h)"
                                if want.lse == -.infinity {
                                    XCTAssertEqual(lse[i], -.infinity, what)
                                    continue
                                }
                                XCTAssertEqual(Double(lse[i]), want.lse, accuracy: 1e-4 * max(1, abs(want.lse)), what)
                                for d in 0..<hd { XCTAssertEqual(Double(out[i * hd + d]), want.out[d], accuracy: 3e-5, what) }
                            }
                        }
                    }
                    // Segmentation: one run of 75 rows at positions 0..<75, or the same rows cut every 5.
                    let whole = pieces(raw.baseAddress!, stride: seg.stride, lengths: [75], gap: 0).0
                    let cut = pieces(raw.baseAddress!, stride: seg.stride, lengths: Array(repeating: 5, count: 15), gap: 0).0
                    let q = rng.array(4 * heads * hd)
                    var results: [[Float]] = []
                    for segs in [whole, cut] {
                        var out = [Float](repeating: 0, count: 4 * heads * hd), lse = [Float](repeating: 0, count: 4 * heads)
                        var work = [Float](repeating: 0, count: tern_attn_tiled_work_floats(Int64(hd), Int64(4 * heads)))
                        tern_attn_tiled(type, Int64(hd), 0.125, q, 4, Int64(heads), heads * hd, 60, 0, segs, Int64(segs.count), 0,
                                        seg.stride, seg.offset, 0, 1000, &work, &out, heads * hd, &lse)
                        results.append(out + lse)
                    }
                    XCTAssertEqual(results[0], results[1], "\(name) path \(path): segmentation changed the result")
                }
            }
        }
    }
}
