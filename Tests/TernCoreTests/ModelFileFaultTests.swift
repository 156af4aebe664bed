// The model file changing under a running server (issue 15, faults). With `tern serve --no-mmap` LoadedModel reads
// its weights into memory of its own (MappedFile's .privateCopy), so truncating, rewriting or replacing the file
// leaves generation exactly as it was, where a map would die of SIGBUS on the next page it touched past the new end
// (the test would crash the test process rather than fail, which is the point of running it). The default map
// (zero-copy) survives the usual deployment step, a new file renamed over the old one: the map keeps the old file.

import Foundation
import TernCore
import TernTestSupport
import XCTest

final class ModelFileFaultTests: XCTestCase {
    private func copyOfFixture() throws -> String {
        let path = try TestPaths.temporaryDirectory() + "/model.gguf"
        try FileManager.default.copyItem(atPath: TestPaths.fixture("llama/llama-q8_0.gguf"), toPath: path)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        return path
    }

    private func generate(_ e: Engine) throws -> [Int32] {
        let prompt: [Int32] = [317, 313, 11, 258, 220, 66, 265, 310]
        return try XCTUnwrap(run(e, [EngineRequest(promptTokens: prompt, maxTokens: 10, ignoreEOS: true)])[0].tokens[0])
    }

    private func engine(_ m: LoadedModel) throws -> Engine {
        var c = EngineConfiguration(threads: 2, contextLength: 64, kvCacheBytes: 8 << 20)
        c.blockSize = 4
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        return e
    }

    func testTruncatedAndRewrittenFileDoesNotDisturbAServingEngine() throws {
        let path = try copyOfFixture()
        let m = try LoadedModel(path: path, weights: .privateCopy)
        let e = try engine(m)
        defer { e.stop() }
        let before = try generate(e)
        XCTAssertEqual(before.count, 10)

        // Truncated to nothing (what `cp new old` does first), then refilled with other bytes in place.
        XCTAssertEqual(truncate(path, 0), 0)
        XCTAssertEqual(try generate(e), before)
        try Data(repeating: 0xA5, count: 4096).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try generate(e), before)
        // Replaced by another file under the same name.
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.copyItem(atPath: TestPaths.fixture("llama/llama-f32.gguf"), toPath: path)
        XCTAssertEqual(try generate(e), before)
        XCTAssertEqual(m.checkpoint.tensors.values.first.map { $0.byteCount > 0 }, true)
        assertAllBlocksFree(e)
    }

    func testMappedModelSurvivesAFileRenamedOverIt() throws {
        let path = try copyOfFixture()
        let m = try LoadedModel(path: path)
        let e = try engine(m)
        defer { e.stop() }
        let before = try generate(e)
        let other = path + ".new"
        try FileManager.default.copyItem(atPath: TestPaths.fixture("llama/llama-f32.gguf"), toPath: other)
        XCTAssertEqual(rename(other, path), 0)
        XCTAssertEqual(try generate(e), before)
        assertAllBlocksFree(e)
    }

    func testPrivateCopyHoldsTheFilesBytesAndMappedStillMaps() throws {
        let path = try copyOfFixture()
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        let copy = try MappedFile(path: path, backing: .privateCopy)
        let mapped = try MappedFile(path: path, backing: .mapped)
        XCTAssertEqual(copy.size, original.count)
        XCTAssertEqual(Data(bytes: copy.base, count: copy.size), original)
        XCTAssertEqual(Data(bytes: mapped.base, count: mapped.size), original)
        XCTAssertEqual(truncate(path, 100), 0)
        XCTAssertEqual(Data(bytes: copy.base, count: copy.size), original, "the private copy must not follow the file")
        XCTAssertThrowsError(try MappedFile(path: path + ".missing", backing: .privateCopy))
    }

    func testHeapCopyForFuzzing() throws {
        let bytes: [UInt8] = [1, 2, 3]
        let f = bytes.withUnsafeBytes { MappedFile(copying: $0, name: "x") }
        XCTAssertEqual(f.size, 3)
        XCTAssertEqual(f.base.load(fromByteOffset: 2, as: UInt8.self), 3)
        XCTAssertThrowsError(try GGUFFile(mapped: f)) { XCTAssertTrue("\($0)".contains("x:"), "\($0)") }
    }
}
