// compressed-tensors checkpoints (scripts/make_compressed_tensors_fixtures.py, written by the library's own
// compressors): sparse (and sparse FP8) weights decompressed at load equal their dense twins bit for bit and run as
// the same model; integer scales of every strategy dequantize as compressed-tensors computes them; and every damaged
// companion tensor, scale or config is a CheckpointError naming the file — never a crash.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class CompressedTensorsTests: XCTestCase {
    static let pairs: [(compressed: String, dense: String, format: CompressedTensors.SparsityFormat)] = [
        ("compressed_tensors/bitmask", "compressed_tensors/bitmask-dense", .bitmask),
        ("compressed_tensors/sparse24", "compressed_tensors/sparse24-dense", .bitmask24),
        // FP8 values under the 2:4 bitmask, dequantized with per-channel BF16 scales; the dense twin is what
        // compressed-tensors' own decompressors made of the same file.
        ("compressed_tensors/sparse24-fp8", "compressed_tensors/sparse24-fp8-dense", .bitmask24),
    ]

    func testDecompressedTensorsEqualTheDensePrunedCheckpoint() throws {
        for pair in Self.pairs {
            let path = TestPaths.fixture(pair.compressed)
            // The fixture really is compressed: no dense matrix, but its companions.
            let raw = try SafetensorsFile(path: path + "/model.safetensors")
            XCTAssertNil(raw.tensors["model.layers.0.mlp.up_proj.weight"])
            XCTAssertNotNil(raw.tensors["model.layers.0.mlp.up_proj.bitmask"])

            let compressed = try Checkpoint.open(path: path)
            let dense = try Checkpoint.open(path: TestPaths.fixture(pair.dense))
            XCTAssertEqual(compressed.compression?.sparsity, pair.format)
            XCTAssertEqual(compressed.compression?.quantizationFormat, pair.compressed.hasSuffix("fp8") ? "float-quantized" : nil)
            XCTAssertNil(dense.compression)
            XCTAssertEqual(Set(compressed.tensors.keys), Set(dense.tensors.keys), pair.compressed)
            XCTAssertTrue(compressed.tensors.keys.contains("blk.0.ffn_up.weight"))
            for (name, d) in dense.tensors {
                let c = try XCTUnwrap(compressed.tensors[name], name)
                XCTAssertEqual(c.name, name)
                XCTAssertEqual(c.type, d.type, name)
                XCTAssertEqual(c.shape, d.shape, name)
                XCTAssertEqual(c.byteCount, d.byteCount, name)
                XCTAssertEqual(memcmp(c.data, d.data, d.byteCount), 0, "\(pair.compressed): \(name) differs")
            }
            // The pruning is what the format claims, so the comparison above covered real zeros.
            let down = try XCTUnwrap(compressed.tensors["blk.1.ffn_down.weight"])
            XCTAssertEqual(down.shape, [44, 32])   // 44 columns: each bitmask row ends in half a byte
            let zeros = (0..<down.elementCount).filter { down.data.load(fromByteOffset: $0 * 2, as: UInt16.self) == 0 }.count
            XCTAssertEqual(zeros, down.elementCount / 2, pair.compressed)
        }
    }

    func testModelRunsLikeTheDenseCheckpoint() throws {
        for pair in Self.pairs {
            let compressed = try LoadedModel(path: TestPaths.fixture(pair.compressed))
            let dense = try LoadedModel(path: TestPaths.fixture(pair.dense))
            let tokens = dense.tokenizer.encode("Hello, the cat sat on the mat and looked at the dog.")
            XCTAssertEqual(compressed.tokenizer.encode("Hello, the cat sat on the mat and looked at the dog."), tokens)
            let a = try allPositionLogits(compressed.model, tokens: tokens)
            let b = try allPositionLogits(dense.model, tokens: tokens)
            let err = relativeLogitError(a, b)
            XCTAssertLessThan(err, 1e-6, "\(pair.compressed): relative logit error \(err)")

            var greedy: [[Int32]] = []
            for loaded in [compressed, dense] {
                let gen = TextGenerator(loaded: loaded, contextLength: 128, threads: 2)
                let r = try gen.generate(GenerationRequest(promptTokens: tokens, maxTokens: 12, ignoreEOS: true))
                XCTAssertEqual(r.tokens.count, 12)
                greedy.append(r.tokens)
            }
            XCTAssertEqual(greedy[0], greedy[1], pair.compressed)
        }
    }

    func testIntegerQuantizationStrategies() throws {
        // No fixture writer covers int8 strategies cheaply, so the test builds them: layer 0's q_proj (32×32) becomes
        // I8 values with scales (and zero points) of each shape compressed-tensors' dequantize tells apart.
        let groupOf = (0..<32).map { Int32(($0 * 3) % 4) }   // 0,3,2,1,0,...: 8 columns in each of 4 groups
        try checkIntegerQuantization("tensor", scaleShape: [1], zeroPoints: false) { _, _ in 0 }
        try checkIntegerQuantization("channel", scaleShape: [32, 1], zeroPoints: true) { r, _ in r }
        try checkIntegerQuantization("channel, f32", scaleShape: [32, 1], zeroPoints: true, f32: true) { r, _ in r }
        try checkIntegerQuantization("group", scaleShape: [32, 4], zeroPoints: true) { r, c in r * 4 + c / 8 }
        try checkIntegerQuantization("shared group", scaleShape: [1, 4], zeroPoints: false) { _, c in c / 8 }
        try checkIntegerQuantization("group with g_idx", scaleShape: [32, 4], zeroPoints: true, groupIndex: groupOf) { r, c in
            r * 4 + Int(groupOf[c])
        }
        try checkIntegerQuantization("block", scaleShape: [4, 2], zeroPoints: false) { r, c in (r / 8) * 2 + c / 16 }
    }

    func checkIntegerQuantization(_ what: String, scaleShape: [Int], zeroPoints: Bool, f32: Bool = false, groupIndex: [Int32]? = nil,
                                  scaleIndex: (Int, Int) -> Int) throws {
        let dir = try copy("compressed_tensors/bitmask")
        try editConfig(dir) { q in
            q["format"] = "int-quantized"
            q["config_groups"] = ["group_0": ["targets": ["Linear"], "weights": ["num_bits": 8, "type": "int"]]]
        }
        let st = dir + "/model.safetensors"
        var tensors = try readTensors(st)
        let w = "model.layers.0.self_attn.q_proj"
        for c in ["shape", "compressed", "bitmask", "row_offsets"] { tensors[w + "." + c] = nil }
        let rows = 32, columns = 32, count = scaleShape.reduce(1, *)
        let q = (0..<(rows * columns)).map { Int8(truncatingIfNeeded: ($0 * 37) % 255 - 127) }
        let scales = (0..<count).map { Float16(Float($0 % 13 + 1) / 64) }
        let zeros = (0..<count).map { zeroPoints ? Int8($0 % 7 - 3) : 0 }
        tensors[w + ".weight"] = RawTensor(dtype: "I8", shape: [rows, columns], bytes: q.map { UInt8(bitPattern: $0) })
        tensors[w + ".weight_scale"] = f32
            ? RawTensor(dtype: "F32", shape: scaleShape, bytes: scales.flatMap { withUnsafeBytes(of: Float($0)) { Array($0) } })
            : RawTensor(dtype: "F16", shape: scaleShape, bytes: scales.flatMap { withUnsafeBytes(of: $0.bitPattern) { Array($0) } })
        if zeroPoints {
            tensors[w + ".weight_zero_point"] = RawTensor(dtype: "I8", shape: scaleShape, bytes: zeros.map { UInt8(bitPattern: $0) })
        }
        if let groupIndex { tensors[w + ".weight_g_idx"] = RawTensor(dtype: "I32", shape: [columns], int32s: groupIndex) }
        try writeTensors(tensors, to: st)

        let ck = try Checkpoint.open(path: dir)
        let t = try XCTUnwrap(ck.tensors["blk.0.attn_q.weight"])
        XCTAssertEqual(t.type, f32 ? .f32 : .f16, what)
        XCTAssertEqual(t.shape, [columns, rows], what)
        var wrong = 0
        for r in 0..<rows {
            for c in 0..<columns {
                let i = scaleIndex(r, c)
                // Small integers are exact in F16 and F32, so only the product rounds.
                let product = (Float(q[r * columns + c]) - Float(zeros[i])) * Float(scales[i])
                let got = f32 ? t.data.load(fromByteOffset: (r * columns + c) * 4, as: UInt32.self)
                              : UInt32(t.data.load(fromByteOffset: (r * columns + c) * 2, as: UInt16.self))
                if got != (f32 ? product.bitPattern : UInt32(Float16(product).bitPattern)) { wrong += 1 }
            }
        }
        XCTAssertEqual(wrong, 0, "\(what): \(wrong) values differ")
        XCTAssertFalse(ck.tensors.keys.contains { $0.contains("weight_") }, what)
        XCTAssertEqual(ck.tensors["blk.0.attn_k.weight"]?.type, .f16, what)   // still the sparse group
    }

    // MARK: config.json

    func testDenseQuantizationFormatLoadsWithSparsity() throws {
        let dir = try copy("compressed_tensors/bitmask")
        try editConfig(dir) { q in
            q["format"] = "dense"
            q["quantization_status"] = "frozen"
            q["config_groups"] = ["group_0": ["targets": ["Linear"], "format": "dense",
                                              "weights": ["num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"]]]
        }
        // Scales and zero points ride along in a quantized model's file; with dense weights Tern has no use for them.
        let st = dir + "/model.safetensors"
        var tensors = try readTensors(st)
        tensors["model.layers.0.self_attn.q_proj.weight_scale"] = RawTensor(dtype: "F32", shape: [32, 1], bytes: [UInt8](repeating: 0, count: 128))
        tensors["model.layers.0.self_attn.q_proj.weight_zero_point"] = RawTensor(dtype: "I8", shape: [32, 1], bytes: [UInt8](repeating: 0, count: 32))
        tensors["model.layers.0.self_attn.k_scale"] = RawTensor(dtype: "F32", shape: [1], bytes: [0, 0, 128, 63])
        try writeTensors(tensors, to: st)
        let ck = try Checkpoint.open(path: dir)
        XCTAssertFalse(ck.tensors.keys.contains { $0.hasSuffix("_scale") || $0.hasSuffix("_zero_point") })
        XCTAssertEqual(ck.compression?.sparsity, .bitmask)
        XCTAssertEqual(ck.compression?.quantizationFormat, "dense")
        let dense = try Checkpoint.open(path: TestPaths.fixture("compressed_tensors/bitmask-dense"))
        let t = try XCTUnwrap(ck.tensors["blk.0.attn_q.weight"]), d = try XCTUnwrap(dense.tensors["blk.0.attn_q.weight"])
        XCTAssertEqual(memcmp(t.data, d.data, d.byteCount), 0)
    }

    func testUnsupportedFormatsNameConfigAndFormat() throws {
        let cases: [(String, ([String: Any]) -> [String: Any], String)] = [
            ("quantized", { q in var q = q; q["format"] = "pack-quantized"
                            q["config_groups"] = ["group_0": ["targets": ["Linear"]]]; return q }, "'pack-quantized'"),
            ("group", { q in var q = q; q["format"] = "mixed-precision"
                        q["config_groups"] = ["group_0": ["targets": ["Linear"], "format": "float-quantized"],
                                              "group_1": ["targets": ["Linear"], "format": "marlin-24"]]; return q },
             "'marlin-24'"),
            ("mixed", { q in var q = q; q["format"] = "mixed-precision"; q["config_groups"] = ["group_0": ["targets": ["Linear"]]]; return q },
             "'mixed-precision'"),
            ("sparsity", { q in var q = q; var s = q["sparsity_config"] as! [String: Any]
                           s["format"] = "sparse-bogus"; q["sparsity_config"] = s; return q }, "'sparse-bogus'"),
            ("noformat", { q in var q = q; var s = q["sparsity_config"] as! [String: Any]
                           s["format"] = nil; q["sparsity_config"] = s; return q }, "sparsity_config has no format"),
            ("notobject", { q in var q = q; q["sparsity_config"] = "sparse-bitmask"; return q }, "not a JSON object"),
        ]
        for (name, edit, fragment) in cases {
            let dir = try copy("compressed_tensors/bitmask")
            try editConfig(dir) { q in q = edit(q) }
            assertCheckpointError(dir, file: dir + "/config.json", contains: fragment, name)
        }
    }

    // MARK: damaged companions

    func testDamagedBitmaskCheckpointsAreErrors() throws {
        let w = "model.layers.0.mlp.down_proj"
        let cases: [(String, (inout [String: RawTensor]) -> Void, String)] = [
            ("truncated bitmask", { t in t[w + ".bitmask"]!.shape = [32, 5]; t[w + ".bitmask"]!.bytes.removeLast(32) },
             "needs [32, 6]"),
            ("row_offsets past the end", { t in t[w + ".row_offsets"]!.setInt64(at: 31, 1 << 40) }, "row_offsets"),
            ("row_offsets negative", { t in t[w + ".row_offsets"]!.setInt64(at: 3, -5) }, "row_offsets"),
            ("short row_offsets", { t in t[w + ".row_offsets"]!.shape = [31]; t[w + ".row_offsets"]!.bytes.removeLast(8) },
             "expected [32]"),
            ("missing row_offsets", { t in t[w + ".row_offsets"] = nil }, "lacks its companion '\(w).row_offsets'"),
            ("missing bitmask", { t in t[w + ".bitmask"] = nil }, "lacks its companion '\(w).bitmask'"),
            ("missing compressed", { t in t[w + ".compressed"] = nil }, "lacks its companion '\(w).compressed'"),
            ("missing shape", { t in t[w + ".shape"] = nil }, "lacks its companion '\(w).shape'"),
            ("short values", { t in t[w + ".compressed"]!.shape = [703]; t[w + ".compressed"]!.bytes.removeLast(2) },
             "marks 704 values"),
            ("extra bit", { t in t[w + ".bitmask"]!.bytes[0] = 0xFF; t[w + ".bitmask"]!.bytes[1] = 0xFF }, "values"),
            ("negative shape", { t in t[w + ".shape"]!.setInt64(at: 0, -32) }, "not a matrix shape"),
            ("huge shape", { t in t[w + ".shape"]!.setInt64(at: 0, 1 << 40) }, "not a matrix shape"),
            ("3-d shape", { t in t[w + ".shape"] = RawTensor(dtype: "I64", shape: [3], int64s: [32, 44, 1]) }, "not a matrix shape"),
            ("float shape", { t in t[w + ".shape"]!.dtype = "F64" }, "expected integers"),
            ("float bitmask", { t in t[w + ".bitmask"]!.dtype = "F16"; t[w + ".bitmask"]!.shape = [32, 3] }, "expected U8"),
            ("fp8 values without a scale", { t in t[w + ".compressed"]!.dtype = "F8_E4M3"; t[w + ".compressed"]!.bytes.removeLast(704) },
             "holds F8_E4M3 values and no weight_scale"),
            ("f64 values", { t in t[w + ".compressed"]!.dtype = "F64"; t[w + ".compressed"]!.shape = [176] }, "has dtype F64"),
            ("dense and compressed", { t in t[w + ".weight"] = RawTensor(dtype: "F16", shape: [32, 44], bytes: [UInt8](repeating: 0, count: 32 * 44 * 2)) },
             "both dense and"),
        ]
        try checkDamaged("compressed_tensors/bitmask", cases)
    }

    func testDamaged24CheckpointsAreErrors() throws {
        let w = "model.layers.1.self_attn.q_proj"
        let cases: [(String, (inout [String: RawTensor]) -> Void, String)] = [
            ("truncated bitmask", { t in t[w + ".bitmask"]!.shape = [31, 4]; t[w + ".bitmask"]!.bytes.removeLast(4) }, "needs [32, 4]"),
            ("wrong values shape", { t in t[w + ".compressed"]!.shape = [16, 32] }, "expected [32, 16]"),
            ("extra bit", { t in t[w + ".bitmask"]!.bytes[0] |= 0xFF }, "2:4 sparsity keeps 512"),
            ("stray row_offsets", { t in t[w + ".row_offsets"] = RawTensor(dtype: "I64", shape: [32], int64s: Array(repeating: 0, count: 32)) },
             "does not belong to the sparse-24-bitmask format"),
            ("missing shape", { t in t[w + ".shape"] = nil }, "lacks its companion '\(w).shape'"),
            ("odd columns", { t in t[w + ".shape"] = RawTensor(dtype: "I64", shape: [2, 1], int64s: [32, 30]) }, "not a multiple of 4"),
        ]
        try checkDamaged("compressed_tensors/sparse24", cases)
    }

    func testDamagedQuantizedCheckpointsAreErrors() throws {
        let w = "model.layers.0.mlp.gate_proj"   // 44 rows
        let cases: [(String, (inout [String: RawTensor]) -> Void, String)] = [
            ("missing scale", { t in t[w + ".weight_scale"] = nil }, "holds F8_E4M3 values and no weight_scale"),
            // [22, 2] would be valid blocks of 2×16; 32 columns do not split into 11.
            ("scale blocks", { t in t[w + ".weight_scale"]!.shape = [4, 11] }, "does not fit the 44×32 weight"),
            ("scale too many", { t in t[w + ".weight_scale"]!.shape = [2, 22] }, "does not fit"),
            ("scale 3-d", { t in t[w + ".weight_scale"]!.shape = [44, 1, 1] }, "at most 2 dimensions"),
            ("per-tensor scale of 44", { t in t[w + ".weight_scale"]!.shape = [44] }, "one value"),
            ("integer scale", { t in t[w + ".weight_scale"]!.dtype = "I16" }, "expected F32, F16 or BF16"),
            ("zero point count", { t in t[w + ".weight_zero_point"] = RawTensor(dtype: "I8", shape: [3], bytes: [0, 0, 0]) },
             "has 3 values but the scale 44"),
            ("global scale", { t in t[w + ".weight_global_scale"] = RawTensor(dtype: "F32", shape: [1], bytes: [0, 0, 128, 63]) },
             "global"),
            ("scale without weight", { t in t["model.layers.0.mlp.gate.weight_scale"] = t[w + ".weight_scale"] }, "has no weight"),
            ("uneven g_idx", { t in
                t[w + ".weight_scale"] = RawTensor(dtype: "BF16", shape: [44, 4], bytes: Array(repeating: [0x80, 0x3F], count: 176).flatMap { $0 })
                t[w + ".weight_g_idx"] = RawTensor(dtype: "I32", shape: [32], int32s: Array(repeating: 0, count: 32)) },
             "does not give each of the 4 groups 8 columns"),
            ("g_idx out of range", { t in
                t[w + ".weight_scale"] = RawTensor(dtype: "BF16", shape: [44, 4], bytes: Array(repeating: [0x80, 0x3F], count: 176).flatMap { $0 })
                t[w + ".weight_g_idx"] = RawTensor(dtype: "I32", shape: [32], int32s: (0..<32).map { $0 == 5 ? 9 : Int32($0 % 4) }) },
             "names group 9 of 4"),
            ("short g_idx", { t in
                t[w + ".weight_scale"] = RawTensor(dtype: "BF16", shape: [44, 4], bytes: Array(repeating: [0x80, 0x3F], count: 176).flatMap { $0 })
                t[w + ".weight_g_idx"] = RawTensor(dtype: "I32", shape: [31], int32s: Array(repeating: 0, count: 31)) },
             "expected [32]"),
        ]
        try checkDamaged("compressed_tensors/sparse24-fp8", cases)
    }

    func testTruncatedFileIsAnError() throws {
        let dir = try copy("compressed_tensors/sparse24")
        let st = dir + "/model.safetensors"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: st))
        try bytes.prefix(bytes.count - 100).write(to: URL(fileURLWithPath: st))
        assertCheckpointError(dir, file: st, contains: "outside the file", "truncated")
    }

    // MARK: tern inspect

    func testInspectNamesTheSparsityFormat() throws {
        let tern = try TestPaths.ternBinary()
        let r = try runProcess(tern, ["inspect", TestPaths.fixture("compressed_tensors/sparse24")])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("compression: compressed-tensors (sparsity sparse-24-bitmask), decompressed at load"), r.stdout)
        XCTAssertTrue(r.stdout.contains("blk.1.ffn_down.weight"), r.stdout)
    }

    // MARK: helpers

    struct RawTensor {
        var dtype: String
        var shape: [Int]
        var bytes: [UInt8]

        init(dtype: String, shape: [Int], bytes: [UInt8]) { self.dtype = dtype; self.shape = shape; self.bytes = bytes }
        init(dtype: String, shape: [Int], int64s: [Int64]) {
            self.init(dtype: dtype, shape: shape, bytes: int64s.flatMap { v in (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } })
        }
        init(dtype: String, shape: [Int], int32s: [Int32]) {
            self.init(dtype: dtype, shape: shape, bytes: int32s.flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } })
        }
        mutating func setInt64(at index: Int, _ v: Int64) {
            for i in 0..<8 { bytes[index * 8 + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
        }
    }

    func readTensors(_ path: String) throws -> [String: RawTensor] {
        let st = try SafetensorsFile(path: path)
        var out: [String: RawTensor] = [:]
        for (name, info) in st.tensors {
            let p = (st.file.base + info.fileOffset).assumingMemoryBound(to: UInt8.self)
            out[name] = RawTensor(dtype: info.dtype, shape: info.shape, bytes: Array(UnsafeBufferPointer(start: p, count: info.byteCount)))
        }
        return out
    }

    /// A safetensors file as the format says, without checking that sizes fit dtypes and shapes (the damage is
    /// deliberate; a too-short payload would fail in SafetensorsFile before reaching the decompressor, so the cases
    /// above keep shapes and byte counts in step).
    func writeTensors(_ tensors: [String: RawTensor], to path: String) throws {
        var header: [String: Any] = ["__metadata__": ["format": "pt"]]
        var data: [UInt8] = []
        for name in tensors.keys.sorted() {
            let t = tensors[name]!
            header[name] = ["dtype": t.dtype, "shape": t.shape, "data_offsets": [data.count, data.count + t.bytes.count]]
            data += t.bytes
        }
        var json = [UInt8](try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var out: [UInt8] = (0..<8).map { UInt8(truncatingIfNeeded: UInt64(json.count) >> (8 * UInt64($0))) }
        out += json
        out += data
        try Data(out).write(to: URL(fileURLWithPath: path))
    }

    func checkDamaged(_ fixture: String, _ cases: [(String, (inout [String: RawTensor]) -> Void, String)]) throws {
        let original = try readTensors(TestPaths.fixture(fixture) + "/model.safetensors")
        for (name, damage, fragment) in cases {
            let dir = try copy(fixture)
            var tensors = original
            damage(&tensors)
            let st = dir + "/model.safetensors"
            try writeTensors(tensors, to: st)
            assertCheckpointError(dir, file: st, contains: fragment, name)
        }
    }

    func copy(_ fixture: String) throws -> String {
        let dir = try TestPaths.temporaryDirectory() + "/model"
        try FileManager.default.copyItem(atPath: TestPaths.fixture(fixture), toPath: dir)
        return dir
    }

    func editConfig(_ dir: String, _ edit: (inout [String: Any]) -> Void) throws {
        let url = URL(fileURLWithPath: dir + "/config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        var q = config["quantization_config"] as! [String: Any]
        edit(&q)
        config["quantization_config"] = q
        try JSONSerialization.data(withJSONObject: config).write(to: url)
    }

    func assertCheckpointError(_ dir: String, file expectedFile: String, contains fragment: String, _ what: String,
                               file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try LoadedModel(path: dir)
            XCTFail("\(what): loaded although it is broken", file: file, line: line)
        } catch let e as CheckpointError {
            XCTAssertEqual(e.file, expectedFile, "\(what): \(e)", file: file, line: line)
            XCTAssertTrue(e.message.contains(fragment), "\(what): '\(e)' lacks '\(fragment)'", file: file, line: line)
        } catch {
            XCTFail("\(what): unexpected error type: \(error)", file: file, line: line)
        }
    }
}
