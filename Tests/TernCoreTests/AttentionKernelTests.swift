// Tests for the attention kernels (tern_attn_scores / tern_attn_accumulate): on every path this CPU can run, each
// KV type (F32, F16, Q8_0) and several head sizes and run lengths, the results must equal plain loops over the
// dequantized rows (computed in Double here), the returned maximum must be the largest score, and the SIMD paths
// must agree with the scalar one.
import CKernels
import Foundation
import XCTest

final class AttentionKernelTests: XCTestCase {
    static let types: [(name: String, id: Int32)] = [
        ("f32", Int32(TERN_F32)), ("f16", Int32(TERN_F16)), ("q8_0", Int32(TERN_Q8_0)),
    ]
    static let headDims = [32, 64, 128]
    static let lengths = [1, 7, 16, 100]
    /// Heads per cached row; the kernels read one of them, as attention does for one KV head.
    static let kvHeads = 3
    static let tolerance = 1e-5

    override func tearDown() {
        tern_force_path(-1)
        super.tearDown()
    }

    /// Deterministic values in [-1, 1) (SplitMix64), so failures reproduce.
    struct Random {
        var state: UInt64
        mutating func next() -> Float {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return Float(z >> 40) / Float(1 << 24) * 2 - 1
        }
        mutating func array(_ n: Int) -> [Float] { (0..<n).map { _ in next() } }
    }

    /// A segment of n cached rows, each holding kvHeads head slices of `type` plus a few padding bytes (so the
    /// stride is not a multiple of the slice size), and the decoded values of head `head` for the reference.
    struct Segment {
        let bytes: [UInt8]
        let stride: Int
        let offset: Int
        let decoded: [[Float]]  // [row][hd]
    }

    static func sliceBytes(_ type: Int32, _ hd: Int) -> Int {
        switch type {
        case Int32(TERN_F32): return hd * 4
        case Int32(TERN_F16): return hd * 2
        default: return hd / 32 * 34
        }
    }

    static func decode(_ type: Int32, _ p: UnsafeRawPointer, _ hd: Int) -> [Float] {
        var out = [Float](repeating: 0, count: hd)
        switch type {
        case Int32(TERN_F32):
            for i in 0..<hd { out[i] = p.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
        case Int32(TERN_F16):
            let halves = (0..<hd).map { p.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self) }
            tern_f16_to_f32(halves, &out, Int64(hd))
        default:
            tern_dequantize_row(Int32(TERN_Q8_0), p, &out, Int64(hd))
        }
        return out
    }

