// The OpenAI-compatible API end to end over real sockets: JSON shapes, SSE framing, errors with their
// parameters, API keys, disconnect-cancels, the bounded queue, tokenize/detokenize and metrics.
// Runs on the tiny fixture checkpoint, so it is fast.

import Foundation
import Logging
import TernTestSupport
import XCTest
@testable import TernCore
@testable import TernServer

final class TestServer {
    let engine: Engine
    let http: HTTPServer
    let api: OpenAIServer
    var port: Int { http.port }

    init(model path: String, apiKeys: [String] = [], maxQueue: Int = 64, context: Int = 128, name: String = "tiny",
         kvCacheMiB: Int = 32, logger: Logger? = nil) throws {
        let loaded = try LoadedModel(path: path)
        var config = EngineConfiguration(threads: 2, contextLength: context, kvCacheBytes: kvCacheMiB << 20)
        config.maxQueue = maxQueue
        config.blockSize = 4
        engine = try Engine(loaded: loaded, configuration: config)
        engine.start()
        var options = ServerOptions(modelName: name)
        options.apiKeys = apiKeys
        var quiet = Logger(label: "test")
        quiet.logLevel = .error
        let api = OpenAIServer(options: options, logger: logger ?? quiet)
        api.ready(engine: engine)
        self.api = api
        var hc = HTTPServerConfiguration()
        hc.port = 0
        http = try HTTPServer(configuration: hc) { api.handle($0, $1) }
        try http.start()
    }

    func stop() {
        http.shutdown(timeout: 2)
        engine.stop()
    }
}

/// A test class's server: started by the first test that asks, stopped once in the class's tearDown.
final class LazyTestServer: @unchecked Sendable {
    // XCTest runs one class's tests one after another on one thread; the lock only guards against surprises.
    private let lock = NSLock()
    private let make: @Sendable () throws -> TestServer
    private var server: TestServer?

    init(_ make: @escaping @Sendable () throws -> TestServer) { self.make = make }

    func get() throws -> TestServer {
        try lock.withLock {
            if let server { return server }
            let s = try make()
            server = s
            return s
        }
    }

    func stop() {
        lock.withLock {
            server?.stop()
            server = nil
        }
    }
}

struct RawResponse {
    var status: Int
    var headers: [String: String]
    var body: Data
    var text: String { String(decoding: body, as: UTF8.self) }
    func json() throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: body) as? [String: Any], text)
    }
}

/// A blocking HTTP/1.1 client on a raw socket: one request, `Connection: close`, chunked bodies decoded.
enum RawClient {
    static func connect(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var tv = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw XCTSkip("cannot connect") }
        return fd
    }

    static func send(_ fd: Int32, method: String, path: String, body: String?, headers: [String: String] = [:]) {
        var req = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        for (k, v) in headers { req += "\(k): \(v)\r\n" }
        if let body { req += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)" } else { req += "\r\n" }
        let bytes = Array(req.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            sent += n
        }
    }

    /// Reads until the server closes, or until a Content-Length body is complete (the server lingers
    /// before closing after error responses).
    static func readAll(_ fd: Int32) -> Data {
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            data.append(contentsOf: buf[0..<n])
            if let end = data.range(of: Data("\r\n\r\n".utf8)) {
                let head = String(decoding: data[..<end.lowerBound], as: UTF8.self).lowercased()
                if let line = head.components(separatedBy: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
                   let length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)),
                   data.count - end.upperBound >= length {
                    break
                }
            }
        }
        return data
    }

    static func parse(_ data: Data) -> RawResponse {
        let bytes = [UInt8](data)
        let sep: [UInt8] = [13, 10, 13, 10]
        var headEnd = bytes.count
        for i in 0..<max(0, bytes.count - 3) where Array(bytes[i..<i + 4]) == sep { headEnd = i; break }
        let head = String(decoding: bytes[0..<headEnd], as: UTF8.self).components(separatedBy: "\r\n")
        let status = Int(head.first?.split(separator: " ").dropFirst().first ?? "") ?? 0
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            if let c = line.firstIndex(of: ":") {
                headers[line[..<c].lowercased()] = line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)
            }
        }
        var body = Array(bytes[min(bytes.count, headEnd + 4)...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            var out: [UInt8] = []
            var i = 0
            while i < body.count {
                guard let lineEnd = (i..<body.count - 1).first(where: { body[$0] == 13 && body[$0 + 1] == 10 }) else { break }
                let size = Int(String(decoding: body[i..<lineEnd], as: UTF8.self).split(separator: ";")[0], radix: 16) ?? 0
                if size == 0 { break }
                out += body[(lineEnd + 2)..<min(body.count, lineEnd + 2 + size)]
                i = lineEnd + 2 + size + 2
            }
            body = out
        }
        return RawResponse(status: status, headers: headers, body: Data(body))
    }

    static func request(_ port: Int, _ method: String, _ path: String, _ body: String? = nil, headers: [String: String] = [:]) throws -> RawResponse {
        let fd = try connect(port: port)
        defer { close(fd) }
        send(fd, method: method, path: path, body: body, headers: headers)
        return parse(readAll(fd))
    }
}

