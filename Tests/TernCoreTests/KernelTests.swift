// Tests for CKernels: block decoding against gguf-py fixtures (an independent implementation of the GGML
// formats), every SIMD path against the scalar reference, the scalar path against a plain float dot product,
// quantizer round trips, and the float helpers against naive loops.
import CKernels
import Foundation
import XCTest

final class KernelTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../Fixtures/quant").standardizedFileURL

    static let allTypes: [(name: String, id: Int32)] = [
        ("f32", Int32(TERN_F32)), ("f16", Int32(TERN_F16)), ("bf16", Int32(TERN_BF16)),
        ("q4_0", Int32(TERN_Q4_0)), ("q4_1", Int32(TERN_Q4_1)), ("q5_0", Int32(TERN_Q5_0)),
        ("q5_1", Int32(TERN_Q5_1)), ("q8_0", Int32(TERN_Q8_0)), ("q4_k", Int32(TERN_Q4_K)),
        ("q5_k", Int32(TERN_Q5_K)), ("q6_k", Int32(TERN_Q6_K)),
    ]

    /// Paths this CPU can run, scalar first.
    static var paths: [Int32] { Array(0...tern_best_path()) }

    override func tearDown() {
        tern_force_path(-1)
        super.tearDown()
    }

    // MARK: helpers

    func load(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: Self.fixtures.appendingPathComponent(name)))
    }

    func loadFloats(_ name: String) throws -> [Float] {
        let bytes = try load(name)
        return bytes.withUnsafeBytes { raw in
            (0..<bytes.count / 4).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
    }

    /// Deterministic generator (SplitMix64) so failures reproduce.
    struct Rng {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        /// Uniform in [-1, 1).
        mutating func float() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
    }

    func rowBytes(_ type: Int32, _ n: Int) -> Int {
        n / Int(tern_type_block_elements(type)) * Int(tern_type_block_bytes(type))
    }

    /// `rows` weight rows of `type`, made by quantizing random floats (so every block is valid).
    func randomWeights(_ type: Int32, rows: Int, n: Int, rng: inout Rng) -> [UInt8] {
        let rb = rowBytes(type, n)
        var w = [UInt8](repeating: 0, count: rb * rows + 64)
        var src = [Float](repeating: 0, count: n)
        for r in 0..<rows {
            for j in 0..<n { src[j] = rng.float() * Float(1 + (j % 7)) }
            w.withUnsafeMutableBytes { buf in
                XCTAssertEqual(tern_quantize_row(type, src, buf.baseAddress! + r * rb, Int64(n)), 0)
            }
        }
        return w
    }

    func dequantize(_ type: Int32, _ bytes: UnsafeRawPointer, _ n: Int) -> [Float] {
        var out = [Float](repeating: 0, count: n)
        tern_dequantize_row(type, bytes, &out, Int64(n))
        return out
    }

    /// out[i*ldo + r] via the library on the currently forced path.
    func matmul(_ type: Int32, _ w: [UInt8], rows: Int, n: Int, x: [Float], m: Int) -> [Float] {
        let ldo = rows + 3
        var out = [Float](repeating: .nan, count: m * ldo)
        w.withUnsafeBytes { wb in
            if tern_type_is_float(type) != 0 {
                tern_matmul_f(type, wb.baseAddress, rowBytes(type, n), Int64(n), x, Int64(m), &out, Int64(ldo), 0, Int64(rows))
            } else {
                var a = [tern_q8_block](repeating: tern_q8_block(), count: m * n / 32)
                tern_quantize_activations(x, &a, Int64(m * n))
                tern_matmul_q(type, wb.baseAddress, rowBytes(type, n), Int64(n), a, Int64(m), &out, Int64(ldo), 0, Int64(rows))
            }
        }
        return out
    }

    // MARK: 1. decoding matches gguf-py

    func testDequantizeMatchesGGUFPy() throws {
        for path in Self.paths {
            tern_force_path(path)
            for (name, type) in Self.allTypes {
                let raw = try load("\(name).raw")
                let expected = try loadFloats("\(name).deq.f32")
                XCTAssertEqual(raw.count, rowBytes(type, expected.count), "\(name) fixture size")
                let got = raw.withUnsafeBytes { dequantize(type, $0.baseAddress!, expected.count) }
                for i in 0..<expected.count {
                    let e = expected[i], g = got[i]
                    XCTAssertTrue(g == e || abs(g - e) <= 1e-6 * abs(e), "\(name)[\(i)] \(g) != \(e) on \(String(cString: tern_path_name(path)))")
                }
            }
        }
    }

    // MARK: 2. every SIMD path agrees with the scalar reference

    func testFastPathsMatchScalar() {
        var rng = Rng(state: 42)
        let ms = [1, 2, 3, 5, 8]
        for (name, type) in Self.allTypes {
            for n in [32, 96, 256, 512, 1536 + 256] where n % Int(tern_type_block_elements(type)) == 0 {
                for rows in [1, 3, 17, 67] {
                    let w = randomWeights(type, rows: rows, n: n, rng: &rng)
                    let x = (0..<(8 * n)).map { _ in rng.float() }
                    // Scale of each result: sum of |w_j x_j| (a cancelling sum may be near 0 itself).
                    var mag = [Double](repeating: 0, count: 8 * rows)
                    w.withUnsafeBytes { wb in
                        for r in 0..<rows {
                            let d = dequantize(type, wb.baseAddress! + r * rowBytes(type, n), n)
                            for i in 0..<8 { for j in 0..<n { mag[i * rows + r] += Double(abs(d[j] * x[i * n + j])) } }
                        }
                    }
                    for m in ms {
                        tern_force_path(0)
                        let ref = matmul(type, w, rows: rows, n: n, x: x, m: m)
                        for path in Self.paths.dropFirst() {
                            tern_force_path(path)
                            let got = matmul(type, w, rows: rows, n: n, x: x, m: m)
                            let ldo = rows + 3
                            for i in 0..<m {
                                for r in 0..<rows {
                                    let g = got[i * ldo + r], e = ref[i * ldo + r]
                                    let tol = 1e-4 * mag[i * rows + r] + 1e-30
                                    XCTAssertLessThanOrEqual(Double(abs(g - e)), tol,
                                        "\(name) \(String(cString: tern_path_name(path))) n=\(n) rows=\(rows) m=\(m) i=\(i) r=\(r): \(g) vs \(e)")
                                }
                                // Only rows in [r0, r1) are written.
                                XCTAssertTrue(got[i * ldo + rows].isNaN)
                            }
                        }
                    }
                }
            }
        }
    }

    /// Prompt-sized batches go through the repacking / tiled kernels (16-row panels, 8- and 4-row activation
    /// tiles, 32-block weight chunks): m beyond the tile sizes with remainders, rows not a multiple of 16,
    /// n spanning several chunks, and a row range starting mid-matrix.
    func testBatchedPathsMatchScalar() {
        var rng = Rng(state: 4242)
        for (name, type) in Self.allTypes {
            for n in [96, 256, 1536 + 256] where n % Int(tern_type_block_elements(type)) == 0 {
                let rows = 35, maxM = 100, rb = rowBytes(type, n), ldo = rows + 3
                let w = randomWeights(type, rows: rows, n: n, rng: &rng)
                let x = (0..<(maxM * n)).map { _ in rng.float() }
                var a = [tern_q8_block](repeating: tern_q8_block(), count: maxM * n / 32)
                tern_quantize_activations(x, &a, Int64(maxM * n))
                var deq = [[Float]]()
                w.withUnsafeBytes { wb in for r in 0..<rows { deq.append(dequantize(type, wb.baseAddress! + r * rb, n)) } }
                for m in [13, 32, 64, 100] {
                    func run(_ r0: Int, _ r1: Int) -> [Float] {
                        var out = [Float](repeating: .nan, count: m * ldo)
                        w.withUnsafeBytes { wb in
                            if tern_type_is_float(type) != 0 {
                                tern_matmul_f(type, wb.baseAddress, rb, Int64(n), x, Int64(m), &out, Int64(ldo), Int64(r0), Int64(r1))
                            } else {
                                tern_matmul_q(type, wb.baseAddress, rb, Int64(n), a, Int64(m), &out, Int64(ldo), Int64(r0), Int64(r1))
                            }
                        }
                        return out
                    }
                    tern_force_path(0)
                    let ref = run(0, rows)
                    for path in Self.paths.dropFirst() {
                        tern_force_path(path)
                        let got = run(0, rows), part = run(3, 30)
                        let pname = String(cString: tern_path_name(path))
                        for i in 0..<m {
                            for r in 0..<rows {
                                var mag = 0.0
                                for j in 0..<n { mag += Double(abs(deq[r][j] * x[i * n + j])) }
                                let g = got[i * ldo + r], e = ref[i * ldo + r]
                                XCTAssertLessThanOrEqual(Double(abs(g - e)), 1e-4 * mag + 1e-30,
                                    "\(name) \(pname) n=\(n) m=\(m) i=\(i) r=\(r): \(g) vs \(e)")
                                if r >= 3 && r < 30 {
                                    XCTAssertEqual(part[i * ldo + r].bitPattern, g.bitPattern, "\(name) \(pname) range i=\(i) r=\(r)")
                                } else {
                                    XCTAssertTrue(part[i * ldo + r].isNaN, "\(name) \(pname) wrote outside range: i=\(i) r=\(r)")
                                }
                            }
                            XCTAssertTrue(got[i * ldo + rows].isNaN)
                        }
                    }
                }
            }
        }
    }

    // MARK: load-time packed weights

    static let packedTypes: [(name: String, id: Int32)] = [
        ("q4_0", Int32(TERN_Q4_0)), ("q4_1", Int32(TERN_Q4_1)), ("q5_0", Int32(TERN_Q5_0)), ("q5_1", Int32(TERN_Q5_1)),
        ("q8_0", Int32(TERN_Q8_0)), ("q4_k", Int32(TERN_Q4_K)), ("q5_k", Int32(TERN_Q5_K)), ("q6_k", Int32(TERN_Q6_K)),
    ]

    /// Packed weights give tern_matmul_q's numbers (bit for bit on the AVX-512 path, whose batched tiles they
    /// mirror, except Q6_K at m = 1 where tern_matmul_q uses row kernels; within 1e-4 on other paths, whose row
    /// kernels sum in another order), for row ranges as threads split them; the AVX2 packed kernel gives the
    /// portable packed reader's bits; packing by ranges equals packing whole; types without a packed form, and
    /// the scalar path, report size 0.
    func testPackedMatchesUnpacked() {
        tern_force_path(-1)
        for (name, type) in Self.allTypes where !Self.packedTypes.contains(where: { $0.id == type }) {
            XCTAssertEqual(tern_packed_size(type, 64, 512), 0, "\(name) has no packed form")
        }
        guard tern_best_path() >= Int32(TERN_PATH_AVX2) else {
            for (name, type) in Self.packedTypes { XCTAssertEqual(tern_packed_size(type, 64, 512), 0, name) }
            return
        }
        XCTAssertEqual(Int32(TERN_PACK_ROWS), 16)
        var rng = Rng(state: 777)
        let maxM = 64
        for (name, type) in Self.packedTypes {
            let small = [32, 96, 256, 576, 1792]
            for (rows, ns) in [(16, small), (35, small), (67, small), (1040, [512])] {
                for n in ns where n % Int(tern_type_block_elements(type)) == 0 {
                    tern_force_path(-1)
                    let rb = rowBytes(type, n), ldo = rows + 3
                    let w = randomWeights(type, rows: rows, n: n, rng: &rng)
                    let x = (0..<(maxM * n)).map { _ in rng.float() }
                    var a = [tern_q8_block](repeating: tern_q8_block(), count: maxM * n / 32)
                    tern_quantize_activations(x, &a, Int64(maxM * n))
                    let size = tern_packed_size(type, Int64(rows), Int64(n))
                    XCTAssertGreaterThan(size, 0, name)
                    let packed = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
                    let byRanges = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
                    defer { packed.deallocate(); byRanges.deallocate() }
                    memset(packed, 0xa5, size)
                    memset(byRanges, 0x5a, size)
                    w.withUnsafeBytes { wb in
                        XCTAssertEqual(tern_pack_weights(type, wb.baseAddress, rb, Int64(rows), Int64(n), packed), 0)
                        for (r0, r1) in [(0, min(16, rows)), (16, min(48, rows)), (48, rows)] where r0 < r1 {
                            XCTAssertEqual(tern_pack_weights_range(type, wb.baseAddress, rb, Int64(rows), Int64(n), byRanges, Int64(r0), Int64(r1)), 0)
                        }
                    }
                    XCTAssertEqual(memcmp(packed, byRanges, size), 0, "\(name) rows=\(rows) n=\(n): packing by ranges")
                    var deq = [[Float]]()
                    w.withUnsafeBytes { wb in for r in 0..<rows { deq.append(dequantize(type, wb.baseAddress! + r * rb, n)) } }
                    for m in [1, 2, 5, 8, 13, 64] {
                        var mag = [Double](repeating: 0, count: m * rows)
                        for i in 0..<m { for r in 0..<rows { for j in 0..<n { mag[i * rows + r] += Double(abs(deq[r][j] * x[i * n + j])) } } }
                        var portable = [Int: [Float]]()  // the scalar path's packed results, per row range
                        for path in Self.paths {
                            tern_force_path(path)
                            for (k, (r0, r1)) in [(0, rows), (16, min(32, rows)), (32, rows)].enumerated() where r0 < r1 {
                                var ref = [Float](repeating: .nan, count: m * ldo), got = ref
                                w.withUnsafeBytes { wb in
                                    tern_matmul_q(type, wb.baseAddress, rb, Int64(n), a, Int64(m), &ref, Int64(ldo), Int64(r0), Int64(r1))
                                }
                                tern_matmul_packed(type, packed, Int64(rows), Int64(n), a, Int64(m), &got, Int64(ldo), Int64(r0), Int64(r1))
                                if path == Int32(TERN_PATH_SCALAR) {
                                    portable[k] = got
                                } else if path == Int32(TERN_PATH_AVX2), let p = portable[k],
                                          let j = got.indices.first(where: { got[$0].bitPattern != p[$0].bitPattern }) {
                                    XCTFail("\(name) rows=\(rows) n=\(n) m=\(m) [\(r0), \(r1)) i=\(j / ldo) r=\(j % ldo): AVX2 packed \(got[j]) vs portable packed \(p[j])")
                                }
                                for i in 0..<m {
                                    for r in 0..<ldo {
                                        let g = got[i * ldo + r], e = ref[i * ldo + r]
                                        guard r >= r0 && r < r1 else {
                                            XCTAssertTrue(g.isNaN, "\(name) wrote outside [\(r0), \(r1)): i=\(i) r=\(r)")
                                            continue
                                        }
                                        if path == Int32(TERN_PATH_AVX512) && !(type == Int32(TERN_Q6_K) && m == 1) {
                                            XCTAssertEqual(g.bitPattern, e.bitPattern, "\(name) rows=\(rows) n=\(n) m=\(m) [\(r0), \(r1)) i=\(i) r=\(r): \(g) vs \(e)")
                                        } else {
                                            XCTAssertLessThanOrEqual(Double(abs(g - e)), 1e-4 * mag[i * rows + r] + 1e-30,
                                                "\(name) path \(path) rows=\(rows) n=\(n) m=\(m) i=\(i) r=\(r): \(g) vs \(e)")
                                        }
                                    }
                                }
                            }
                            if path < Int32(TERN_PATH_AVX2) {
                                XCTAssertEqual(tern_packed_size(type, Int64(rows), Int64(n)), 0, "\(name): no packing on path \(path)")
                            } else {
                                XCTAssertGreaterThan(tern_packed_size(type, Int64(rows), Int64(n)), 0, "\(name): packing on path \(path)")
                            }
                        }
                    }
                }
            }
        }
    }

    /// An activation row's packed results do not depend on the batch it is in or its position there (greedy
    /// decoding of sequences batched together must give the tokens each gives alone), nor on the row range, on
    /// every path that packs.
    func testPackedResultsIndependentOfBatch() {
        var rng = Rng(state: 4242)
        let rows = 40, n = 512, maxM = 17, ldo = rows
        for path in Self.paths {
            tern_force_path(path)
            for (name, type) in Self.packedTypes {
                let size = tern_packed_size(type, Int64(rows), Int64(n))
                guard size > 0 else { continue }
                let w = randomWeights(type, rows: rows, n: n, rng: &rng)
                let x = (0..<(maxM * n)).map { _ in rng.float() }
                var a = [tern_q8_block](repeating: tern_q8_block(), count: maxM * n / 32)
                tern_quantize_activations(x, &a, Int64(maxM * n))
                let packed = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
                defer { packed.deallocate() }
                w.withUnsafeBytes { wb in
                    XCTAssertEqual(tern_pack_weights(type, wb.baseAddress, rowBytes(type, n), Int64(rows), Int64(n), packed), 0)
                }
                var whole = [Float](repeating: .nan, count: maxM * ldo)
                tern_matmul_packed(type, packed, Int64(rows), Int64(n), a, Int64(maxM), &whole, Int64(ldo), 0, Int64(rows))
                for m in [1, 3, 5] {
                    for start in Set([0, 1, 4, maxM - m]) where start + m <= maxM {
                        var got = [Float](repeating: .nan, count: m * ldo)
                        a.withUnsafeBufferPointer { ab in
                            let sub = ab.baseAddress! + start * (n / 32)
                            for (r0, r1) in [(0, 16), (16, rows)] {
                                tern_matmul_packed(type, packed, Int64(rows), Int64(n), sub, Int64(m), &got, Int64(ldo), Int64(r0), Int64(r1))
                            }
                        }
                        for i in 0..<m {
                            let alone = got[(i * ldo)..<(i * ldo + rows)], batched = whole[((start + i) * ldo)..<((start + i) * ldo + rows)]
                            if let r = (0..<rows).first(where: { alone[i * ldo + $0].bitPattern != batched[(start + i) * ldo + $0].bitPattern }) {
                                XCTFail("\(name) path \(path): activation row \(start + i), weight row \(r): \(alone[i * ldo + r]) at \(i) of " +
                                        "a batch of \(m) vs \(batched[(start + i) * ldo + r]) at \(start + i) of \(maxM)")
                            }
                        }
                    }
                }
            }
        }
    }

    /// Threads call with disjoint row ranges; odd starts and lengths must give the same numbers as one call.
    func testRowRangesComposeExactly() {
        var rng = Rng(state: 1234)
        for (name, type) in Self.allTypes {
            let n = 512, rows = 23
            let w = randomWeights(type, rows: rows, n: n, rng: &rng)
            let x = (0..<(20 * n)).map { _ in rng.float() }
            var a = [tern_q8_block](repeating: tern_q8_block(), count: 20 * n / 32)
            tern_quantize_activations(x, &a, Int64(20 * n))
            for path in Self.paths {
                tern_force_path(path)
                for m in [1, 3, 20] {
                    var whole = [Float](repeating: 0, count: m * rows), parts = [Float](repeating: .nan, count: m * rows)
                    w.withUnsafeBytes { wb in
                        let rb = rowBytes(type, n)
                        func run(_ out: inout [Float], _ r0: Int, _ r1: Int) {
                            if tern_type_is_float(type) != 0 {
                                tern_matmul_f(type, wb.baseAddress, rb, Int64(n), x, Int64(m), &out, Int64(rows), Int64(r0), Int64(r1))
                            } else {
                                tern_matmul_q(type, wb.baseAddress, rb, Int64(n), a, Int64(m), &out, Int64(rows), Int64(r0), Int64(r1))
                            }
                        }
                        run(&whole, 0, rows)
                        for (r0, r1) in [(0, 5), (5, 6), (6, 6), (6, 17), (17, 23)] { run(&parts, r0, r1) }
                    }
                    XCTAssertEqual(whole.map(\.bitPattern), parts.map(\.bitPattern), "\(name) path \(path) m=\(m)")
                }
            }
        }
    }

    func testActivationQuantizationIdenticalOnAllPaths() {
        var rng = Rng(state: 7)
        let n = 32 * 37
        var x = (0..<n).map { _ in rng.float() * 3 }
        for j in 0..<32 { x[j] = 0 }                       // all-zero block
        for j in 32..<64 { x[j] = Float(j - 48) * 0.5 }    // exact halves: round-half-even matters
        tern_force_path(0)
        var ref = [tern_q8_block](repeating: tern_q8_block(), count: n / 32)
        tern_quantize_activations(x, &ref, Int64(n))
        for path in Self.paths {
            tern_force_path(path)
            var got = [tern_q8_block](repeating: tern_q8_block(), count: n / 32)
            tern_quantize_activations(x, &got, Int64(n))
            for b in 0..<n / 32 {
                XCTAssertEqual(got[b].d, ref[b].d)
                XCTAssertEqual(got[b].s, ref[b].s)
                var sum = 0
                withUnsafeBytes(of: got[b].q) { g in
                    withUnsafeBytes(of: ref[b].q) { e in XCTAssertEqual(Array(g), Array(e), "block \(b) path \(path)") }
                    for v in g.bindMemory(to: Int8.self) { sum += Int(v); XCTAssertTrue(abs(Int(v)) <= 127) }
                }
                XCTAssertEqual(got[b].s, got[b].d * Float(sum))
                // reconstruction error at most half a step
                withUnsafeBytes(of: got[b].q) { g in
                    let q = g.bindMemory(to: Int8.self)
                    for j in 0..<32 { XCTAssertLessThanOrEqual(abs(Float(q[j]) * got[b].d - x[32 * b + j]), got[b].d * 0.5001 + 1e-30) }
                }
            }
        }
    }

    // MARK: 3. scalar product == float dot product up to activation quantization error

    func testScalarMatmulMatchesFloatDot() {
        var rng = Rng(state: 99)
        tern_force_path(0)
        for (name, type) in Self.allTypes {
            let n = 512, rows = 5, m = 3
            let w = randomWeights(type, rows: rows, n: n, rng: &rng)
            let x = (0..<(m * n)).map { _ in rng.float() }
            let got = matmul(type, w, rows: rows, n: n, x: x, m: m)
            var a = [tern_q8_block](repeating: tern_q8_block(), count: m * n / 32)
            tern_quantize_activations(x, &a, Int64(m * n))
            w.withUnsafeBytes { wb in
                for r in 0..<rows {
                    let d = dequantize(type, wb.baseAddress! + r * rowBytes(type, n), n)
                    for i in 0..<m {
                        var exact = 0.0, mag = 0.0, bound = 0.0
                        for j in 0..<n {
                            exact += Double(d[j]) * Double(x[i * n + j])
                            mag += abs(Double(d[j]) * Double(x[i * n + j]))
                            // each quantized activation is off by at most half its block's step
                            if tern_type_is_float(type) == 0 { bound += abs(Double(d[j])) * Double(a[i * n / 32 + j / 32].d) * 0.5 }
                        }
                        let tol = bound * 1.001 + 1e-5 * mag + 1e-30
                        XCTAssertLessThanOrEqual(abs(Double(got[i * (rows + 3) + r]) - exact), tol, "\(name) r=\(r) i=\(i)")
                    }
                }
            }
        }
    }

    /// F16 products on every path, against a double-precision product of the dequantized weights, with batch sizes
    /// around the SIMD tiles (m = 1 row kernel; m >= 2 a 3-row x 4-activation register tile), row ranges that do
    /// not start or end on a tile, and n below, at and off multiples of 8 (the tail past the last 8 is scalar).
    /// The bound is summation's worst case, n rounding steps of the sum of |products|: any lost or misplaced
    /// term is far larger. Row ranges split as threads split them must give the same bits as the whole.
    func testF16ProductsMatchDoubleOnAllPaths() {
        var rng = Rng(state: 1616)
        let type = Int32(TERN_F16), rows = 38, maxM = 128, ldo = rows + 3
        for n in [576, 100, 16, 13, 3] {
            let rb = rowBytes(type, n)
            let w = randomWeights(type, rows: rows, n: n, rng: &rng)
            let x = (0..<(maxM * n)).map { j in rng.float() * (j % 89 == 0 ? 30 : 1) }
            var deq = [[Float]]()
            w.withUnsafeBytes { wb in for r in 0..<rows { deq.append(dequantize(type, wb.baseAddress! + r * rb, n)) } }
            var dense = [Double](repeating: 0, count: maxM * rows), mag = dense
            for i in 0..<maxM {
                for r in 0..<rows {
                    for j in 0..<n {
                        let p = Double(deq[r][j]) * Double(x[i * n + j])
                        dense[i * rows + r] += p
                        mag[i * rows + r] += abs(p)
                    }
                }
            }
            for m in [1, 2, 3, 4, 5, 17, 128] {
                func run(_ ranges: [(Int, Int)]) -> [Float] {
                    var out = [Float](repeating: .nan, count: m * ldo)
                    w.withUnsafeBytes { wb in
                        for (r0, r1) in ranges {
                            tern_matmul_f(type, wb.baseAddress, rb, Int64(n), x, Int64(m), &out, Int64(ldo), Int64(r0), Int64(r1))
                        }
                    }
                    return out
                }
                var byPath = [[Float]]()
                for path in Self.paths {
                    tern_force_path(path)
                    let pname = String(cString: tern_path_name(path))
                    let got = run([(0, rows)]), split = run([(0, 1), (1, 5), (5, 16), (16, 37), (37, 38)]),
                        part = run([(4, 23)])
                    XCTAssertEqual(split.map(\.bitPattern), got.map(\.bitPattern), "f16 \(pname) n=\(n) m=\(m): split ranges")
                    for i in 0..<m {
                        for r in 0..<ldo {
                            let g = got[i * ldo + r]
                            guard r < rows else { XCTAssertTrue(g.isNaN, "f16 \(pname) wrote past the rows"); continue }
                            let e = dense[i * rows + r], tol = Double(n) * 0x1p-24 * mag[i * rows + r] + 1e-30
                            XCTAssertLessThanOrEqual(abs(Double(g) - e), tol, "f16 \(pname) n=\(n) m=\(m) i=\(i) r=\(r): \(g) vs \(e)")
                            let q = part[i * ldo + r]
                            if r >= 4 && r < 23 {
                                XCTAssertEqual(q.bitPattern, g.bitPattern, "f16 \(pname) n=\(n) m=\(m) range i=\(i) r=\(r)")
                            } else {
                                XCTAssertTrue(q.isNaN, "f16 \(pname) n=\(n) m=\(m) wrote outside [4, 23): i=\(i) r=\(r)")
                            }
                        }
                    }
                    byPath.append(got)
                }
                // every SIMD path agrees with the scalar reference to within the same rounding
                for (k, got) in byPath.enumerated().dropFirst() {
                    for i in 0..<m {
                        for r in 0..<rows {
                            let tol = 2 * Double(n) * 0x1p-24 * mag[i * rows + r] + 1e-30
                            XCTAssertLessThanOrEqual(abs(Double(got[i * ldo + r]) - Double(byPath[0][i * ldo + r])), tol,
                                                     "f16 path \(Self.paths[k]) vs scalar n=\(n) m=\(m) i=\(i) r=\(r)")
                        }
                    }
                }
            }
        }
    }

    // MARK: 4. quantizers

    func testQuantizeRowBitExactWithGGUFPy() throws {
        // gguf-py ports ggml's reference quantizers; ours are bit-exact for these types.
        for name in ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16", "bf16"] {
            let type = Self.allTypes.first { $0.name == name }!.id
            let src = try loadFloats("\(name).src.f32")
            let expected = try load("\(name).q.raw")
            var got = [UInt8](repeating: 0, count: expected.count)
            XCTAssertEqual(tern_quantize_row(type, src, &got, Int64(src.count)), 0)
            XCTAssertEqual(got, expected, name)
        }
    }

    func testQuantizeRowRoundTripError() {
        var rng = Rng(state: 5)
        let n = 1024
        var src = (0..<n).map { _ in rng.float() }
        for j in 0..<n { src[j] *= Float(1 + (j / 256)) }   // different ranges per super-block
        for j in 0..<32 { src[j] = 0 }                      // an all-zero block
        for (name, type) in Self.allTypes {
            var q = [UInt8](repeating: 0, count: rowBytes(type, n))
            XCTAssertEqual(tern_quantize_row(type, src, &q, Int64(n)), 0, name)
            let back = q.withUnsafeBytes { dequantize(type, $0.baseAddress!, n) }
            var sq = 0.0, sqx = 0.0
            for b in 0..<n / 32 {
                let blk = Array(src[(32 * b)..<(32 * b + 32)])
                let lo = blk.min()!, hi = blk.max()!, amax = blk.map { abs($0) }.max()!
                let bound: Float
                switch name {
                case "f32": bound = 0
                case "f16": bound = amax * 0x1p-11
                case "bf16": bound = amax * 0x1p-8
                case "q8_0": bound = amax / 127 * 0.51 + amax * 0x1p-10
                case "q4_0": bound = amax / 8 * 1.01          // the far side can clip by a whole step
                case "q5_0": bound = amax / 16 * 1.01
                case "q4_1": bound = (hi - lo) / 15 * 0.51 + (hi - lo) * 0x1p-9 + abs(lo) * 0x1p-10
                case "q5_1": bound = (hi - lo) / 31 * 0.51 + (hi - lo) * 0x1p-9 + abs(lo) * 0x1p-10
                default: bound = .infinity                   // K-quants: checked by RMS below
                }
                for j in 0..<32 {
                    let e = abs(back[32 * b + j] - blk[j])
                    XCTAssertLessThanOrEqual(e, bound + 1e-30, "\(name) block \(b) elem \(j)")
                    sq += Double(e * e)
                    sqx += Double(blk[j] * blk[j])
                }
            }
            let rel = (sq / sqx).squareRoot()
            // RMS error relative to RMS signal; uniform data: ideal step/sqrt(12) over the range
            // (measured on this data: q4_0 .065, q4_1 .062, q5_0 .032, q5_1 .030, q8_0 .0038, q4_k .057,
            // q5_k .027, q6_k .014, bf16 .0015)
            let limit: Double = ["q4_k": 0.07, "q5_k": 0.035, "q6_k": 0.018, "q4_0": 0.08, "q4_1": 0.075,
                                 "q5_0": 0.04, "q5_1": 0.038, "q8_0": 0.005][name] ?? 0.003
            XCTAssertLessThanOrEqual(rel, limit, "\(name) relative RMS error \(rel)")
        }
    }

    func testQuantizeRowRejectsBadInput() {
        var buf = [UInt8](repeating: 0, count: 1024)
        XCTAssertEqual(tern_quantize_row(Int32(TERN_Q4_K), [Float](repeating: 0, count: 100), &buf, 100), -1)
        XCTAssertEqual(tern_quantize_row(99, [Float](repeating: 0, count: 32), &buf, 32), -1)
    }

    // MARK: half / bfloat conversions and float helpers

    func testHalfConversionsExact() throws {
        let allHalves = (0...0xFFFF).map { UInt16($0) }
        tern_force_path(0)
        var ref = [Float](repeating: 0, count: allHalves.count)
        tern_f16_to_f32(allHalves, &ref, Int64(allHalves.count))
        for path in Self.paths {
            tern_force_path(path)
            var f = [Float](repeating: 0, count: allHalves.count)
            tern_f16_to_f32(allHalves, &f, Int64(allHalves.count))
            var back = [UInt16](repeating: 0, count: allHalves.count)
            tern_f32_to_f16(f, &back, Int64(f.count))
            for h in 0..<allHalves.count {
                if ref[h].isNaN {
                    XCTAssertTrue(f[h].isNaN)
                } else {
                    XCTAssertEqual(f[h].bitPattern, ref[h].bitPattern, "half \(h)")
                    XCTAssertEqual(back[h], UInt16(h), "round trip of half \(h) on path \(path)")
                }
            }
            // Values between halves: every path rounds to nearest even like the portable code.
            var rng = Rng(state: UInt64(path) + 3)
            let xs: [Float] = (0..<4099).map { i in
                let v = rng.float() * Float(1 << (i % 20)) * 0x1p-20
                guard i % 3 == 0 else { return v }
                let h = Float16(v)  // exact midpoint between two neighbouring halves: a rounding tie
                return (Float(h) + Float(h.nextUp)) / 2
            }
            var hs = [UInt16](repeating: 0, count: xs.count)
            tern_f32_to_f16(xs, &hs, Int64(xs.count))
            for i in 0..<xs.count {
                XCTAssertEqual(hs[i], Float16(xs[i]).bitPattern, "f32->f16 \(xs[i])")
            }
        }
        // gguf-py's decoding of the f16 fixture agrees (covers subnormals, signed zero, 65504).
        let raw = try load("f16.raw")
        let expected = try loadFloats("f16.deq.f32")
        let got = raw.withUnsafeBytes { dequantize(Int32(TERN_F16), $0.baseAddress!, expected.count) }
        XCTAssertEqual(got.map(\.bitPattern), expected.map(\.bitPattern))
    }

    func testFloatHelpersMatchNaiveLoops() {
        var rng = Rng(state: 11)
        for path in Self.paths {
            tern_force_path(path)
            for n in [0, 1, 7, 8, 15, 16, 17, 31, 33, 100, 1000] {
                let a = (0..<n).map { _ in rng.float() }, b = (0..<n).map { _ in rng.float() }
                let ah = a.map { Float16($0).bitPattern }
                var naive = 0.0, naiveH = 0.0, mag = 0.0
                for i in 0..<n {
                    naive += Double(a[i] * b[i])
                    naiveH += Double(Float(Float16(bitPattern: ah[i])) * b[i])
                    mag += Double(abs(a[i] * b[i]))
                }
                XCTAssertEqual(Double(tern_dot_f32(a, b, Int64(n))), naive, accuracy: 1e-6 * mag + 1e-12, "dot_f32 n=\(n)")
                XCTAssertEqual(Double(tern_dot_f16(ah, b, Int64(n))), naiveH, accuracy: 1e-6 * mag + 1e-12, "dot_f16 n=\(n)")
                let alpha: Float = 0.37
                var y = b, yh = b
                tern_axpy_f32(alpha, a, &y, Int64(n))
                tern_axpy_f16(alpha, ah, &yh, Int64(n))
                for i in 0..<n {
                    XCTAssertEqual(y[i], b[i] + alpha * a[i], accuracy: 1e-6)
                    XCTAssertEqual(yh[i], b[i] + alpha * Float(Float16(bitPattern: ah[i])), accuracy: 1e-6)
                }
            }
        }
    }

    /// Greedy sampling's argmax on every path against the plain loop: the first index of the largest value, NaN
    /// never chosen, ties (also +0 against -0) to the first, 0 when nothing exceeds -inf; lengths around the
    /// vector widths and a Gemma-sized row.
    func testArgmaxMatchesPlainLoop() {
        func reference(_ x: [Float]) -> Int {
            var best = 0, value = -Float.infinity
            for (i, v) in x.enumerated() where v > value { value = v; best = i }
            return best
        }
        var rng = Rng(state: 29)
        var rows: [[Float]] = []
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 100, 1000, 262_144] {
            var x = (0..<n).map { _ in rng.float() * 8 }
            rows.append(x)
            guard n > 2 else { continue }
            let i = Int(rng.next() % UInt64(n)), j = Int(rng.next() % UInt64(n))
            x[i] = 9; x[j] = 9  // a tie, in either order
            rows.append(x)
            x[min(i, j)] = .nan; x[n - 1] = .nan  // NaN beside and at the maximum
            rows.append(x)
            rows.append(x.map { _ in -Float.infinity })
            rows.append(x.map { _ in Float.nan })
            var z = x.map { _ in -Float.infinity }
            z[n / 2] = -0.0; z[n - 1] = 0.0
            rows.append(z)
            z[n / 3] = .infinity
            rows.append(z)
        }
        for path in Self.paths {
            tern_force_path(path)
            for x in rows {
                XCTAssertEqual(Int(tern_argmax_f32(x, Int64(x.count))), reference(x), "path \(path) n=\(x.count)")
            }
        }
    }

    func testTypeTableAndDispatch() {
        let expected: [(Int32, Int64, Int64)] = [
            (Int32(TERN_F32), 1, 4), (Int32(TERN_F16), 1, 2), (Int32(TERN_Q4_0), 32, 18), (Int32(TERN_Q4_1), 32, 20),
            (Int32(TERN_Q5_0), 32, 22), (Int32(TERN_Q5_1), 32, 24), (Int32(TERN_Q8_0), 32, 34),
            (Int32(TERN_Q4_K), 256, 144), (Int32(TERN_Q5_K), 256, 176), (Int32(TERN_Q6_K), 256, 210), (Int32(TERN_BF16), 1, 2),
        ]
        for (t, el, by) in expected {
            XCTAssertEqual(tern_type_supported(t), 1)
            XCTAssertEqual(tern_type_block_elements(t), el)
            XCTAssertEqual(tern_type_block_bytes(t), by)
        }
        XCTAssertEqual(tern_type_supported(10), 0)  // Q2_K: not handled
        XCTAssertEqual(tern_type_is_float(Int32(TERN_BF16)), 1)
        XCTAssertEqual(tern_type_is_float(Int32(TERN_Q8_0)), 0)
        let best = tern_best_path()
        XCTAssertEqual(tern_force_path(0), 0)
        XCTAssertEqual(tern_active_path(), 0)
        XCTAssertEqual(tern_force_path(2), min(2, best))
        XCTAssertEqual(tern_force_path(-1), best)
        XCTAssertEqual(String(cString: tern_path_name(0)), "scalar")
    }
}
