// Speculative decoding through the API: OpenAI's `prediction` field and its usage details, the `speculative`
// opt-out, their errors, streamed text equal to the plain answer, and the tern_spec_* metrics.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore
@testable import TernServer

final class SpeculationAPITests: XCTestCase {
    static let shared = LazyTestServer { try TestServer(model: TestPaths.fixture("llama/llama-f32.gguf")) }

    override class func tearDown() { shared.stop() }

    func post(_ path: String, _ body: String) throws -> RawResponse {
        try RawClient.request(try Self.shared.get().port, "POST", path, body)
    }

    func completion(_ fields: String) throws -> (text: String, usage: [String: Any]) {
        let r = try post("/v1/completions", #"{"prompt":"Hello, the cat sat on the mat","max_tokens":24,"temperature":0,"ignore_eos":true\#(fields)}"#)
        XCTAssertEqual(r.status, 200, r.text)
        let j = try r.json()
        let text = try XCTUnwrap((j["choices"] as? [[String: Any]])?.first?["text"] as? String)
        return (text, try XCTUnwrap(j["usage"] as? [String: Any]))
    }

    func testPredictionIsUsedAndReportedWithoutChangingTheAnswer() throws {
        let plain = try completion(#","speculative":false"#)
        let details = try XCTUnwrap(plain.usage["completion_tokens_details"] as? [String: Any])
        XCTAssertEqual(details["accepted_prediction_tokens"] as? Int, 0)
        XCTAssertEqual(details["rejected_prediction_tokens"] as? Int, 0)
        let escaped = String(data: try JSONSerialization.data(withJSONObject: [plain.text]), encoding: .utf8)!.dropFirst().dropLast()
        let predicted = try completion(#","prediction":{"type":"content","content":\#(escaped)}"#)
        XCTAssertEqual(predicted.text, plain.text)
        let pd = try XCTUnwrap(predicted.usage["completion_tokens_details"] as? [String: Any])
        let accepted = try XCTUnwrap(pd["accepted_prediction_tokens"] as? Int)
        // The text re-tokenizes differently from the tokens that produced it on this tiny model, so part of it is
        // followed; the two counts add up to the prediction's length.
        XCTAssertGreaterThan(accepted, 0)
        let rejected = try XCTUnwrap(pd["rejected_prediction_tokens"] as? Int)
        let predictionTokens = try post("/tokenize", #"{"prompt":\#(escaped),"add_special_tokens":false}"#).json()["count"] as? Int
        XCTAssertEqual(accepted + rejected, predictionTokens)
        // Text parts are joined; a prediction unlike the answer changes nothing either.
        let parts = try completion(#","prediction":{"type":"content","content":[{"type":"text","text":"no"},{"type":"text","text":" match at all"}]}"#)
        XCTAssertEqual(parts.text, plain.text)
        // Streamed, the pieces add up to the same text.
        let s = try post("/v1/completions", #"{"prompt":"Hello, the cat sat on the mat","max_tokens":24,"temperature":0,"ignore_eos":true,"stream":true,"prediction":{"type":"content","content":\#(escaped)}}"#)
        var text = ""
        for event in s.text.components(separatedBy: "\n\n") where event.hasPrefix("data: {") {
            let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(event.dropFirst(6).utf8)) as? [String: Any])
            text += ((j["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? ""
        }
        XCTAssertEqual(text, plain.text)
    }

    func testBadSpeculationFieldsName() throws {
        let cases: [(String, String)] = [
            (#""prediction":"text""#, "prediction"),
            (#""prediction":{"type":"code","content":"x"}"#, "prediction.type"),
            (#""prediction":{"type":"content"}"#, "prediction.content"),
            (#""prediction":{"type":"content","content":[{"type":"image","text":"x"}]}"#, "prediction.content"),
            (#""speculative":"yes""#, "speculative"),
        ]
        for (field, param) in cases {
            let r = try post("/v1/completions", #"{"prompt":"hi","max_tokens":2,\#(field)}"#)
            XCTAssertEqual(r.status, 400, field)
            let err = try XCTUnwrap(try r.json()["error"] as? [String: Any])
            XCTAssertEqual(err["param"] as? String, param, r.text)
        }
        let chat = try post("/v1/chat/completions", #"{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"prediction":{"type":"content","content":7}}"#)
        XCTAssertEqual(chat.status, 400)
    }

    func testMetricsCountDraftsByPosition() throws {
        _ = try completion(#","prediction":{"type":"content","content":"Hello, the cat sat on the mat"}"#)
        let m = try RawClient.request(try Self.shared.get().port, "GET", "/metrics").text
        for name in ["tern_spec_decode_draft_tokens_total", "tern_spec_decode_accepted_tokens_total", "tern_spec_decode_acceptance_ratio",
                     "tern_spec_decode_accepted_tokens_by_position_total{position=\"0\"}",
                     "tern_spec_decode_draft_tokens_by_position_total{position=\"7\"}"] {
            XCTAssertTrue(m.contains(name), "metrics lack \(name)")
        }
        let drafted = m.split(separator: "\n").first { $0.hasPrefix("tern_spec_decode_draft_tokens_total ") }
        XCTAssertNotEqual(drafted.map { String($0.split(separator: " ")[1]) }, "0", "drafts were made and counted")
    }
}
