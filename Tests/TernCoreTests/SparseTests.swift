// Sparse matrices (docs/SPARSE_FORMATS.md): what the pruner keeps, what a blob decodes to, the products against
// a double-precision dense product of the decoded weights on every kernel path, batch independence, damaged blobs,
// and whole models converted with `tern convert --sparsity` against an independent reader of the format
// (scripts/sparse_reference.py, whose decoded matrices are the fixtures under Tests/Fixtures/sparse).

import CKernels
import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class SparseTests: XCTestCase {
    override func tearDown() {
        tern_force_path(-1)
        super.tearDown()
    }

    /// Deterministic values in [-1, 1), with a few six times larger, as real weights have.
    struct Values {
        var rng: SplitMix64
        init(state: UInt64) { rng = SplitMix64(seed: state) }
        mutating func next() -> Float {
            let u = rng.nextFloat()
            return rng.next() % 53 == 0 ? u * 6 : u
        }
    }

    /// A matrix pruned by magnitude, encoded, and parsed back from its blob (kept alive by the returned NSData).
    struct Made {
        let matrix: SparseMatrix
        let blob: NSData
        let source: [Float]
        let keep: [UInt8]
        let rows: Int, columns: Int
    }

    func make(_ pattern: SparsityOptions.Pattern, _ type: GGMLType, rows: Int, columns: Int, sparsity: Double = 0.5,
              groupRows: Int = 8, seed: UInt64 = 1) throws -> Made {
        var g = Values(state: seed)
        let source = (0..<(rows * columns)).map { _ in g.next() }
        let options = SparsityOptions(sparsity: sparsity, pattern: pattern, groupRows: groupRows)
        XCTAssertNil(options.problem(valueType: type))
        var writer = SparseMatrixWriter(layout: pattern.layout, valueType: type, rows: rows, columns: columns,
                                        keptChunks: pattern == .group ? options.keptChunks(columns: columns) : 0)
        let step = pattern == .group ? groupRows : 1
        var keep: [UInt8] = []
        try source.withUnsafeBufferPointer { s in
            for r0 in stride(from: 0, to: rows, by: step) {
                let n = min(step, rows - r0)
                let k = Pruner.keep(s.baseAddress! + r0 * columns, rows: n, columns: columns, options: options, norms: nil)
                keep += k
                try k.withUnsafeBufferPointer { kb in
                    for i in 0..<n {
                        let ok = writer.append(s.baseAddress! + (r0 + i) * columns, keep: kb.baseAddress! + i * columns)
                        if !ok { throw CheckpointError(file: "test", "row \(r0 + i) rejected") }
                    }
                }
            }
        }
        let blob = writer.blob() as NSData
        let m = try SparseMatrix(blob: blob.bytes, byteCount: blob.length, file: "test", name: "w")
        return Made(matrix: m, blob: blob, source: source, keep: keep, rows: rows, columns: columns)
    }

    static let cases: [(SparsityOptions.Pattern, GGMLType, Int)] = [
        (.group, .q4_0, 8), (.group, .q4_1, 8), (.group, .q8_0, 8), (.group, .q4_0, 1), (.nm24, .q4_0, 8), (.unstructured, .q4_0, 8),
    ]

    func decoded(_ m: SparseMatrix, _ r: Int) -> [Float] {
        var row = [Float](repeating: .nan, count: m.columns)
        row.withUnsafeMutableBufferPointer { m.dequantizeRow(r, into: $0.baseAddress!) }
        return row
    }

    // MARK: pruning and storage

    func testPatternsKeepTheLargestWeightsTheirRulesAllow() throws {
        let columns = 128
        for (pattern, type, groupRows) in Self.cases {
            let made = try make(pattern, type, rows: 24, columns: columns, groupRows: groupRows)
            for r in 0..<made.rows {
                let w = Array(made.source[(r * columns)..<((r + 1) * columns)])
                let k = Array(made.keep[(r * columns)..<((r + 1) * columns)])
                switch pattern {
                case .unstructured:
                    XCTAssertEqual(k.filter { $0 != 0 }.count, columns / 2)
                    let smallestKept = zip(w, k).filter { $0.1 != 0 }.map { abs($0.0) }.min()!
                    let largestDropped = zip(w, k).filter { $0.1 == 0 }.map { abs($0.0) }.max()!
                    XCTAssertGreaterThanOrEqual(smallestKept, largestDropped)
                case .nm24:
                    for g in 0..<(columns / 4) {
                        let ks = k[(4 * g)..<(4 * g + 4)], ws = w[(4 * g)..<(4 * g + 4)].map(abs)
                        XCTAssertEqual(ks.filter { $0 != 0 }.count, 2)
                        XCTAssertGreaterThanOrEqual(zip(ws, ks).filter { $0.1 != 0 }.map(\.0).min()!, zip(ws, ks).filter { $0.1 == 0 }.map(\.0).max()!)
                    }
                case .group:
                    XCTAssertEqual(k.filter { $0 != 0 }.count, 32 * made.matrix.keptChunks)
                    for c in 0..<(columns / 32) { XCTAssertEqual(Set(k[(32 * c)..<(32 * c + 32)]).count, 1, "chunks are kept whole") }
                    let octetStart = r / groupRows * groupRows
                    XCTAssertEqual(k, Array(made.keep[(octetStart * columns)..<((octetStart + 1) * columns)]), "rows of a group share chunks")
                }
            }
        }
    }

    func testWandaWeighsWeightsByTheirInputNorms() {
        // Column 0 holds the larger weight, but column 1's input is 10× larger: Wanda keeps column 1.
        var w = [Float](repeating: 0.01, count: 32)
        w[0] = 1.0
        w[1] = 0.5
        let options = SparsityOptions(sparsity: 31.0 / 32.0, pattern: .unstructured, method: .wanda)
        let norms = [Float](repeating: 1, count: 32).enumerated().map { $0.offset == 1 ? 10 : $0.element }
        let magnitude = Pruner.keep(w, rows: 1, columns: 32, options: options, norms: nil)
        let wanda = Pruner.keep(w, rows: 1, columns: 32, options: options, norms: norms)
        XCTAssertEqual(magnitude.firstIndex(of: 1), 0)
        XCTAssertEqual(wanda.firstIndex(of: 1), 1)
    }

    func testDecodedRowsAreTheKeptWeightsQuantizedAndZeroElsewhere() throws {
        for (pattern, type, groupRows) in Self.cases {
            let columns = 128
            let made = try make(pattern, type, rows: 16, columns: columns, groupRows: groupRows)
            for r in 0..<made.rows {
                let row = decoded(made.matrix, r)
                for c in 0..<(columns / 32) {
                    let range = (r * columns + 32 * c)..<(r * columns + 32 * c + 32)
                    let kept = range.filter { made.keep[$0] != 0 }
                    // Steps (Q4_0 rule: d = max/8, and the value opposite the maximum may clip by a whole step;
                    // Q4_1: (max - min)/15, half a step; Q8_0: max/127, half a step plus d's rounding to f16).
                    let amax = kept.map { abs(made.source[$0]) }.max() ?? 0
                    let bound: Float = type == .q8_0 ? amax / 220 : type == .q4_1 ? amax / 14 : amax / 8
                    for i in range {
                        let got = row[i - r * columns]
                        if made.keep[i] == 0 {
                            XCTAssertEqual(got, 0, "\(pattern) \(type): pruned weight \(i) is not zero")
                        } else {
                            XCTAssertLessThanOrEqual(abs(got - made.source[i]), bound * 1.001 + 1e-6, "\(pattern) \(type) weight \(i)")
                        }
                    }
                }
            }
            XCTAssertEqual(made.matrix.density, 0.5, accuracy: pattern == .unstructured ? 0.02 : 1e-9)
        }
    }

    // MARK: products

    func activations(rows m: Int, columns: Int, seed: UInt64) -> [tern_q8_block] {
        var g = Values(state: seed)
        let x = (0..<(m * columns)).map { _ in g.next() }
        var a = [tern_q8_block](repeating: tern_q8_block(), count: m * columns / 32)
        x.withUnsafeBufferPointer { xb in
            a.withUnsafeMutableBufferPointer { ab in
                for i in 0..<m { tern_quantize_activations(xb.baseAddress! + i * columns, ab.baseAddress! + i * columns / 32, Int64(columns)) }
            }
        }
        return a
    }

    func product(_ s: SparseMatrix, _ a: [tern_q8_block], m: Int, range: Range<Int>? = nil) -> [Float] {
        var out = [Float](repeating: .nan, count: m * s.rows)
        let r = range ?? 0..<s.rows
        a.withUnsafeBufferPointer { s.multiply($0.baseAddress!, m: m, out: &out, ldo: s.rows, r.lowerBound, r.upperBound) }
        return out
    }

    func testProductsEqualTheDenseProductOfTheDecodedWeightsOnEveryPath() throws {
        let rows = 44, columns = 192
        for (pattern, type, groupRows) in Self.cases {
            let made = try make(pattern, type, rows: rows, columns: columns, groupRows: groupRows, seed: 7)
            let packed = made.matrix.packed()
            if pattern == .group && groupRows == 8 && tern_best_path() >= TERN_PATH_AVX2 {
                XCTAssertNotNil(packed, "rows sharing their chunks in octets pack")
            } else {
                XCTAssertNil(packed, "\(pattern) groupRows \(groupRows) has no octet layout")
            }
            for m in [1, 3, 4, 5, 9, 17] {
                let a = activations(rows: m, columns: columns, seed: UInt64(m))
                var reference = [Double](repeating: 0, count: m * rows)
                for r in 0..<rows {
                    let w = decoded(made.matrix, r)
                    for i in 0..<m {
                        var s = 0.0
                        for j in 0..<columns { let b = a[i * columns / 32 + j / 32]; s += Double(w[j]) * Double(b.d) * Double(withUnsafeBytes(of: b.q) { Int8(bitPattern: $0[j % 32]) }) }
                        reference[i * rows + r] = s
                    }
                }
                let scale = reference.map(abs).max()!
                for path in 0...tern_best_path() {
                    tern_force_path(path)
                    for (label, matrix) in [("rows", made.matrix), ("octets", packed)] {
                        guard let matrix else { continue }
                        let got = product(matrix, a, m: m)
                        let err = zip(got, reference).map { abs(Double($0) - $1) }.max()!
                        XCTAssertLessThan(err / scale, 1e-5, "\(pattern) \(type) \(label) m=\(m) path \(path)")
                    }
                }
                tern_force_path(-1)
            }
        }
    }

    func testEachOutputDependsOnlyOnItsWeightRowAndActivationRow() throws {
        // m = 20: 2:4 and bitmask products of 16 rows or more decode panels to dense Q4_0 for the packed kernel,
        // and must still give the single-row kernel's bits.
        let rows = 40, columns = 128, m = 20
        for (pattern, type, groupRows) in Self.cases {
            let made = try make(pattern, type, rows: rows, columns: columns, groupRows: groupRows, seed: 11)
            for matrix in [made.matrix, made.matrix.packed()].compactMap({ $0 }) {
                let a = activations(rows: m, columns: columns, seed: 5)
                let batch = product(matrix, a, m: m)
                for i in 0..<m {
                    let one = Array(a[(i * columns / 32)..<((i + 1) * columns / 32)])
                    // Single activation rows, and row ranges that cut octets.
                    var pieces = [Float](repeating: .nan, count: rows)
                    for range in [0..<3, 3..<21, 21..<rows] {
                        let p = product(matrix, one, m: 1, range: range)
                        for r in range { pieces[r] = p[r] }
                    }
                    XCTAssertEqual(Array(batch[(i * rows)..<((i + 1) * rows)]), pieces, "\(pattern) \(type) row \(i)")
                }
            }
        }
    }

    // MARK: damaged blobs

    func testDamagedBlobsAreErrorsNotCrashes() throws {
        let made = try [make(.group, .q4_0, rows: 16, columns: 64, groupRows: 1), make(.nm24, .q4_0, rows: 8, columns: 64),
                        make(.unstructured, .q4_0, rows: 8, columns: 64)]
        func damaged(_ m: Made, _ edit: (UnsafeMutableRawPointer) -> Void) -> String? {
            let copy = NSMutableData(data: m.blob as Data)
            edit(copy.mutableBytes)
            do {
                _ = try SparseMatrix(blob: copy.bytes, byteCount: copy.length, file: "f.gguf", name: "blk.0.ffn_up.weight")
                return nil
            } catch let e as CheckpointError {
                XCTAssertTrue(e.description.contains("f.gguf") && e.description.contains("blk.0.ffn_up.weight"), e.description)
                return e.message
            } catch {
                return "\(error)"
            }
        }
        let indexAt = 128, valuesAt = { (m: Made) in Int(m.blob.bytes.loadUnaligned(fromByteOffset: 64, as: UInt64.self)) }
        let edits: [(Made, String, (UnsafeMutableRawPointer) -> Void)] = [
            (made[0], "version", { $0.storeBytes(of: UInt16(9), toByteOffset: 4, as: UInt16.self) }),
            (made[0], "layout", { $0.storeBytes(of: UInt16(7), toByteOffset: 6, as: UInt16.self) }),
            (made[0], "value type", { $0.storeBytes(of: UInt32(14), toByteOffset: 8, as: UInt32.self) }),
            (made[0], "columns", { $0.storeBytes(of: UInt64(63), toByteOffset: 24, as: UInt64.self) }),
            (made[0], "rows", { $0.storeBytes(of: UInt64(1 << 40), toByteOffset: 16, as: UInt64.self) }),
            (made[0], "values section", { $0.storeBytes(of: UInt64(1 << 20), toByteOffset: 72, as: UInt64.self) }),
            (made[0], "chunk number", { $0.storeBytes(of: UInt16(2), toByteOffset: indexAt, as: UInt16.self) }),
            (made[0], "kept chunks", { $0.storeBytes(of: UInt64(0), toByteOffset: 32, as: UInt64.self) }),
            (made[1], "2:4 mask", { p in p.storeBytes(of: UInt32(0x7), toByteOffset: valuesAt(made[1]), as: UInt32.self) }),
            (made[2], "row offset", { $0.storeBytes(of: UInt64(1 << 30), toByteOffset: indexAt + 8, as: UInt64.self) }),
            (made[2], "bitmask mask", { p in p.storeBytes(of: UInt32(0xffff_ffff), toByteOffset: valuesAt(made[2]), as: UInt32.self) }),
        ]
        for (m, what, edit) in edits {
            XCTAssertNotNil(damaged(m, edit), "a damaged \(what) was accepted")
        }
    }

    // MARK: whole models

    /// Logits of every position of a fixed prompt.
    func logits(_ m: LoadedModel, _ tokens: [Int32]) throws -> [Float] {
        let ws = m.model.makeWorkspace(maxTokens: 16, maxContext: 32, pool: WorkerPool(threads: 2))
        let p = try m.model.forward(tokens: tokens, memory: m.model.makeMemory(capacity: 32), workspace: ws, logitRows: 0..<tokens.count)
        return Array(UnsafeBufferPointer(start: p, count: tokens.count * m.llama!.config.vocabularySize))
    }

    func testConvertedSparseModelsComputeWhatTheirDecodedWeightsDo() throws {
        let src = try Checkpoint.open(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let dir = try TestPaths.temporaryDirectory()
        let tokens: [Int32] = [1, 317, 313, 11, 258, 220, 66, 265, 310]
        for (pattern, type) in [(SparsityOptions.Pattern.unstructured, GGMLType.q4_0), (.nm24, .q4_0), (.group, .q4_1), (.group, .q8_0)] {
            let sparsePath = dir + "/sparse.gguf", densePath = dir + "/dense.gguf"
            _ = try CheckpointConverter.convert(src, to: type, output: sparsePath,
                                                sparsity: SparsityOptions(sparsity: 0.5, pattern: pattern))
            let sparse = try LoadedModel(path: sparsePath)
            XCTAssertNotNil(sparse.checkpoint.tensors["blk.1.ffn_down.weight"]?.sparse)
            XCTAssertNil(sparse.checkpoint.tensors["token_embd.weight"]?.sparse)
            // The same weights decoded to F32 by the converter (which reads sparse tensors too).
            _ = try CheckpointConverter.convert(sparse.checkpoint, to: .f32, output: densePath)
            let dense = try LoadedModel(path: densePath)
            let a = try logits(sparse, tokens), b = try logits(dense, tokens)
            let scale = b.map(abs).max()!
            // Sparse products take 8-bit activations, F32 ones float activations: about 1% apart, never more.
            XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()! / scale, 0.03, "\(pattern) \(type)")
            let vocab = sparse.llama!.config.vocabularySize
            // Greedy choices agree up to near ties.
            for r in 0..<tokens.count {
                let ra = a[(r * vocab)..<((r + 1) * vocab)], rb = b[(r * vocab)..<((r + 1) * vocab)]
                let ia = ra.indices.max(by: { ra[$0] < ra[$1] })!, ib = rb.indices.max(by: { rb[$0] < rb[$1] })!
                XCTAssertLessThan(rb[ib] - rb[ia], 0.03 * scale, "\(pattern) \(type) position \(r)")
            }
        }
    }

    func testDenseMatricesWithZeroChunksRunAsGroupSparse() throws {
        guard tern_best_path() >= TERN_PATH_AVX2 else { throw XCTSkip("the octet layout needs AVX2") }
        // Pruned by group sparsity, then stored dense: the dense Q4_0 blocks of dropped chunks are zero.
        let src = try Checkpoint.open(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let dir = try TestPaths.temporaryDirectory()
        _ = try CheckpointConverter.convert(src, to: .q4_0, output: dir + "/group.gguf",
                                            sparsity: SparsityOptions(sparsity: 0.5, pattern: .group))
        _ = try CheckpointConverter.convert(try Checkpoint.open(path: dir + "/group.gguf"), to: .q4_0, output: dir + "/dense.gguf")
        let found = try LoadedModel(path: dir + "/dense.gguf")
        let layer = try XCTUnwrap(found.llama?.layers.first)
        let up = try XCTUnwrap(layer.up.sparse, "ffn_up has half its chunks zero in every octet")
        XCTAssertEqual(up.layout, .group)
        XCTAssertTrue(up.isPacked)
        XCTAssertEqual(up.density, 0.5)
        XCTAssertNil(found.llama!.output.sparse, "the embedding has no zero chunks")
        // The dense kernels on the same file (the scalar path neither packs nor looks for zeros) agree.
        let tokens: [Int32] = [1, 317, 313, 11, 258, 220, 66, 265, 310]
        let a = try logits(found, tokens)
        tern_force_path(0)
        let plain = try LoadedModel(path: dir + "/dense.gguf")
        XCTAssertNil(plain.llama!.layers[0].up.sparse)
        let b = try logits(plain, tokens)
        tern_force_path(-1)
        let scale = b.map(abs).max()!
        XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()! / scale, 1e-4)
    }

    func testDenseOctetsNeedingDifferentChunkCountsShareOnePaddedCount() throws {
        // Three octets of a 24 x 256 Q4_0 matrix need 5, 6 and 3 of their 8 chunks: the group matrix keeps 6 per
        // row (the largest need), padded with chunks that are zero, and decodes to the dense rows.
        let rows = 24, columns = 256, rowBytes = columns / 32 * GGMLType.q4_0.blockBytes
        let zeroChunks: [Set<Int>] = [[1, 2, 3], [5, 7], [0, 1, 2, 3, 4]]
        var g = Values(state: 3)
        let buffer = OwnedBuffer(size: rows * rowBytes)
        for r in 0..<rows {
            let x = (0..<columns).map { zeroChunks[r / 8].contains($0 / 32) ? 0 : g.next() }
            XCTAssertEqual(tern_quantize_row(Int32(GGMLType.q4_0.rawValue), x, buffer.pointer + r * rowBytes, Int64(columns)), 0)
        }
        let dense = WeightTensor(name: "w", type: .q4_0, shape: [columns, rows], data: UnsafeRawPointer(buffer.pointer),
                                 byteCount: rows * rowBytes, owner: buffer)
        let found = try XCTUnwrap(SparseMatrix.groupSparse(fromDense: dense))
        XCTAssertEqual(found.keptChunks, 6)
        for r in 0..<rows {
            var want = [Float](repeating: 0, count: columns)
            want.withUnsafeMutableBufferPointer { dense.dequantizeRow(r, into: $0.baseAddress!) }
            // Equal as numbers: a dense zero block decodes to -0 (0 × (0 - 8)), a dropped chunk to +0.
            XCTAssertEqual(decoded(found, r), want, "row \(r)")
        }
    }

    func testConverterRejectsOptionsThatDoNotFit() throws {
        let src = try Checkpoint.open(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let out = try TestPaths.temporaryDirectory() + "/x.gguf"
        for (options, type) in [(SparsityOptions(sparsity: 0.3, pattern: .nm24), GGMLType.q4_0),
                                (SparsityOptions(sparsity: 0.5, pattern: .unstructured), .q4_1),
                                (SparsityOptions(sparsity: 1.0, pattern: .group), .q4_0),
                                (SparsityOptions(sparsity: 0.5, pattern: .group, method: .wanda), .q4_0)] {
            XCTAssertThrowsError(try CheckpointConverter.convert(src, to: type, output: out, sparsity: options)) { e in
                XCTAssertTrue(e is CheckpointError, "\(e)")
            }
        }
    }

    func testWandaCalibrationSeesEveryMatrixInput() throws {
        let ck = try Checkpoint.open(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let stats = try Calibration.collect(checkpoint: ck, text: String(repeating: "the cat sat on the mat. ", count: 40),
                                            maxTokens: 200, window: 64, threads: 1)
        // 200 tokens in windows of 64 (63 and BOS when the tokenizer adds one).
        let bos = ck.tokenizerSpec.addBOS && ck.tokenizerSpec.bosID != nil
        XCTAssertEqual(stats.rowsSeen, bos ? 200 + 4 : 200)
        for l in 0..<2 {
            for (name, width) in [("attn_q", 64), ("attn_v", 64), ("attn_output", 64), ("ffn_up", 64), ("ffn_down", 128)] {
                let n = try XCTUnwrap(stats.columnNorms(tensor: "blk.\(l).\(name).weight"), name)
                XCTAssertEqual(n.count, width)
                XCTAssertTrue(n.allSatisfy { $0.isFinite && $0 >= 0 } && n.contains { $0 > 0 }, name)
            }
        }
        XCTAssertNil(stats.columnNorms(tensor: "token_embd.weight"))
    }

    /// The fixtures in Tests/Fixtures/sparse were written by `tern convert` and decoded by
    /// scripts/sparse_reference.py, a reader written from docs/SPARSE_FORMATS.md alone: Tern must decode the
    /// same floats, bit for bit, and its products must match the dense product of those floats.
    func testDecodingAgreesWithTheIndependentReader() throws {
        let base = TestPaths.fixture("sparse")
        let files = try FileManager.default.contentsOfDirectory(atPath: base).filter { $0.hasSuffix(".gguf") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, 4)
        for f in files {
            let stem = String(f.dropLast(5))
            let manifestData = try Data(contentsOf: URL(fileURLWithPath: "\(base)/\(stem)/manifest.json"))
            let ck = try Checkpoint.open(path: "\(base)/\(f)")
            let manifest = try XCTUnwrap(try JSONSerialization.jsonObject(with: manifestData) as? [[String: Any]] ??
                                         (JSONSerialization.jsonObject(with: manifestData) as? [String: Any])?["tensors"] as? [[String: Any]])
            XCTAssertFalse(manifest.isEmpty, f)
            for entry in manifest {
                let name = try XCTUnwrap(entry["name"] as? String)
                let t = try XCTUnwrap(ck.tensors[name], name)
                let s = try XCTUnwrap(t.sparse, name)
                let reference = try Data(contentsOf: URL(fileURLWithPath: "\(base)/\(stem)/\(name).f32"))
                XCTAssertEqual(reference.count, s.rows * s.columns * 4, name)
                for r in 0..<s.rows {
                    let row = decoded(s, r)
                    let want = reference.withUnsafeBytes { raw in
                        (0..<s.columns).map { Float(bitPattern: raw.loadUnaligned(fromByteOffset: (r * s.columns + $0) * 4, as: UInt32.self)) }
                    }
                    XCTAssertEqual(row.map(\.bitPattern), want.map(\.bitPattern), "\(f) \(name) row \(r)")
                }
            }
        }
    }
}