final class APITests: XCTestCase {
    static let shared = LazyTestServer { try TestServer(model: TestPaths.fixture("llama/llama-f32.gguf")) }

    func server() throws -> TestServer { try Self.shared.get() }

    override class func tearDown() { shared.stop() }

    func post(_ path: String, _ body: String, headers: [String: String] = [:]) throws -> RawResponse {
        try RawClient.request(try server().port, "POST", path, body, headers: headers)
    }

    func assertError(_ r: RawResponse, status: Int, param: String?, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(r.status, status, r.text, file: file, line: line)
        let err = try XCTUnwrap(try r.json()["error"] as? [String: Any], file: file, line: line)
        XCTAssertNotNil(err["message"] as? String, file: file, line: line)
        XCTAssertNotNil(err["type"] as? String, file: file, line: line)
        if let param { XCTAssertEqual(err["param"] as? String, param, r.text, file: file, line: line) }
    }

    func testHealthAndModels() throws {
        let port = try server().port
        let h = try RawClient.request(port, "GET", "/health")
        XCTAssertEqual(h.status, 200)
        XCTAssertEqual(try h.json()["status"] as? String, "ok")
        let m = try RawClient.request(port, "GET", "/v1/models").json()
        XCTAssertEqual(m["object"] as? String, "list")
        let data = try XCTUnwrap(m["data"] as? [[String: Any]])
        XCTAssertEqual(data.first?["id"] as? String, "tiny")
    }

