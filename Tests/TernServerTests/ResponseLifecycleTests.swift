// How responses end, seen from the client: concurrent streams while formatting and writing happen off the
// engine thread, a client that disconnects (access log 499, tern_requests_cancelled_total), and a shutdown
// past its drain timeout (every stream ends with an error event, [DONE] and a clean chunked close; every
// request not streamed gets a 503).

import Foundation
import Logging
import TernTestSupport
import XCTest
@testable import TernCore
@testable import TernServer

/// Log lines of a test server, kept for assertions.
final class LogLines: @unchecked Sendable {
    // Appended from server queues, read by the test: guarded by `lock`.
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ s: String) { lock.lock(); lines.append(s); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}

struct CapturingLogHandler: LogHandler {
    let sink: LogLines
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        sink.append(event.message.description)
    }
}

final class ResponseLifecycleTests: XCTestCase {
    /// Sends a request and returns the socket without reading.
    func open(_ port: Int, _ path: String, _ body: String) throws -> Int32 {
        let fd = try RawClient.connect(port: port)
        RawClient.send(fd, method: "POST", path: path, body: body)
        return fd
    }

    /// Reads until at least one SSE event has arrived (the stream is running).
    func readFirstEvent(_ fd: Int32) -> Data {
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 4096)
        while !(data.range(of: Data("data: {".utf8)) != nil) {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            data.append(contentsOf: buf[0..<n])
        }
        return data
    }

    func metric(_ port: Int, _ name: String) throws -> Double? {
        let text = try RawClient.request(port, "GET", "/metrics").text
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.dropFirst(name.count + 1))
        }
        return nil
    }

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

    func testDisconnectIsLoggedAs499AndCounted() throws {
        let lines = LogLines()
        var logger = Logger(label: "test") { _ in CapturingLogHandler(sink: lines) }
        logger.logLevel = .info
        let s = try TestServer(model: try TestPaths.requireDefaultModel(), context: 2048, name: "smol", kvCacheMiB: 128, logger: logger)
        defer { s.stop() }
        XCTAssertEqual(try metric(s.port, "tern_requests_cancelled_total"), 0)
        let stream = try open(s.port, "/v1/completions", #"{"prompt":"Once upon a time","max_tokens":1800,"ignore_eos":true,"stream":true}"#)
        XCTAssertNotNil(readFirstEvent(stream).range(of: Data("data: {".utf8)))
        close(stream)
        let plain = try open(s.port, "/v1/chat/completions", #"{"messages":[{"role":"user","content":"Tell me a story"}],"max_tokens":1800,"ignore_eos":true}"#)
        Thread.sleep(forTimeInterval: 0.3)
        close(plain)
        let deadline = Date().addingTimeInterval(10)
        while try metric(s.port, "tern_requests_cancelled_total") != 2 && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        XCTAssertEqual(try metric(s.port, "tern_requests_cancelled_total"), 2)
        XCTAssertTrue(lines.all.contains { $0.hasPrefix("POST /v1/completions 499") }, "\(lines.all)")
        XCTAssertTrue(lines.all.contains { $0.hasPrefix("POST /v1/chat/completions 499") }, "\(lines.all)")
        XCTAssertTrue(s.engine.waitUntilIdle(timeout: 5), "generation went on after the clients left")
        // A request that completes is not counted.
        XCTAssertEqual(try RawClient.request(s.port, "POST", "/v1/completions", #"{"prompt":"Hi","max_tokens":2}"#).status, 200)
        XCTAssertEqual(try metric(s.port, "tern_requests_cancelled_total"), 2)
        XCTAssertEqual(s.engine.pool.availableBlocks, s.engine.pool.blockCount)
    }

    func testAbortInFlightEndsStreamsCleanlyAndAnswers503() throws {
        let s = try TestServer(model: try TestPaths.requireDefaultModel(), context: 2048, name: "smol", kvCacheMiB: 128)
        let body = #"{"prompt":"Once upon a time","max_tokens":1800,"ignore_eos":true,"stream":true}"#
        let streams = try (0..<3).map { _ in try open(s.port, "/v1/completions", body) }
        let chat = try open(s.port, "/v1/chat/completions", #"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1800,"ignore_eos":true,"stream":true}"#)
        let plain = try open(s.port, "/v1/completions", #"{"prompt":"Once upon a time","max_tokens":1800,"ignore_eos":true}"#)
        var heads = streams.map { readFirstEvent($0) }
        heads.append(readFirstEvent(chat))
        let started = Date()
        s.http.shutdown(timeout: 0.3, onTimeout: { s.api.abortInFlight(reason: "the server is shutting down") })
        XCTAssertLessThan(Date().timeIntervalSince(started), 3)
        s.engine.stop()
        for (i, fd) in (streams + [chat]).enumerated() {
            let raw = heads[i] + RawClient.readAll(fd)
            close(fd)
            XCTAssertTrue(raw.suffix(5) == Data("0\r\n\r\n".utf8), "the chunked body ends cleanly: \(String(decoding: raw.suffix(200), as: UTF8.self))")
            let r = RawClient.parse(raw)
            XCTAssertEqual(r.status, 200)
            let parts = r.text.components(separatedBy: "\n\n").filter { !$0.isEmpty }
            XCTAssertEqual(parts.last, "data: [DONE]")
            let last = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(parts[parts.count - 2].dropFirst(6).utf8)) as? [String: Any])
            let error = try XCTUnwrap(last["error"] as? [String: Any], parts[parts.count - 2])
            XCTAssertEqual(error["type"] as? String, "server_error")
            XCTAssertEqual(error["code"] as? String, "server_shutdown")
            XCTAssertEqual(error["message"] as? String, "the server is shutting down")
        }
        let r = RawClient.parse(RawClient.readAll(plain))
        close(plain)
        XCTAssertEqual(r.status, 503, r.text)
        XCTAssertEqual((try r.json()["error"] as? [String: Any])?["code"] as? String, "server_shutdown")
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
