// Checkpoint readers: GGUF and safetensors read what the Python writers (gguf, hand-written safetensors)
// produced, the GGUF writer round-trips, and broken files are errors that name the file — never crashes.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class CheckpointTests: XCTestCase {
    let f32 = TestPaths.fixture("llama/llama-f32.gguf")

    func testReadsGGUFMetadataAndTensors() throws {
        let g = try GGUFFile(path: f32)
        XCTAssertEqual(g.version, 3)
        XCTAssertEqual(g.string("general.architecture"), "llama")
        XCTAssertEqual(g.int("llama.embedding_length"), 64)
        XCTAssertEqual(try g.stringArray("tokenizer.ggml.tokens")?.count, 320)
        let q = try XCTUnwrap(g.tensor(named: "blk.0.attn_k.weight"))
        XCTAssertEqual(q.shape, [64, 32])
        XCTAssertEqual(q.type, .f32)
        XCTAssertEqual(q.byteCount, 64 * 32 * 4)
        XCTAssertEqual(q.fileOffset % g.alignment, 0)
    }

    func testQuantizedFixturesHaveExpectedTypes() throws {
        for (file, type) in [("llama-q8_0.gguf", GGMLType.q8_0), ("llama-q4_0.gguf", .q4_0), ("llama-q4_1.gguf", .q4_1), ("llama-f16.gguf", .f16)] {
            let g = try GGUFFile(path: TestPaths.fixture("llama/" + file))
            XCTAssertEqual(g.tensor(named: "blk.1.ffn_down.weight")?.type, type, file)
            XCTAssertEqual(g.tensor(named: "blk.1.ffn_norm.weight")?.type, .f32, file)
        }
    }

    func testSafetensorsShardsMatchSingleFile() throws {
        let one = try Checkpoint.open(path: TestPaths.fixture("llama/llama-hf"))
        let sharded = try Checkpoint.open(path: TestPaths.fixture("llama/llama-hf-sharded"))
        XCTAssertEqual(Set(one.tensors.keys), Set(sharded.tensors.keys))
        XCTAssertTrue(one.tensors.keys.contains("blk.1.attn_q.weight"))
        for (name, t) in one.tensors {
            let s = try XCTUnwrap(sharded.tensors[name])
            XCTAssertEqual(t.shape, s.shape, name)
            XCTAssertEqual(memcmp(t.data, s.data, t.byteCount), 0, name)
        }
        // HF [out, in] appears in GGML order [in, out].
        XCTAssertEqual(one.tensors["blk.0.attn_k.weight"]?.shape, [64, 32])
    }

    func testWriterRoundTripsEverything() throws {
        let src = try GGUFFile(path: f32)
        let out = try TestPaths.temporaryDirectory() + "/copy.gguf"
        try rewrite(src, to: out) { _, _ in }
        let back = try GGUFFile(path: out)
        XCTAssertEqual(back.metadataKeys, src.metadataKeys)
        for k in src.metadataKeys { XCTAssertEqual(back.metadata[k]?.description, src.metadata[k]?.description, k) }
        XCTAssertEqual(try back.stringArray("tokenizer.ggml.merges"), try src.stringArray("tokenizer.ggml.merges"))
        XCTAssertEqual(back.tensors.map(\.name), src.tensors.map(\.name))
        for t in src.tensors {
            let b = try XCTUnwrap(back.tensor(named: t.name))
            XCTAssertEqual(b.shape, t.shape)
            XCTAssertEqual(b.type, t.type)
            XCTAssertEqual(memcmp(back.file.base + b.fileOffset, src.file.base + t.fileOffset, t.byteCount), 0)
        }
    }

    /// Copies a GGUF file through GGUFWriter, letting `edit` change metadata and tensor types.
    func rewrite(_ src: GGUFFile, to path: String, edit: (inout GGUFWriter, inout [String: GGMLType]) -> Void) throws {
        var w = GGUFWriter()
        for k in src.metadataKeys { w.set(k, src.metadata[k]!) }
        var types: [String: GGMLType] = [:]
        edit(&w, &types)
        for t in src.tensors {
            let base = src.file.base + t.fileOffset
            let n = t.byteCount
            w.tensors.append(GGUFWriter.Tensor(name: t.name, type: types[t.name] ?? t.type, shape: t.shape, byteCount: n) { out in
                out.copyMemory(from: UnsafeRawBufferPointer(start: base, count: n))
            })
        }
        try w.write(to: path)
    }

    // MARK: broken files

    func assertCheckpointError(_ path: String, contains fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try LoadedModel(path: path)
            XCTFail("\(path) loaded although it is broken", file: file, line: line)
        } catch let e as CheckpointError {
            XCTAssertEqual(e.file, path, file: file, line: line)
            XCTAssertTrue(e.description.contains(fragment), "'\(e)' lacks '\(fragment)'", file: file, line: line)
        } catch {
            XCTFail("unexpected error type: \(error)", file: file, line: line)
        }
    }

    func corrupted(_ name: String, _ mutate: (inout [UInt8]) -> Void) throws -> String {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: f32)))
        mutate(&bytes)
        let path = try TestPaths.temporaryDirectory() + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    func putU64(_ bytes: inout [UInt8], at offset: Int, _ v: UInt64) {
        for i in 0..<8 { bytes[offset + i] = UInt8((v >> (8 * UInt64(i))) & 0xFF) }
    }

    func testTruncatedHeader() throws {
        assertCheckpointError(try corrupted("header.gguf") { $0 = Array($0[0..<20]) }, contains: "truncated")
        assertCheckpointError(try corrupted("meta.gguf") { $0 = Array($0[0..<3000]) }, contains: "truncated")
    }

    func testTensorDataPastEnd() throws {
        assertCheckpointError(try corrupted("half.gguf") { $0 = Array($0[0..<($0.count / 2)]) }, contains: "past the end")
    }

    func testAbsurdCounts() throws {
        assertCheckpointError(try corrupted("tensors.gguf") { self.putU64(&$0, at: 8, 1 << 60) }, contains: "tensor_count")
        assertCheckpointError(try corrupted("kv.gguf") { self.putU64(&$0, at: 16, 1 << 62) }, contains: "metadata_kv_count")
        // The first key's length.
        assertCheckpointError(try corrupted("keylen.gguf") { self.putU64(&$0, at: 24, 1 << 50) }, contains: "more than the file holds")
    }

    func testBadMagicAndVersion() throws {
        assertCheckpointError(try corrupted("magic.gguf") { $0[0] = 0; $0[1] = 0 }, contains: "not a GGUF file")
        assertCheckpointError(try corrupted("version.gguf") { $0[4] = 9 }, contains: "version 9")
    }

    func testUnsupportedArchitecture() throws {
        let path = try TestPaths.temporaryDirectory() + "/arch.gguf"
        try rewrite(try GGUFFile(path: f32), to: path) { w, _ in w.set("general.architecture", .string("gpt9000")) }
        assertCheckpointError(path, contains: "unsupported architecture 'gpt9000'")
    }

    func testUnsupportedTensorType() throws {
        let path = try TestPaths.temporaryDirectory() + "/type.gguf"
        // Same bytes, declared as I32: readable, but no model can compute with it.
        try rewrite(try GGUFFile(path: f32), to: path) { _, types in types["blk.0.attn_norm.weight"] = .i32 }
        assertCheckpointError(path, contains: "unsupported tensor type I32")
        let unknown = try corrupted("typeid.gguf") { bytes in
            // Patch the type id of the first tensor info: find "token_embd.weight" and skip name, dims.
            let name = Array("token_embd.weight".utf8)
            let at = (0..<(bytes.count - name.count)).first { Array(bytes[$0..<($0 + name.count)]) == name }!
            let dims = Int(bytes[at + name.count])
            let typeOffset = at + name.count + 4 + dims * 8
            bytes[typeOffset] = 99
        }
        assertCheckpointError(unknown, contains: "unsupported tensor type id 99")
    }

    func testMissingFileAndNotAModel() throws {
        assertCheckpointError("/nonexistent/model.gguf", contains: "no such file")
        let dir = try TestPaths.temporaryDirectory()
        let text = dir + "/notes.gguf"
        try "hello".write(toFile: text, atomically: true, encoding: .utf8)
        assertCheckpointError(text, contains: "not a GGUF file")
    }

    func testBrokenSafetensors() throws {
        let src = TestPaths.fixture("llama/llama-hf")
        for (name, mutate) in [
            ("length", { (b: inout [UInt8]) in self.putU64(&b, at: 0, 1 << 40) }),
            ("cut", { (b: inout [UInt8]) in b = Array(b[0..<(b.count - 1000)]) }),
            ("json", { (b: inout [UInt8]) in b[8] = UInt8(ascii: "]") }),
        ] as [(String, (inout [UInt8]) -> Void)] {
            let dir = try TestPaths.temporaryDirectory()
            for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
                try FileManager.default.copyItem(atPath: src + "/" + f, toPath: dir + "/" + f)
            }
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: src + "/model.safetensors")))
            mutate(&bytes)
            let st = dir + "/model.safetensors"
            try Data(bytes).write(to: URL(fileURLWithPath: st))
            do {
                _ = try Checkpoint.open(path: dir)
                XCTFail("\(name): broken safetensors loaded")
            } catch let e as CheckpointError {
                XCTAssertEqual(e.file, st, name)
            }
        }
    }

    func testCLIReportsBadModelOnOneLine() throws {
        let tern = try TestPaths.ternBinary()
        let r = try runProcess(tern, ["generate", "--model", "/nonexistent.gguf", "--prompt", "hi"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertEqual(r.stdout, "")
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("/nonexistent.gguf"))
    }
}
