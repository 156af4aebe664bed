// How responses end, seen from the client: concurrent streams while formatting and writing happen off the
// engine thread.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore
@testable import TernServer

final class ResponseLifecycleTests: XCTestCase {
    func events(_ body: String) throws -> [[String: Any]] {
        try body.components(separatedBy: "\n\n").filter { $0.hasPrefix("data: {") }.map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.dropFirst(6).utf8)) as? [String: Any])
        }
    }

    /// Many streams at once, each with two choices: every stream is well framed and each choice's text equals
    /// the non-streamed answer to the same request.
    func testConcurrentStreamsMatchTheirNonStreamedAnswers() throws {
        let s = try TestServer(model: TestPaths.fixture("llama/llama-f32.gguf"))
        defer { s.stop() }
        let prompts = (0..<12).map { "Hello, the cat number \($0)" }
        let results = ResultList()
        let group = DispatchGroup()
        for (i, p) in prompts.enumerated() {
            group.enter()
            Thread.detachNewThread { [port = s.port] in
                let body = #"{"prompt":"\#(p)","max_tokens":24,"temperature":0,"ignore_eos":true,"n":2,"stream":\#(i % 2 == 0)}"#
                let streamed = try? RawClient.request(port, "POST", "/v1/completions", body)
                let whole = try? RawClient.request(port, "POST", "/v1/completions", body.replacingOccurrences(of: #""stream":true"#, with: #""stream":false"#))
                results.set(i, streamed, whole)
                group.leave()
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 120), .success)
        for i in prompts.indices {
            let (streamedResponse, wholeResponse) = results.get(i)
            let streamed = try XCTUnwrap(streamedResponse), whole = try XCTUnwrap(wholeResponse)
            XCTAssertEqual(streamed.status, 200, streamed.text)
            let expected = try XCTUnwrap(try whole.json()["choices"] as? [[String: Any]]).map { $0["text"] as? String }
            if i % 2 == 1 { continue }  // both were non-streamed
            XCTAssertEqual(streamed.headers["content-type"], "text/event-stream")
            XCTAssertTrue(streamed.text.hasSuffix("data: [DONE]\n\n"), streamed.text)
            XCTAssertTrue(streamed.text.components(separatedBy: "\n\n").filter { !$0.isEmpty }.allSatisfy { $0.hasPrefix("data: ") })
            var texts = ["", ""], finishes = [0, 0]
            for e in try events(streamed.text) {
                let c = try XCTUnwrap((e["choices"] as? [[String: Any]])?.first)
                let index = try XCTUnwrap(c["index"] as? Int)
                texts[index] += c["text"] as? String ?? ""
                if c["finish_reason"] is String { finishes[index] += 1 }
            }
            XCTAssertEqual(texts.map { Optional($0) }, expected)
            XCTAssertEqual(finishes, [1, 1])
        }
        XCTAssertTrue(s.engine.waitUntilIdle(timeout: 10))
    }

}

/// Responses gathered from client threads.
final class ResultList: @unchecked Sendable {
    // Written by client threads, read after they finish: guarded by `lock`.
    private let lock = NSLock()
    private var values: [Int: (RawResponse?, RawResponse?)] = [:]
    func set(_ i: Int, _ a: RawResponse?, _ b: RawResponse?) { lock.lock(); values[i] = (a, b); lock.unlock() }
    func get(_ i: Int) -> (RawResponse?, RawResponse?) { lock.lock(); defer { lock.unlock() }; return values[i] ?? (nil, nil) }
}
