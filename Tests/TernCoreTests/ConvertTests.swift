// `tern convert`: quantizing the F32 fixture must give byte-for-byte the tensors gguf-py's quantizer wrote,
// and converting an HF directory must permute Q/K so the GGUF computes the same function.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class ConvertTests: XCTestCase {
    func testQuantizedTensorsAreBitExactWithGGUFPy() throws {
        let src = try Checkpoint.open(path: TestPaths.fixture("llama/llama-f32.gguf"))
        for (type, reference) in [(GGMLType.q8_0, "llama-q8_0.gguf"), (.q4_0, "llama-q4_0.gguf"), (.q4_1, "llama-q4_1.gguf"), (.f16, "llama-f16.gguf")] {
            let out = try TestPaths.temporaryDirectory() + "/out.gguf"
            _ = try CheckpointConverter.convert(src, to: type, output: out)
            let mine = try GGUFFile(path: out)
            let theirs = try GGUFFile(path: TestPaths.fixture("llama/" + reference))
            XCTAssertEqual(mine.int("general.file_type"), theirs.int("general.file_type"), reference)
            for t in theirs.tensors {
                let m = try XCTUnwrap(mine.tensor(named: t.name), t.name)
                XCTAssertEqual(m.type, t.type, "\(reference) \(t.name)")
                XCTAssertEqual(m.byteCount, t.byteCount)
                XCTAssertEqual(memcmp(mine.file.base + m.fileOffset, theirs.file.base + t.fileOffset, t.byteCount), 0,
                               "\(reference) \(t.name) differs from gguf-py's bytes")
            }
        }
    }

    func testHuggingFaceDirectoryConvertsToEquivalentGGUF() throws {
        let hf = try LoadedModel(path: TestPaths.fixture("llama/llama-hf"))
        let out = try TestPaths.temporaryDirectory() + "/from-hf.gguf"
        _ = try CheckpointConverter.convert(hf.checkpoint, to: .f32, output: out)
        let gguf = try LoadedModel(path: out)
        XCTAssertEqual(gguf.llama!.config.ropeStyle, .interleaved)
        XCTAssertEqual(gguf.tokenizer.encode("Hello, the cat sat"), hf.tokenizer.encode("Hello, the cat sat"))
        XCTAssertNotNil(gguf.chatTemplate)
        let tokens: [Int32] = [317, 313, 11, 258, 220, 66, 265, 310]
        func logits(_ m: LoadedModel) throws -> [Float] {
            let ws = m.model.makeWorkspace(maxTokens: 16, maxContext: 32, pool: WorkerPool(threads: 1))
            let p = try m.model.forward(tokens: tokens, memory: m.model.makeMemory(capacity: 32), workspace: ws, logitRows: 0..<tokens.count)
            return Array(UnsafeBufferPointer(start: p, count: tokens.count * m.llama!.config.vocabularySize))
        }
        let a = try logits(hf), b = try logits(gguf)
        let scale = a.map(abs).max()!
        XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()! / scale, 1e-5)
    }

    func testRejectsUnwritableType() throws {
        let src = try Checkpoint.open(path: TestPaths.fixture("llama/llama-f32.gguf"))
        XCTAssertThrowsError(try CheckpointConverter.convert(src, to: .q2_K, output: NSTemporaryDirectory() + "/x.gguf"))
    }
}
