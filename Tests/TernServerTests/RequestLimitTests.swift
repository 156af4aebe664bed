// What an adversarial client found (issue 15), checked over real sockets on the tiny fixture checkpoint
// (context 128, vocabulary 320): max_tokens beyond the context, logit_bias, JSON that is too deep, out of
// range or has duplicate keys, and a limit with its own error for every size a request can choose.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore
@testable import TernServer

final class RequestLimitTests: XCTestCase {
    static let shared = LazyTestServer { try TestServer(model: TestPaths.fixture("llama/llama-f32.gguf")) }

    func server() throws -> TestServer { try Self.shared.get() }

    override class func tearDown() { shared.stop() }

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

    // MARK: max_tokens and the context

    func testMaxTokensBeyondTheContextIs400() throws {
        let message = try assertError(post("/v1/completions", #"{"prompt":"Hi","max_tokens":1000000000}"#), status: 400, param: "max_tokens")
        XCTAssertTrue(message.contains("maximum context length is 128 tokens"), message)
        XCTAssertTrue(message.contains("1000000000 for the completion"), message)
        let chat = try assertError(post("/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":500}"#),
                                   status: 400, param: "max_tokens")
        XCTAssertTrue(chat.contains("in the messages"), chat)
        try assertError(post("/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"max_completion_tokens":500}"#),
                        status: 400, param: "max_completion_tokens")
        let code = try XCTUnwrap(try post("/v1/completions", #"{"prompt":"Hi","max_tokens":200}"#).json()["error"] as? [String: Any])["code"]
        XCTAssertEqual(code as? String, "context_length_exceeded")
    }

    func testMaxTokensThatFitExactlyRunToTheEnd() throws {
        let prompt = try XCTUnwrap(try post("/tokenize", #"{"prompt":"Hello, the cat"}"#).json()["count"] as? Int)
        let r = try post("/v1/completions", #"{"prompt":"Hello, the cat","max_tokens":\#(128 - prompt),"ignore_eos":true}"#)
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertEqual(try usage(r)["total_tokens"] as? Int, 128)
        try assertError(post("/v1/completions", #"{"prompt":"Hello, the cat","max_tokens":\#(129 - prompt)}"#), status: 400, param: "max_tokens")
    }

    func testMissingMaxTokensMeansTheContextForChatAnd16ForCompletions() throws {
        let chat = try post("/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"ignore_eos":true}"#)
        XCTAssertEqual(chat.status, 200, chat.text)
        XCTAssertEqual(try usage(chat)["total_tokens"] as? Int, 128)
        XCTAssertEqual((try chat.json()["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String, "length")
        let completion = try post("/v1/completions", #"{"prompt":"Hi","ignore_eos":true}"#)
        XCTAssertEqual(try usage(completion)["completion_tokens"] as? Int, 16)
    }

    // MARK: logit_bias

    func testLogitBiasOfPlus100MakesGreedyOutputThatToken() throws {
        let token = 42
        let plain = try post("/v1/completions", #"{"prompt":"Hello, the cat","max_tokens":4,"temperature":0,"ignore_eos":true}"#)
        let biased = try post("/v1/completions", #"{"prompt":"Hello, the cat","max_tokens":4,"temperature":0,"ignore_eos":true,"logit_bias":{"\#(token)":100}}"#)
        XCTAssertEqual(biased.status, 200, biased.text)
        let expected = try XCTUnwrap(try post("/detokenize", #"{"tokens":[\#(token),\#(token),\#(token),\#(token)]}"#).json()["prompt"] as? String)
        let text = (try biased.json()["choices"] as? [[String: Any]])?.first?["text"] as? String
        XCTAssertEqual(text, expected)
        XCTAssertNotEqual((try plain.json()["choices"] as? [[String: Any]])?.first?["text"] as? String, expected,
                          "the test needs a token greedy decoding does not pick by itself")
        // Chat too, with a float bias; -100 on the token the model would pick changes the first token.
        let chat = try post("/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"temperature":0,"ignore_eos":true,"logit_bias":{"\#(token)":99.5}}"#)
        XCTAssertEqual(((try chat.json()["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String,
                       try XCTUnwrap(try post("/detokenize", #"{"tokens":[\#(token),\#(token)]}"#).json()["prompt"] as? String))
    }

    func testBadLogitBiasIs400() throws {
        for bias in [#""x""#, "[1]", #"{"abc":1}"#, #"{"-1":1}"#, #"{"320":1}"#, #"{"1.5":1}"#, #"{"":1}"#, #"{"99999999999":1}"#,
                     #"{"5":101}"#, #"{"5":-100.5}"#, #"{"5":"1"}"#, #"{"5":null}"#] {
            try assertError(post("/v1/completions", #"{"prompt":"Hi","max_tokens":1,"logit_bias":\#(bias)}"#), status: 400, param: "logit_bias")
        }
        XCTAssertEqual(try post("/v1/completions", #"{"prompt":"Hi","max_tokens":1,"logit_bias":{"319":-100,"0":100}}"#).status, 200)
        XCTAssertEqual(try post("/v1/completions", #"{"prompt":"Hi","max_tokens":1,"logit_bias":{}}"#).status, 200)
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

    // MARK: limits

    /// Every size a request chooses has a limit and an error naming it (body and header sizes: HTTPServerTests;
    /// prompt length: APITests.testBadRequestsGetTheirErrors).
    func testEverySizeHasALimit() throws {
        try assertError(post("/v1/completions", #"{"prompt":"Hi","n":17}"#), status: 400, param: "n")
        XCTAssertEqual(try post("/v1/completions", #"{"prompt":"Hi","n":16,"max_tokens":1}"#).status, 200)
        let nine = Array(repeating: #""Hi""#, count: 9).joined(separator: ",")
        try assertError(post("/v1/completions", #"{"prompt":[\#(nine)],"n":16,"max_tokens":1}"#), status: 400, param: "n")
        let many = Array(repeating: #""Hi""#, count: 65).joined(separator: ",")
        try assertError(post("/v1/completions", #"{"prompt":[\#(many)],"max_tokens":1}"#), status: 400, param: "prompt")
        let stops = (0..<17).map { "\"s\($0)\"" }.joined(separator: ",")
        try assertError(post("/v1/completions", #"{"prompt":"Hi","stop":[\#(stops)]}"#), status: 400, param: "stop")
        try assertError(post("/v1/completions", #"{"prompt":"Hi","stop":"\#(String(repeating: "x", count: 257))"}"#), status: 400, param: "stop")
        XCTAssertEqual(try post("/v1/completions", #"{"prompt":"Hi","max_tokens":1,"stop":"\#(String(repeating: "x", count: 256))"}"#).status, 200)
        try assertError(post("/v1/completions", #"{"prompt":"Hi","logprobs":21}"#), status: 400, param: "logprobs")
        try assertError(post("/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"logprobs":true,"top_logprobs":21}"#),
                        status: 400, param: "top_logprobs")
        try assertError(post("/v1/completions", #"{"prompt":"Hi","max_tokens":2147483648}"#), status: 400, param: "max_tokens")
        // 1025 distinct keys: duplicates collapse (the last wins), so spell ids differently with leading zeros.
        let distinct = (0..<1025).map { "\"\(String(repeating: "0", count: $0 / 320))\($0 % 320)\":1" }.joined(separator: ",")
        try assertError(post("/v1/completions", #"{"prompt":"Hi","logit_bias":{\#(distinct)}}"#), status: 400, param: "logit_bias")
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        try assertError(post("/v1/completions", #"{"prompt":"Hi","x":\#(deep)}"#), status: 400, param: nil)
        try assertError(post("/v1/completions", #"{"prompt":"\#(String(repeating: "cat ", count: 200))"}"#), status: 400, param: "prompt")
    }

    /// A gzip-compressed request body is the same request as the plain one.
    func testGzipCompressedBodyIsServed() throws {
        let json = #"{"prompt":"Hello, the cat","max_tokens":6,"temperature":0,"ignore_eos":true}"#
        let plain = try post("/v1/completions", json)
        let zipped = try XCTUnwrap(HTTPGzip.compress(Data(json.utf8)))
        let fd = try RawClient.connect(port: try server().port)
        defer { close(fd) }
        let head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + "Content-Encoding: gzip\r\nContent-Length: \(zipped.count)\r\n\r\n"
        let bytes = Array(head.utf8) + Array(zipped)
        XCTAssertEqual(bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }, bytes.count)
        let r = RawClient.parse(RawClient.readAll(fd))
        XCTAssertEqual(r.status, 200, r.text)
        func text(_ r: RawResponse) throws -> String? { (try r.json()["choices"] as? [[String: Any]])?.first?["text"] as? String }
        XCTAssertEqual(try text(r), try text(plain))
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

    /// No field names a file, path or URL the server would open: such text is only ever a name or a prompt.
    func testPathsInRequestsAreNeverOpened() throws {
        let r = try post("/v1/completions", #"{"model":"../../../../etc/passwd","prompt":"Hi"}"#)
        try assertError(r, status: 404, param: "model")
        XCTAssertFalse(r.text.contains("root:"))
        let file = try post("/v1/completions", #"{"prompt":"file:///etc/passwd","max_tokens":1}"#)
        XCTAssertEqual(file.status, 200)
        XCTAssertFalse(file.text.contains("root:"))
    }
}
