// KV eviction through the API: the `kv_policy` and `kv_budget` fields of completions and chat, 400s naming the
// field for bad values, and the tern_kv_evicted_tokens_total / tern_kv_kept_tokens metrics by policy.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore
@testable import TernServer

final class EvictionAPITests: XCTestCase {
    static let shared = LazyTestServer { try TestServer(model: TestPaths.fixture("llama/llama-f32.gguf")) }

    override class func tearDown() { shared.stop() }

    func post(_ path: String, _ body: String) throws -> RawResponse {
        try RawClient.request(try Self.shared.get().port, "POST", path, body)
    }

    func metric(_ name: String) throws -> Double? {
        let text = try RawClient.request(try Self.shared.get().port, "GET", "/metrics").text
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + " ") }) else { return nil }
        return Double(line.split(separator: " ")[1])
    }

    func testBadEvictionFieldsName() throws {
        let cases: [(String, String)] = [
            (#""kv_policy":"lru""#, "kv_policy"),
            (#""kv_policy":3"#, "kv_policy"),
            (#""kv_budget":8"#, "kv_budget"),
            (#""kv_budget":"many""#, "kv_budget"),
            (#""kv_policy":"window","kv_budget":-1"#, "kv_budget"),
        ]
        for (field, param) in cases {
            for (path, body) in [("/v1/completions", #"{"prompt":"hi","max_tokens":2,\#(field)}"#),
                                 ("/v1/chat/completions", #"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,\#(field)}"#)] {
                let r = try post(path, body)
                XCTAssertEqual(r.status, 400, "\(path) \(field)")
                let err = try XCTUnwrap(try r.json()["error"] as? [String: Any])
                XCTAssertEqual(err["param"] as? String, param, r.text)
            }
        }
    }

    func testRequestsEvictByTheirPolicyAndMetricsCountIt() throws {
        let before = try metric(#"tern_kv_evicted_tokens_total{policy="dms"}"#) ?? 0
        let r = try post("/v1/completions", #"{"prompt":"Hello, the cat sat on the mat","max_tokens":60,"temperature":0,"ignore_eos":true,"kv_policy":"dms","kv_budget":16}"#)
        XCTAssertEqual(r.status, 200, r.text)
        let usage = try XCTUnwrap(try r.json()["usage"] as? [String: Any])
        XCTAssertEqual(usage["completion_tokens"] as? Int, 60)
        let after = try XCTUnwrap(try metric(#"tern_kv_evicted_tokens_total{policy="dms"}"#))
        // 12 prompt tokens and 59 computed outputs against a budget of 16.
        XCTAssertGreaterThanOrEqual(after - before, 50)
        for p in ["none", "window", "alisa", "dms"] {
            XCTAssertNotNil(try metric("tern_kv_kept_tokens{policy=\"\(p)\"}"), p)
        }
        let chat = try post("/v1/chat/completions", #"{"messages":[{"role":"user","content":"hi"}],"max_tokens":40,"ignore_eos":true,"kv_policy":"window","kv_budget":16}"#)
        XCTAssertEqual(chat.status, 200, chat.text)
        XCTAssertGreaterThan(try metric(#"tern_kv_evicted_tokens_total{policy="window"}"#) ?? 0, 0)
    }
}
