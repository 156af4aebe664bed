// What an adversarial client found (issue 15), checked over real sockets on the tiny fixture checkpoint
// (context 128, vocabulary 320): JSON that is too deep, out of range or has duplicate keys.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore
@testable import TernServer

final class RequestLimitTests: XCTestCase {
    nonisolated(unsafe) static var shared: TestServer?

    func server() throws -> TestServer {
        if let s = Self.shared { return s }
        let s = try TestServer(model: TestPaths.fixture("llama/llama-f32.gguf"))
        Self.shared = s
        return s
    }

    override class func tearDown() {
        shared?.stop()
        shared = nil
    }

    func post(_ path: String, _ body: String) throws -> RawResponse {
        try RawClient.request(try server().port, "POST", path, body)
    }

    /// The error body's message, after checking status and parameter.
    @discardableResult
    func assertError(_ r: RawResponse, status: Int, param: String?, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        XCTAssertEqual(r.status, status, r.text, file: file, line: line)
        let err = try XCTUnwrap(try r.json()["error"] as? [String: Any], r.text, file: file, line: line)
        if let param { XCTAssertEqual(err["param"] as? String, param, r.text, file: file, line: line) }
        return try XCTUnwrap(err["message"] as? String, file: file, line: line)
    }

    func usage(_ r: RawResponse) throws -> [String: Any] {
        try XCTUnwrap(try r.json()["usage"] as? [String: Any], r.text)
    }

    // MARK: JSON

    func testJSONProblemsAreNamed() throws {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        let tooDeep = try assertError(post("/v1/completions", #"{"prompt":"Hi","x":\#(deep)}"#), status: 400, param: nil)
        XCTAssertTrue(tooDeep.contains("nested too deeply"), tooDeep)
        let fine = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        XCTAssertEqual(try post("/v1/completions", #"{"prompt":"Hi","max_tokens":1,"x":\#(fine)}"#).status, 200)
        let huge = try assertError(post("/v1/completions", #"{"prompt":"Hi","temperature":1e400}"#), status: 400, param: nil)
        XCTAssertTrue(huge.contains("1e400") && huge.contains("does not fit"), huge)
        let syntax = try assertError(post("/v1/completions", #"{"prompt":"Hi",}"#), status: 400, param: nil)
        XCTAssertTrue(syntax.contains("not valid JSON") && syntax.contains("byte"), syntax)
        try assertError(post("/v1/completions", "{\"prompt\":\"a\u{1}b\"}"), status: 400, param: nil)
    }

    func testDuplicateKeysTakeTheLastValue() throws {
        let last = try post("/v1/completions", #"{"prompt":"Hi","max_tokens":"ten","max_tokens":3,"ignore_eos":true}"#)
        XCTAssertEqual(last.status, 200, last.text)
        XCTAssertEqual(try usage(last)["completion_tokens"] as? Int, 3)
        try assertError(post("/v1/completions", #"{"prompt":"Hi","max_tokens":3,"max_tokens":"ten"}"#), status: 400, param: "max_tokens")
    }

    func testJSONParserAgainstItsGrammar() throws {
        func parse(_ s: String) -> JSONValue? { try? JSONValue.parse(Data(s.utf8)) }
        XCTAssertEqual(parse(#"{"a":[1,-2.5e3,true,false,null,"\u00e9\ud83d\ude00\n"]}"#),
                       ["a": [1, -2500.0, true, false, nil, "é😀\n"]])
        XCTAssertEqual(parse("9223372036854775807"), .int(Int64.max))
        XCTAssertEqual(parse("9223372036854775808"), .double(9223372036854775808))
        XCTAssertEqual(parse(#"{"k":1,"j":2,"k":3}"#), ["k": 3, "j": 2])
        for bad in ["", "01", "1.", ".5", "+1", "1e", "[1,]", "{\"a\"}", "\"\\x\"", "tru", "[1] 2", "\"\\ud800\"x", "{1:2}", "nan"] {
            XCTAssertNil(parse(bad), bad)
        }
        XCTAssertEqual(parse(#""\ud800""#), .string("\u{FFFD}"), "a lone surrogate becomes U+FFFD")
    }

    /// llama-server's `add_special` (and vLLM's `add_special_tokens`) decide whether BOS comes first.
    func testAddSpecialControlsBOS() throws {
        let bos = 317
        let with = try XCTUnwrap(try post("/tokenize", #"{"prompt":"Hello"}"#).json()["tokens"] as? [Int])
        XCTAssertEqual(with.first, bos)
        for off in [#""add_special":false"#, #""add_special_tokens":false"#] {
            let without = try XCTUnwrap(try post("/tokenize", #"{"prompt":"Hello",\#(off)}"#).json()["tokens"] as? [Int])
            XCTAssertEqual(without, Array(with.dropFirst()), off)
        }
        let counted = try post("/v1/completions", #"{"prompt":"Hello","max_tokens":1,"add_special":false}"#)
        XCTAssertEqual(try usage(counted)["prompt_tokens"] as? Int, with.count - 1)
    }
}
