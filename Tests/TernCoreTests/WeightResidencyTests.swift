// What loading gives back and what it must keep: packed matrices release their file pages, tied embeddings are
// looked up in the packed copy (so the file's pages stay released), and a private copy (`--no-mmap`) never
// releases pages that are read again, since they would read as zeros. A workspace gives back the pages a prompt
// made resident, and computes the same afterwards.

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

    /// After a prompt pass the workspace's rows are resident; `releaseIdlePages` gives them back (counted with
    /// mincore), and the next passes compute what a fresh workspace does, bit for bit.
    func testWorkspaceReleasesPromptPagesAndComputesTheSame() throws {
        let model = try XCTUnwrap(try LoadedModel(path: TestPaths.fixture("gemma3/gemma3-q8_0.gguf")).llama)
        let pool = WorkerPool(threads: 2)
        let prompt: [Int32] = (0..<240).map { Int32(($0 * 37 + 11) % 250) }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        func residentPages(_ p: UnsafeMutablePointer<Float>, count: Int) -> Int {
            let lo = (Int(bitPattern: p) + page - 1) / page * page, hi = Int(bitPattern: p + count) / page * page
            guard hi > lo else { return 0 }
            var vec = [UInt8](repeating: 0, count: (hi - lo) / page)
            XCTAssertEqual(mincore(UnsafeMutableRawPointer(bitPattern: lo), hi - lo, &vec), 0)
            return vec.filter { $0 & 1 != 0 }.count
        }
        func run(release: Bool) throws -> [[Float]] {
            let ws = model.makeWorkspace(maxTokens: 256, maxContext: 512, pool: pool)
            let lw = try XCTUnwrap(ws as? LlamaWorkspace)
            let memory = model.makeMemory(capacity: 512)
            var rows: [[Float]] = []
            var logits = try model.forward(tokens: prompt, memory: memory, workspace: ws, logitRows: 239..<240)
            rows.append(Array(UnsafeBufferPointer(start: logits, count: model.vocabularySize)))
            let width = 256 * model.config.feedForwardLength
            if release {
                let before = residentPages(lw.gate, count: width)
                ws.releaseIdlePages()
                let after = residentPages(lw.gate, count: width)
                XCTAssertGreaterThan(before, 4, "a 240-row pass writes most of the FFN rows")
                XCTAssertLessThanOrEqual(after, 1, "pages left resident after the release: \(after) of \(before)")
            }
            for t: Int32 in [5, 99, 17] {
                logits = try model.forward(tokens: [t], memory: memory, workspace: ws, logitRows: 0..<1)
                rows.append(Array(UnsafeBufferPointer(start: logits, count: model.vocabularySize)))
            }
            return rows
        }
        let released = try run(release: true), kept = try run(release: false)
        for (a, b) in zip(released, kept) { XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern)) }
    }

    /// The header's pages are given back once the tokenizer has its copy; reading metadata faults them back in.
    func testMetadataStillReadableAfterItsPagesAreReleased() throws {
        let ck = try Checkpoint.open(path: TestPaths.fixture("gemma3/gemma3-q8_0.gguf"))
        let g = try XCTUnwrap(ck.gguf)
        XCTAssertEqual(try g.stringArray("tokenizer.ggml.tokens"), ck.tokenizerSpec.tokens)
        XCTAssertEqual(try g.doubleArray("tokenizer.ggml.scores")?.map { Float($0) } ?? [], ck.tokenizerSpec.scores)
    }
}
