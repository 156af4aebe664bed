// The engine failing one request (issue 15, faults): a checkpoint whose embedding row for one token is NaN makes
// every request that contains that token produce non-finite logits. Such a request fails with HTTP 500 and an
// OpenAI-style error naming the problem, streamed or not; the server goes on answering every other request.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore
@testable import TernServer

final class EngineFaultTests: XCTestCase {
    static let poisoned: Int = 300

    /// A copy of the f32 fixture whose token_embd row `poisoned` is NaN.
    private func poisonedModel() throws -> String {
        let dir = try TestPaths.temporaryDirectory()
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/poisoned.gguf"
        try FileManager.default.copyItem(atPath: TestPaths.fixture("llama/llama-f32.gguf"), toPath: path)
        let info = try XCTUnwrap(GGUFFile(path: path).tensor(named: "token_embd.weight"))
        XCTAssertEqual(info.type, .f32)
        let dim = info.shape[0]
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(info.fileOffset + Self.poisoned * dim * 4))
        let nan = [Float](repeating: .nan, count: dim)
        try handle.write(contentsOf: nan.withUnsafeBytes { Data($0) })
        return path
    }

    func testNonFiniteLogitsFailTheRequestWith500AndTheServerGoesOn() throws {
        let s = try TestServer(model: try poisonedModel())
        defer { s.stop() }
        let good = #"{"prompt":[11,12,13],"max_tokens":4,"temperature":0}"#
        let before = try RawClient.request(s.port, "POST", "/v1/completions", good)
        XCTAssertEqual(before.status, 200, before.text)

        let bad = try RawClient.request(s.port, "POST", "/v1/completions", #"{"prompt":[11,\#(Self.poisoned),13],"max_tokens":4}"#)
        XCTAssertEqual(bad.status, 500, bad.text)
        let error = try XCTUnwrap(bad.json()["error"] as? [String: Any], bad.text)
        XCTAssertEqual(error["type"] as? String, "server_error")
        XCTAssertTrue((error["message"] as? String ?? "").contains("non-finite logit"), bad.text)

        // Streamed: a 500 if the failure comes before the stream's head, else an error event and [DONE].
        let streamed = try RawClient.request(s.port, "POST", "/v1/completions",
                                             #"{"prompt":[\#(Self.poisoned)],"max_tokens":4,"stream":true}"#)
        XCTAssertTrue(streamed.text.contains("non-finite logit"), streamed.text)
        if streamed.status == 200 {
            XCTAssertTrue(streamed.text.hasSuffix("data: [DONE]\n\n"), streamed.text)
        } else {
            XCTAssertEqual(streamed.status, 500, streamed.text)
        }

        // The server goes on: the same request as before gets the same answer, and no KV block is lost.
        let after = try RawClient.request(s.port, "POST", "/v1/completions", good)
        XCTAssertEqual(after.status, 200, after.text)
        let text = { (r: RawResponse) in ((try? r.json()["choices"] as? [[String: Any]])??.first?["text"] as? String) }
        XCTAssertEqual(text(after), text(before))
        XCTAssertEqual(try RawClient.request(s.port, "GET", "/health").status, 200)
        XCTAssertTrue(s.engine.waitUntilIdle(timeout: 10))
        XCTAssertEqual(s.engine.metrics().kvBlocksUsed, 0, "a failed request left KV blocks behind")
    }
}