    static func segment(_ type: Int32, hd: Int, n: Int, head: Int, rng: inout Random) -> Segment {
        let slice = sliceBytes(type, hd)
        let stride = kvHeads * slice + 6
        var bytes = [UInt8](repeating: 0, count: stride * n)
        bytes.withUnsafeMutableBytes { raw in
            for j in 0..<n {
                for h in 0..<kvHeads {
                    // Rows with different magnitudes, as real keys have.
                    let gain = Float(1 + (j + h) % 5)
                    let values = rng.array(hd).map { $0 * gain }
                    let dst = raw.baseAddress! + j * stride + h * slice
                    switch type {
                    case Int32(TERN_F32):
                        values.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: hd * 4) }
                    case Int32(TERN_F16):
                        var halves = [UInt16](repeating: 0, count: hd)
                        tern_f32_to_f16(values, &halves, Int64(hd))
                        halves.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress!, byteCount: hd * 2) }
                    default:
                        XCTAssertEqual(tern_quantize_row(type, values, dst, Int64(hd)), 0)
                    }
                }
            }
        }
        let offset = head * slice
        let decoded = bytes.withUnsafeBytes { raw in
            (0..<n).map { decode(type, raw.baseAddress! + $0 * stride + offset, hd) }
        }
        return Segment(bytes: bytes, stride: stride, offset: offset, decoded: decoded)
    }

    /// Paths this CPU can run, scalar first.
    static var paths: [Int32] { Array(0...tern_best_path()) }

    func scores(_ type: Int32, _ q: [Float], _ seg: Segment, hd: Int, n: Int, scale: Float) -> ([Float], Float) {
        var out = [Float](repeating: .nan, count: n)
        let mx = seg.bytes.withUnsafeBytes { raw in
            tern_attn_scores(type, q, raw.baseAddress!, seg.stride, seg.offset, Int64(hd), Int64(n), scale, &out)
        }
        return (out, mx)
    }

    func accumulate(_ type: Int32, _ w: [Float], _ seg: Segment, hd: Int, n: Int, start: [Float]) -> [Float] {
        var out = start
        seg.bytes.withUnsafeBytes { raw in
            tern_attn_accumulate(type, w, raw.baseAddress!, seg.stride, seg.offset, Int64(hd), Int64(n), &out)
        }
        return out
    }

    /// Error allowed for a sum: tolerance relative to the sum of the absolute values of its terms, since summation
    /// order differs between paths and cancellation can make the result itself tiny.
    func check(_ got: Float, _ want: Double, magnitude: Double, _ what: @autoclosure () -> String) {
        let err = abs(Double(got) - want)
        if !(err <= Self.tolerance * max(magnitude, 1e-30)) {
            XCTFail("\(what()): got \(got), want \(want) (magnitude \(magnitude))")
        }
    }

    func testMatchesReferenceOnEveryPath() {
        var rng = Random(state: 42)
        for (name, type) in Self.types {
            for hd in Self.headDims {
                for n in Self.lengths {
                    let head = (hd + n) % Self.kvHeads
                    let seg = Self.segment(type, hd: hd, n: n, head: head, rng: &rng)
                    let q = rng.array(hd), w = rng.array(n).map { ($0 + 1) / Float(n) }, start = rng.array(hd)
                    let scale = 1 / Float(hd).squareRoot()
                    // Reference: plain loops over the decoded rows, in Double.
                    var refScores = [Double](), refMagnitude = [Double]()
                    for j in 0..<n {
                        var s = 0.0, m = 0.0
                        for i in 0..<hd {
                            let t = Double(q[i]) * Double(seg.decoded[j][i])
                            s += t
                            m += abs(t)
                        }
                        refScores.append(s * Double(scale))
                        refMagnitude.append(m * Double(scale))
                    }
                    var refOut = start.map(Double.init), outMagnitude = start.map { abs(Double($0)) }
                    for j in 0..<n {
                        for i in 0..<hd {
                            let t = Double(w[j]) * Double(seg.decoded[j][i])
                            refOut[i] += t
                            outMagnitude[i] += abs(t)
                        }
                    }
                    var scalarScores = [Float](), scalarOut = [Float]()
                    for path in Self.paths {
                        tern_force_path(path)
                        let label = "\(name) hd \(hd) n \(n) path \(String(cString: tern_path_name(path)))"
                        let (s, mx) = scores(type, q, seg, hd: hd, n: n, scale: scale)
                        for j in 0..<n {
                            check(s[j], refScores[j], magnitude: refMagnitude[j], "\(label) score \(j)")
                        }
                        XCTAssertEqual(mx, s.max()!, "\(label): returned max")
                        let o = accumulate(type, w, seg, hd: hd, n: n, start: start)
                        for i in 0..<hd {
                            check(o[i], refOut[i], magnitude: outMagnitude[i], "\(label) out \(i)")
                        }
                        if path == 0 {
                            scalarScores = s
                            scalarOut = o
                        } else {
                            for j in 0..<n {
                                check(s[j], Double(scalarScores[j]), magnitude: refMagnitude[j],
                                      "\(label) score \(j) vs scalar")
                            }
                            for i in 0..<hd {
                                check(o[i], Double(scalarOut[i]), magnitude: outMagnitude[i],
                                      "\(label) out \(i) vs scalar")
                            }
                        }
                    }
                    tern_force_path(-1)
                }
            }
        }
    }

    /// Head sizes that are not a multiple of the SIMD width (F32/F16) or longer than one register chunk.
    func testOddAndLargeHeadDims() {
        var rng = Random(state: 7)
        for (name, type) in Self.types {
            for hd in type == Int32(TERN_Q8_0) ? [96, 256] : [8, 40, 72, 256] {
                let n = 37
                let seg = Self.segment(type, hd: hd, n: n, head: 1, rng: &rng)
                let q = rng.array(hd), w = rng.array(n), start = [Float](repeating: 0, count: hd)
                for path in Self.paths {
                    tern_force_path(path)
                    let label = "\(name) hd \(hd) path \(path)"
                    let (s, mx) = scores(type, q, seg, hd: hd, n: n, scale: 0.5)
                    for j in 0..<n {
                        var want = 0.0, mag = 0.0
                        for i in 0..<hd {
                            want += Double(q[i]) * Double(seg.decoded[j][i])
                            mag += abs(Double(q[i]) * Double(seg.decoded[j][i]))
                        }
                        check(s[j], want * 0.5, magnitude: mag * 0.5, "\(label) score \(j)")
                    }
                    XCTAssertEqual(mx, s.max()!, label)
                    let o = accumulate(type, w, seg, hd: hd, n: n, start: start)
                    for i in 0..<hd {
                        var want = 0.0, mag = 0.0
                        for j in 0..<n {
                            want += Double(w[j]) * Double(seg.decoded[j][i])
                            mag += abs(Double(w[j]) * Double(seg.decoded[j][i]))
                        }
                        check(o[i], want, magnitude: mag, "\(label) out \(i)")
                    }
                }
                tern_force_path(-1)
            }
        }
    }

    func testEmptyRun() {
        var scores = [Float](repeating: 7, count: 1)
        var out = [Float](repeating: 3, count: 64)
        let q = [Float](repeating: 1, count: 64)
        let mx = tern_attn_scores(Int32(TERN_F32), q, q, 256, 0, 64, 0, 1, &scores)
        XCTAssertEqual(mx, -Float.infinity)
        XCTAssertEqual(scores, [7])
        tern_attn_accumulate(Int32(TERN_F32), q, q, 256, 0, 64, 0, &out)
        XCTAssertEqual(out, [Float](repeating: 3, count: 64))
    }
}
