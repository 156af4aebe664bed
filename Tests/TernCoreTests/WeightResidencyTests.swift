// What loading gives back and what it must keep: packed matrices release their file pages, tied embeddings are
// looked up in the packed copy (so the file's pages stay released), and a private copy (`--no-mmap`) never
// releases pages that are read again, since they would read as zeros.

import CKernels
import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class WeightResidencyTests: XCTestCase {
    /// Gemma 3's fixture ties its embeddings; converted to every 32-value type, each row read back from the packed
    /// copy must be the stored row's values bit for bit.
    func testPackedEmbeddingRowsEqualTheStoredRows() throws {
        let src = try Checkpoint.open(path: TestPaths.fixture("gemma3/gemma3-f16.gguf"))
        for type in [GGMLType.q8_0, .q4_0, .q4_1, .q5_0, .q5_1] {
            let out = try TestPaths.temporaryDirectory() + "/emb.gguf"
            _ = try CheckpointConverter.convert(src, to: type, output: out)
            let model = try XCTUnwrap(try LoadedModel(path: out).llama)
            let emb = model.tokenEmbedding
            guard emb.packed != nil else { throw XCTSkip("this CPU path does not pack weights") }
            XCTAssertEqual(emb.type, type)
            XCTAssertTrue(emb.rowsFromPacked, "\(type)")
            let stored = try GGUFFile(path: out)
            let info = try XCTUnwrap(stored.tensor(named: "token_embd.weight"))
            var fromPacked = [Float](repeating: 0, count: emb.columns)
            var fromFile = [Float](repeating: 1, count: emb.columns)
            for r in 0..<emb.rows {
                emb.dequantizeRow(r, into: &fromPacked)
                tern_dequantize_row(Int32(type.rawValue), stored.file.base + info.fileOffset + r * emb.rowBytes,
                                    &fromFile, Int64(emb.columns))
                XCTAssertEqual(fromPacked.map(\.bitPattern), fromFile.map(\.bitPattern), "\(type) row \(r)")
            }
        }
    }

    /// Before, packing gave back a private copy's pages like a map's, and the tied embedding's lookups read zeros.
    func testPrivateCopyGeneratesWhatTheMapDoes() throws {
        let path = TestPaths.fixture("gemma3/gemma3-q8_0.gguf")
        let prompt: [Int32] = [2, 17, 40, 9, 250, 31, 77]
        func tokens(_ backing: MappedFile.Backing) throws -> [Int32] {
            let g = TextGenerator(loaded: try LoadedModel(path: path, weights: backing), contextLength: 64, threads: 2)
            return try g.generate(GenerationRequest(promptTokens: prompt, maxTokens: 12, ignoreEOS: true)).tokens
        }
        let mapped = try tokens(.mapped)
        XCTAssertEqual(mapped.count, 12)
        XCTAssertEqual(try tokens(.privateCopy), mapped)
    }

    /// The header's pages are given back once the tokenizer has its copy; reading metadata faults them back in.
    func testMetadataStillReadableAfterItsPagesAreReleased() throws {
        let ck = try Checkpoint.open(path: TestPaths.fixture("gemma3/gemma3-q8_0.gguf"))
        let g = try XCTUnwrap(ck.gguf)
        XCTAssertEqual(try g.stringArray("tokenizer.ggml.tokens"), ck.tokenizerSpec.tokens)
        XCTAssertEqual(try g.doubleArray("tokenizer.ggml.scores")?.map { Float($0) } ?? [], ck.tokenizerSpec.scores)
    }
}