    func testCompletionShape() throws {
        let r = try post("/v1/completions", #"{"model":"tiny","prompt":"Hello, the cat","max_tokens":5,"temperature":0,"ignore_eos":true}"#)
        XCTAssertEqual(r.status, 200, r.text)
        let j = try r.json()
        XCTAssertTrue((j["id"] as? String)?.hasPrefix("cmpl-") ?? false)
        XCTAssertEqual(j["object"] as? String, "text_completion")
        XCTAssertNotNil(j["created"] as? Int)
        XCTAssertEqual(j["model"] as? String, "tiny")
        let choice = try XCTUnwrap((j["choices"] as? [[String: Any]])?.first)
        XCTAssertEqual(choice["finish_reason"] as? String, "length")
        XCTAssertNotNil(choice["text"] as? String)
        let usage = try XCTUnwrap(j["usage"] as? [String: Any])
        XCTAssertEqual(usage["completion_tokens"] as? Int, 5)
        XCTAssertEqual((usage["prompt_tokens"] as? Int).map { $0 > 0 }, true)
        XCTAssertEqual(usage["total_tokens"] as? Int, (usage["prompt_tokens"] as! Int) + 5)
        XCTAssertNotNil((usage["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int)
    }

    func testGreedyCompletionMatchesEngineOutput() throws {
        // The HTTP path returns exactly what the single-sequence generator produces.
        let loaded = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let gen = TextGenerator(loaded: loaded, contextLength: 128, threads: 1)
        let expected = try gen.generate(GenerationRequest(promptTokens: loaded.promptTokens(text: "Hello, the cat sat"), maxTokens: 8, ignoreEOS: true))
        let r = try post("/v1/completions", #"{"prompt":"Hello, the cat sat","max_tokens":8,"temperature":0,"ignore_eos":true}"#)
        let choice = try XCTUnwrap((try r.json()["choices"] as? [[String: Any]])?.first)
        XCTAssertEqual(choice["text"] as? String, expected.text)
    }

    func testPromptForms() throws {
        let many = try post("/v1/completions", #"{"prompt":["Hello","the cat"],"max_tokens":3,"temperature":0,"n":2,"ignore_eos":true}"#).json()
        let choices = try XCTUnwrap(many["choices"] as? [[String: Any]])
        XCTAssertEqual(choices.map { $0["index"] as? Int }, [0, 1, 2, 3])
        XCTAssertEqual(choices[0]["text"] as? String, choices[1]["text"] as? String, "greedy choices of one prompt agree")
        XCTAssertEqual((many["usage"] as? [String: Any])?["completion_tokens"] as? Int, 12)
        let ids = try post("/v1/completions", #"{"prompt":[317,313,11],"max_tokens":2,"temperature":0,"ignore_eos":true}"#)
        XCTAssertEqual(ids.status, 200, ids.text)
        // A long token-id prompt is one prompt, not many.
        let longIDs = (0..<100).map { String(($0 * 7) % 300) }.joined(separator: ",")
        XCTAssertEqual(try post("/v1/completions", #"{"prompt":[\#(longIDs)],"max_tokens":1}"#).status, 200)
        let idLists = try post("/v1/completions", #"{"prompt":[[317,313],[11,258]],"max_tokens":2,"ignore_eos":true}"#)
        XCTAssertEqual((try idLists.json()["choices"] as? [[String: Any]])?.count, 2)
    }

    func testEchoWithZeroMaxTokensGivesPromptLogprobs() throws {
        let r = try post("/v1/completions", #"{"prompt":"Hello, the cat","max_tokens":0,"echo":true,"logprobs":1}"#)
        XCTAssertEqual(r.status, 200, r.text)
        let choice = try XCTUnwrap((try r.json()["choices"] as? [[String: Any]])?.first)
        XCTAssertEqual(choice["text"] as? String, "Hello, the cat")
        let lp = try XCTUnwrap(choice["logprobs"] as? [String: Any])
        let values = try XCTUnwrap(lp["token_logprobs"] as? [Any])
        XCTAssertTrue(values[0] is NSNull, "the first prompt token has no logprob")
        XCTAssertEqual(values.count, (lp["tokens"] as? [Any])?.count)
        XCTAssertGreaterThan(values.count, 2)
        for v in values.dropFirst() { XCTAssertLessThanOrEqual(try XCTUnwrap(v as? Double), 0) }
    }

    func testStreamedEchoStartsWithThePrompt() throws {
        let s = try post("/v1/completions", #"{"prompt":"Hello, the cat","max_tokens":4,"temperature":0,"echo":true,"stream":true,"ignore_eos":true}"#)
        var text = ""
        for event in s.text.components(separatedBy: "\n\n") where event.hasPrefix("data: {") {
            let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(event.dropFirst(6).utf8)) as? [String: Any])
            text += ((j["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? ""
        }
        let whole = try post("/v1/completions", #"{"prompt":"Hello, the cat","max_tokens":4,"temperature":0,"echo":true,"ignore_eos":true}"#)
        XCTAssertTrue(text.hasPrefix("Hello, the cat"), text)
        XCTAssertEqual(text, (try whole.json()["choices"] as? [[String: Any]])?.first?["text"] as? String)
    }

    func testChatCompletionAndStreaming() throws {
        let r = try post("/v1/chat/completions", #"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":4,"temperature":0,"ignore_eos":true,"logprobs":true,"top_logprobs":2}"#)
        XCTAssertEqual(r.status, 200, r.text)
        let j = try r.json()
        XCTAssertEqual(j["object"] as? String, "chat.completion")
        let choice = try XCTUnwrap((j["choices"] as? [[String: Any]])?.first)
        let message = try XCTUnwrap(choice["message"] as? [String: Any])
        XCTAssertEqual(message["role"] as? String, "assistant")
        let content = try XCTUnwrap((choice["logprobs"] as? [String: Any])?["content"] as? [[String: Any]])
        XCTAssertEqual(content.count, 4)
        XCTAssertEqual((content[0]["top_logprobs"] as? [Any])?.count, 2)

        let s = try post("/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":6,"temperature":0,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#)
        XCTAssertEqual(s.status, 200)
        XCTAssertEqual(s.headers["content-type"], "text/event-stream")
        let events = s.text.components(separatedBy: "\n\n").filter { !$0.isEmpty }
        XCTAssertTrue(events.allSatisfy { $0.hasPrefix("data: ") }, s.text)
        XCTAssertEqual(events.last, "data: [DONE]")
        let chunks = try events.dropLast().map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.dropFirst(6).utf8)) as? [String: Any]) }
        XCTAssertTrue(chunks.allSatisfy { $0["object"] as? String == "chat.completion.chunk" })
        let first = try XCTUnwrap((chunks[0]["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])
        XCTAssertEqual(first["role"] as? String, "assistant")
        let usageChunk = try XCTUnwrap(chunks.last)
        XCTAssertEqual((usageChunk["choices"] as? [Any])?.count, 0)
        XCTAssertEqual((usageChunk["usage"] as? [String: Any])?["completion_tokens"] as? Int, 6)
        let finish = chunks.dropLast().compactMap { ($0["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String }
        XCTAssertEqual(finish, ["length"])
    }

    func testCompletionStreamText() throws {
        let whole = try post("/v1/completions", #"{"prompt":"Hello","max_tokens":8,"temperature":0,"ignore_eos":true}"#)
        let expected = (try whole.json()["choices"] as? [[String: Any]])?.first?["text"] as? String
        let s = try post("/v1/completions", #"{"prompt":"Hello","max_tokens":8,"temperature":0,"ignore_eos":true,"stream":true}"#)
        var text = ""
        for event in s.text.components(separatedBy: "\n\n") where event.hasPrefix("data: {") {
            let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(event.dropFirst(6).utf8)) as? [String: Any])
            text += ((j["choices"] as? [[String: Any]])?.first?["text"] as? String) ?? ""
        }
        XCTAssertEqual(text, expected)
        XCTAssertTrue(s.text.hasSuffix("data: [DONE]\n\n"))
    }

    func testBadRequestsGetTheirErrors() throws {
        try assertError(post("/v1/completions", "{not json"), status: 400, param: nil)
        try assertError(post("/v1/completions", "[1,2]"), status: 400, param: nil)
        try assertError(post("/v1/completions", #"{"prompt":"hi","max_tokens":"ten"}"#), status: 400, param: "max_tokens")
        try assertError(post("/v1/completions", #"{"prompt":"hi","max_tokens":-1}"#), status: 400, param: "max_tokens")
        try assertError(post("/v1/completions", #"{"prompt":"hi","temperature":-0.5}"#), status: 400, param: "temperature")
        try assertError(post("/v1/completions", #"{"prompt":"hi","top_p":0}"#), status: 400, param: "top_p")
        try assertError(post("/v1/completions", #"{"prompt":"hi","top_p":1.5}"#), status: 400, param: "top_p")
        try assertError(post("/v1/completions", #"{"prompt":"hi","stream":"yes"}"#), status: 400, param: "stream")
        try assertError(post("/v1/completions", #"{"prompt":"hi","n":0}"#), status: 400, param: "n")
        try assertError(post("/v1/completions", #"{"prompt":{"a":1}}"#), status: 400, param: "prompt")
        try assertError(post("/v1/completions", #"{"prompt":[1,99999]}"#), status: 400, param: "prompt")
        try assertError(post("/v1/completions", #"{"max_tokens":3}"#), status: 400, param: "prompt")
        let long = String(repeating: "cat sat on the mat ", count: 60)
        try assertError(post("/v1/completions", #"{"prompt":"\#(long)"}"#), status: 400, param: "prompt")
        try assertError(post("/v1/completions", #"{"model":"gpt-9","prompt":"hi"}"#), status: 404, param: "model")
        try assertError(post("/v1/chat/completions", #"{"messages":[]}"#), status: 400, param: "messages")
        try assertError(post("/v1/chat/completions", #"{"messages":[{"role":"wizard","content":"x"}]}"#), status: 400, param: "messages[0].role")
        try assertError(post("/v1/chat/completions", #"{"messages":[{"role":"user","content":42}]}"#), status: 400, param: "messages[0].content")
        try assertError(RawClient.request(try server().port, "GET", "/v1/nothing"), status: 404, param: nil)
        let wrong = try RawClient.request(try server().port, "GET", "/v1/completions")
        try assertError(wrong, status: 405, param: nil)
        XCTAssertEqual(wrong.headers["allow"], "POST")
        // Unknown fields are ignored, and the server still answers.
        XCTAssertEqual(try post("/v1/completions", #"{"prompt":"hi","max_tokens":1,"frobnicate":true}"#).status, 200)
    }

    /// Seeded random damage to valid bodies: every answer is 200 or a 4xx with an OpenAI error body, and the
    /// server keeps serving.
    func testMutatedRequestsNeverBreakTheServer() throws {
        let port = try server().port
        var rng = RandomStream(seed: 7)
        let weird: [String] = ["null", "true", "-1", "0", "2", "9223372036854775807", "-1e308", "0.5", "\"\"",
                               "\"<|im_start|>\"", "[]", "{}", "[1,2]", "[[1],[2]]", "[\"a\"]", "{\"a\":1}", "[-5]",
                               "[99999999]", "[[]]", "\"\\u0000\""]
        let completionKeys = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stop",
                              "seed", "presence_penalty", "logprobs", "echo", "stream", "stream_options", "ignore_eos"]
        let chatKeys = ["model", "messages", "max_tokens", "logprobs", "top_logprobs", "stream", "n", "temperature"]
        var statuses: [Int: Int] = [:]
        for i in 0..<150 {
            let chat = i % 2 == 1
            var fields: [String: String] = chat
                ? ["messages": #"[{"role":"user","content":"hi"}]"#, "max_tokens": "3", "logprobs": "true", "top_logprobs": "2"]
                : ["prompt": "\"Hello\"", "max_tokens": "3", "n": "2", "logprobs": "1", "echo": "true", "ignore_eos": "true"]
            let keys = chat ? chatKeys : completionKeys
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                fields[keys[Int(rng.next() % UInt64(keys.count))]] = weird[Int(rng.next() % UInt64(weird.count))]
            }
            let body = "{" + fields.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",") + "}"
            let r = try RawClient.request(port, "POST", chat ? "/v1/chat/completions" : "/v1/completions", body)
            statuses[r.status, default: 0] += 1
            if r.status != 200 {
                XCTAssertTrue((400..<500).contains(r.status), "\(r.status) for \(body): \(r.text)")
                XCTAssertNotNil(try? r.json()["error"] as? [String: Any], body)
            }
        }
        XCTAssertGreaterThan(statuses[400] ?? 0, 0)
        XCTAssertEqual(try RawClient.request(port, "GET", "/health").status, 200)
        XCTAssertTrue(try server().engine.waitUntilIdle(timeout: 10))
    }

    func testTokenizeDetokenizeAndMetrics() throws {
        let t = try post("/tokenize", #"{"prompt":"Hello, the cat","add_special_tokens":false}"#).json()
        let tokens = try XCTUnwrap(t["tokens"] as? [Int])
        XCTAssertEqual(t["count"] as? Int, tokens.count)
        let body = "{\"tokens\":[\(tokens.map(String.init).joined(separator: ","))]}"
        XCTAssertEqual(try post("/detokenize", body).json()["prompt"] as? String, "Hello, the cat")
        _ = try post("/v1/completions", #"{"prompt":"Hello","max_tokens":2,"ignore_eos":true}"#)
        let m = try RawClient.request(try server().port, "GET", "/metrics")
        XCTAssertEqual(m.status, 200)
        for name in ["tern_requests_running", "tern_requests_waiting", "tern_prompt_tokens_total", "tern_generation_tokens_total",
                     "tern_time_to_first_token_seconds_bucket", "tern_inter_token_latency_seconds_count", "tern_kv_cache_usage_ratio",
                     "tern_prefix_cache_hit_rate", "tern_kv_cache_blocks_total", "tern_preemptions_total", "tern_batch_size_bucket",
                     "tern_relay_groups", "tern_relay_prefix_tokens_read_total"] {
            XCTAssertTrue(m.text.contains(name), "metrics lack \(name)")
        }
    }

    func testDisconnectCancelsGeneration() throws {
        let s = try server()
        for stream in [true, false] {
            let fd = try RawClient.connect(port: s.port)
            RawClient.send(fd, method: "POST", path: "/v1/completions",
                           body: #"{"prompt":"Hello","max_tokens":120,"ignore_eos":true,"stream":\#(stream)}"#)
            Thread.sleep(forTimeInterval: 0.3)
            close(fd)
            XCTAssertTrue(s.engine.waitUntilIdle(timeout: 5), "generation went on after the client left (stream: \(stream))")
        }
        XCTAssertEqual(s.engine.pool.availableBlocks, s.engine.pool.blockCount)
    }

    func testAPIKeys() throws {
        let s = try TestServer(model: TestPaths.fixture("llama/llama-f32.gguf"), apiKeys: ["sk-one", "sk-two"])
        defer { s.stop() }
        try assertError(RawClient.request(s.port, "GET", "/v1/models"), status: 401, param: nil)
        try assertError(RawClient.request(s.port, "GET", "/v1/models", headers: ["Authorization": "Bearer sk-on"]), status: 401, param: nil)
        XCTAssertEqual(try RawClient.request(s.port, "GET", "/v1/models", headers: ["Authorization": "Bearer sk-two"]).status, 200)
        XCTAssertEqual(try RawClient.request(s.port, "GET", "/health").status, 200)
        XCTAssertEqual(try RawClient.request(s.port, "GET", "/metrics").status, 200)
    }

    func testFullQueueAnswers429() throws {
        let s = try TestServer(model: TestPaths.fixture("llama/llama-f32.gguf"), maxQueue: 1)
        defer { s.stop() }
        let port = s.port
        let results = StatusList()
        let group = DispatchGroup()
        // Client threads of their own: blocking Dispatch's worker threads would starve the server's queues.
        for _ in 0..<24 {
            group.enter()
            Thread.detachNewThread {
                let r = try? RawClient.request(port, "POST", "/v1/completions", #"{"prompt":"Hello","max_tokens":40,"ignore_eos":true}"#)
                results.add(r?.status ?? 0, retryAfter: r?.headers["retry-after"])
                group.leave()
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success)
        let codes = results.statuses
        XCTAssertTrue(results.retryAfterOn429)
        XCTAssertTrue(codes.contains(429), "\(codes)")
        XCTAssertTrue(codes.contains(200), "\(codes)")
        XCTAssertTrue(codes.allSatisfy { $0 == 200 || $0 == 429 }, "\(codes)")
    }

    func testChatWithoutTemplateIs400() throws {
        // A copy of the fixture without tokenizer.chat_template.
        let src = try GGUFFile(path: TestPaths.fixture("llama/llama-f32.gguf"))
        var w = GGUFWriter()
        for k in src.metadataKeys where k != "tokenizer.chat_template" { w.set(k, src.metadata[k]!) }
        for t in src.tensors {
            let base = src.file.base + t.fileOffset, n = t.byteCount
            w.tensors.append(GGUFWriter.Tensor(name: t.name, type: t.type, shape: t.shape, byteCount: n) { $0.copyMemory(from: UnsafeRawBufferPointer(start: base, count: n)) })
        }
        let path = NSTemporaryDirectory() + "/no-template-\(UUID().uuidString).gguf"
        try w.write(to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let s = try TestServer(model: path)
        defer { s.stop() }
        let r = try RawClient.request(s.port, "POST", "/v1/chat/completions", #"{"messages":[{"role":"user","content":"hi"}]}"#)
        try assertError(r, status: 400, param: "messages")
        XCTAssertTrue(r.text.contains("chat template"))
    }

    func testOfficialOpenAIClient() throws {
        let script = TestPaths.repoRoot + "/scripts/check_openai_client.py"
        let probe = try runProcess("/usr/bin/env", ["python3", "-c", "import openai"])
        guard probe.status == 0 else { throw XCTSkip("the openai Python package is not installed") }
        let s = try server()
        let r = try runProcess("/usr/bin/env", ["python3", script, "--base-url", "http://127.0.0.1:\(s.port)/v1", "--model", "tiny"])
        XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("all checks passed"), r.stdout)
    }
}

/// Statuses gathered from concurrent clients.
final class StatusList: @unchecked Sendable {
    // Appended from several client threads: guarded by `lock`.
    private let lock = NSLock()
    private var values: [Int] = []
    private var retryOK = true
    func add(_ status: Int, retryAfter: String?) {
        lock.lock()
        values.append(status)
        if status == 429 && retryAfter != "1" { retryOK = false }
        lock.unlock()
    }
    var statuses: [Int] { lock.lock(); defer { lock.unlock() }; return values }
    var retryAfterOn429: Bool { lock.lock(); defer { lock.unlock() }; return retryOK }
}
