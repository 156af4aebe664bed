// Tests of the HTTP/1.1 layer over real sockets on 127.0.0.1: a raw socket client controls bytes exactly,
// GNU gzip and curl/openssl serve as independent references for gzip and TLS.

import Foundation
import XCTest
import TernServer
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Raw socket client

private struct HTTPRawResponse {
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]
    var chunkCount: Int

    func header(_ name: String) -> String? {
        headers.first(where: { $0.0.lowercased() == name.lowercased() })?.1
    }
    var text: String { String(decoding: body, as: UTF8.self) }
}

private final class HTTPRawClient {
    let fd: Int32
    private var buffer: [UInt8] = []
    private(set) var sawEOF = false

    init(port: Int, receiveTimeout: Double = 5) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw NSError(domain: "HTTPRawClient", code: Int(errno)) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            throw NSError(domain: "HTTPRawClient.connect", code: Int(e))
        }
        setReceiveTimeout(receiveTimeout)
    }

    deinit { Glibc.close(fd) }

    func setReceiveTimeout(_ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func setReceiveBuffer(_ bytes: Int32) {
        var v = bytes
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    @discardableResult
    func send(_ text: String) -> Bool { send(Array(text.utf8)) }

    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Reads more bytes into the buffer; false on EOF, error or timeout.
    private func fill() -> Bool {
        var tmp = [UInt8](repeating: 0, count: 65536)
        let n = tmp.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { if n == 0 { sawEOF = true }; return false }
        buffer.append(contentsOf: tmp[0..<n])
        return true
    }

    private func readLine() -> String? {
        while true {
            if let i = buffer.firstIndex(of: 10) {
                var line = Array(buffer[0..<i])
                if line.last == 13 { line.removeLast() }
                buffer.removeFirst(i + 1)
                return String(decoding: line, as: UTF8.self)
            }
            if !fill() { return nil }
        }
    }

    private func readExactly(_ n: Int) -> [UInt8]? {
        while buffer.count < n { if !fill() { return nil } }
        let out = Array(buffer[0..<n])
        buffer.removeFirst(n)
        return out
    }

    /// Status line and headers only.
    func readHead() -> (status: Int, headers: [(String, String)])? {
        guard let statusLine = readLine() else { return nil }
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { return nil }
        var headers: [(String, String)] = []
        while let line = readLine() {
            if line.isEmpty { return (status, headers) }
            guard let c = line.firstIndex(of: ":") else { return nil }
            headers.append((String(line[..<c]), line[line.index(after: c)...].trimmingCharacters(in: .whitespaces)))
        }
        return nil
    }

    /// One chunk of a chunked body: nil on error, empty at the terminating chunk.
    func readChunk() -> [UInt8]? {
        guard let sizeLine = readLine(), let size = Int(sizeLine.split(separator: ";")[0], radix: 16) else { return nil }
        if size == 0 {
            while let l = readLine() { if l.isEmpty { return [] } }
            return nil
        }
        guard let data = readExactly(size), readLine() == "" else { return nil }
        return data
    }

    func readResponse(headRequest: Bool = false) -> HTTPRawResponse? {
        guard let head = readHead() else { return nil }
        var r = HTTPRawResponse(status: head.status, headers: head.headers, body: [], chunkCount: 0)
        if headRequest || head.status == 204 || head.status == 304 || head.status < 200 { return r }
        if r.header("Transfer-Encoding")?.lowercased() == "chunked" {
            while true {
                guard let chunk = readChunk() else { return nil }
                if chunk.isEmpty { break }
                r.body += chunk
                r.chunkCount += 1
            }
        } else if let cl = r.header("Content-Length"), let n = Int(cl) {
            guard let body = readExactly(n) else { return nil }
            r.body = body
        } else {
            while fill() {}
            r.body = buffer
            buffer = []
        }
        return r
    }

    /// True if the server closed the connection (EOF) within the receive timeout, with no further data.
    func waitForClose() -> Bool {
        while fill() {}
        return sawEOF
    }
}

// MARK: - Shared test state

private final class HTTPTestBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ v: T) { value = v }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
    func update<R>(_ f: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return f(&value) }
}

/// Polls `condition` until true or `timeout` seconds pass.
private func httpEventually(_ timeout: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

private func httpQueryValue(_ query: String?, _ key: String) -> String? {
    guard let query else { return nil }
    for pair in query.split(separator: "&") {
        let kv = pair.split(separator: "=", maxSplits: 1)
        if kv.count == 2 && kv[0] == key { return String(kv[1]) }
    }
    return nil
}

// MARK: - Tests

final class HTTPServerTests: XCTestCase {
    var servers: [HTTPServer] = []

    override func tearDown() {
        for s in servers { s.shutdown(timeout: 1) }
        servers = []
        super.tearDown()
    }

    /// Routes used across tests. Streams run on their own threads as the engine would.
    fileprivate static func testHandler(_ events: HTTPTestBox<[String]>) -> @Sendable (HTTPRequest, HTTPResponseWriter) -> Void {
        return { request, writer in
            switch request.path {
            case "/hello":
                writer.respond(status: 200, headers: [("Content-Type", "text/plain")], body: Data("hello".utf8))
            case "/echo":
                writer.respond(status: 200, headers: [
                    ("Content-Type", request.header("content-type") ?? "application/octet-stream"),
                    ("X-Method", request.method), ("X-Path", request.path), ("X-Query", request.query ?? ""),
                    ("X-Version", request.version), ("X-Remote", request.remoteAddress),
                ], body: request.body)
            case "/json":
                let n = Int(httpQueryValue(request.query, "n") ?? "200") ?? 200
                var s = "{\"items\":["
                for i in 0..<n { s += (i > 0 ? "," : "") + "{\"index\":\(i),\"name\":\"item \(i)\"}" }
                s += "]}"
                writer.respond(status: 200, headers: [("Content-Type", "application/json")], body: Data(s.utf8))
            case "/stream":
                let n = Int(httpQueryValue(request.query, "n") ?? "5") ?? 5
                let delay = Int(httpQueryValue(request.query, "delay") ?? "0") ?? 0
                writer.onClose { events.update { $0.append("stream-closed") } }
                Thread.detachNewThread {
                    writer.startStream(status: 200, headers: [("Content-Type", "text/event-stream"),
                                                              ("Cache-Control", "no-cache")])
                    for i in 0..<n {
                        if delay > 0 { usleep(useconds_t(delay * 1000)) }
                        if !writer.writeChunk(Data("data: {\"i\":\(i)}\n\n".utf8)) {
                            events.update { $0.append("write-failed-at-\(i)") }
                            return
                        }
                    }
                    writer.writeChunk(Data("data: [DONE]\n\n".utf8))
                    writer.endStream()
                    events.update { $0.append("stream-ended") }
                }
            case "/never":
                writer.onClose { events.update { $0.append("never-closed") } }
                events.update { $0.append("never-started") }
            case "/flood":
                writer.onClose { events.update { $0.append("flood-closed") } }
                Thread.detachNewThread {
                    writer.startStream(status: 200, headers: [("Content-Type", "text/event-stream")])
                    let chunk = Data(repeating: UInt8(ascii: "x"), count: 64 * 1024)
                    // Paced like a fast engine, so the socket gets a chance to fill before our buffer does.
                    let pace = httpQueryValue(request.query, "pace") != nil
                    var total = 0
                    var maxBuffered = 0
                    let start = Date()
                    while Date().timeIntervalSince(start) < 10 {
                        if pace { usleep(1000) }
                        if !writer.writeChunk(chunk) { break }
                        total += chunk.count
                        maxBuffered = max(maxBuffered, writer.bufferedBytes)
                    }
                    let again = writer.writeChunk(chunk)
                    events.update {
                        $0.append("flood-stopped total=\(total) maxBuffered=\(maxBuffered) again=\(again) closed=\(writer.isClosed)")
                    }
                }
            default:
                writer.respondError(status: 404, message: "no route for \(request.path)")
            }
        }
    }

    fileprivate func makeServer(_ configure: (inout HTTPServerConfiguration) -> Void = { _ in },
                    events: HTTPTestBox<[String]> = HTTPTestBox([]),
                    handler: (@Sendable (HTTPRequest, HTTPResponseWriter) -> Void)? = nil) throws -> HTTPServer {
        var config = HTTPServerConfiguration()
        config.port = 0
        configure(&config)
        let server = try HTTPServer(configuration: config, handler: handler ?? Self.testHandler(events))
        try server.start()
        servers.append(server)
        return server
    }

    fileprivate static func errorMessage(_ r: HTTPRawResponse) -> String? {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any],
              let err = obj["error"] as? [String: Any], err["type"] is String,
              err.keys.contains("param"), err.keys.contains("code") else { return nil }
        return err["message"] as? String
    }

    // MARK: basics

    func testStatusHeadersAndRequestFields() throws {
        let server = try makeServer()
        XCTAssertGreaterThan(server.port, 0)
        let c = try HTTPRawClient(port: server.port)
        c.send("POST /echo?x=1&y=2 HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nabcde")
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.text, "abcde")
        XCTAssertEqual(r.header("Content-Length"), "5")
        XCTAssertEqual(r.header("X-Method"), "POST")
        XCTAssertEqual(r.header("X-Path"), "/echo")
        XCTAssertEqual(r.header("X-Query"), "x=1&y=2")
        XCTAssertEqual(r.header("X-Version"), "HTTP/1.1")
        XCTAssertTrue(r.header("X-Remote")?.hasPrefix("127.0.0.1:") ?? false)
        XCTAssertEqual(r.header("Connection"), "keep-alive")
        XCTAssertNotNil(r.header("Date"))
        XCTAssertEqual(r.header("Server"), "tern")

        c.send("GET /missing HTTP/1.1\r\nHost: t\r\n\r\n")
        let nf = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(nf.status, 404)
        XCTAssertEqual(Self.errorMessage(nf), "no route for /missing")

        c.send("HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        let head = try XCTUnwrap(c.readResponse(headRequest: true))
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.header("Content-Length"), "5")
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertEqual(c.readResponse()?.text, "hello")  // HEAD sent no body bytes
    }

    func testKeepAliveAndHTTP10() throws {
        let server = try makeServer()
        let c = try HTTPRawClient(port: server.port)
        for _ in 0..<2 {
            c.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            let r = try XCTUnwrap(c.readResponse())
            XCTAssertEqual(r.text, "hello")
            XCTAssertEqual(r.header("Connection"), "keep-alive")
        }
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        XCTAssertEqual(c.readResponse()?.header("Connection"), "close")
        XCTAssertTrue(c.waitForClose())

        let old = try HTTPRawClient(port: server.port)
        old.send("GET /hello HTTP/1.0\r\n\r\n")
        let r10 = try XCTUnwrap(old.readResponse())
        XCTAssertEqual(r10.text, "hello")
        XCTAssertEqual(r10.header("Connection"), "close")
        XCTAssertTrue(old.waitForClose())

        let old2 = try HTTPRawClient(port: server.port)
        for _ in 0..<2 {
            old2.send("GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            XCTAssertEqual(old2.readResponse()?.header("Connection"), "keep-alive")
        }
    }

    func testPipelinedRequestsAnsweredInOrder() throws {
        let server = try makeServer()
        let c = try HTTPRawClient(port: server.port)
        var batch = ""
        for i in 0..<5 {
            batch += "POST /echo?i=\(i) HTTP/1.1\r\nHost: t\r\nContent-Length: \(String(i).count + 4)\r\n\r\nbody\(i)"
        }
        batch += "GET /stream?n=3 HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
        c.send(batch)
        for i in 0..<5 {
            let r = try XCTUnwrap(c.readResponse())
            XCTAssertEqual(r.header("X-Query"), "i=\(i)")
            XCTAssertEqual(r.text, "body\(i)")
        }
        let s = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(s.chunkCount, 4)
        XCTAssertEqual(c.readResponse()?.text, "hello")
    }

    func testChunkedRequestBody() throws {
        let server = try makeServer()
        let c = try HTTPRawClient(port: server.port)
        // Split across sends so the decoder resumes mid-size-line and mid-data.
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        usleep(20_000)
        c.send("lo\r\n1")
        usleep(20_000)
        c.send("0;ext=1\r\n, chunked world!\r\n0\r\nX-Trailer: yes\r\n\r\n")
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.text, "hello, chunked world!")
        // Connection still usable afterwards.
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertEqual(c.readResponse()?.text, "hello")

        let bad = try HTTPRawClient(port: server.port)
        bad.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        XCTAssertEqual(bad.readResponse()?.status, 400)
    }

    func testExpectContinue() throws {
        let server = try makeServer { $0.maxBodyBytes = 1000 }
        let c = try HTTPRawClient(port: server.port)
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        let interim = try XCTUnwrap(c.readHead())
        XCTAssertEqual(interim.status, 100)
        c.send("ping")
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.text, "ping")

        let big = try HTTPRawClient(port: server.port)
        big.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        let refused = try XCTUnwrap(big.readResponse())
        XCTAssertEqual(refused.status, 413)  // at once, no 100 first
        XCTAssertTrue(big.waitForClose())
    }

    // MARK: limits

    func testBodyTooLarge413() throws {
        let server = try makeServer { $0.maxBodyBytes = 1000 }
        let c = try HTTPRawClient(port: server.port)
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.status, 413)
        XCTAssertNotNil(Self.errorMessage(r))
        XCTAssertEqual(r.header("Connection"), "close")

        let chunked = try HTTPRawClient(port: server.port)
        chunked.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + String(repeating: "a", count: 1024) + "\r\n")
        XCTAssertEqual(chunked.readResponse()?.status, 413)
    }

    func testHeaderTooLarge431() throws {
        let server = try makeServer { $0.maxHeaderBytes = 2048 }
        let c = try HTTPRawClient(port: server.port)
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: " + String(repeating: "b", count: 4096) + "\r\n\r\n")
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.status, 431)
        XCTAssertNotNil(Self.errorMessage(r))
        // Unterminated header block growing past the limit.
        let d = try HTTPRawClient(port: server.port)
        d.send("GET /hello HTTP/1.1\r\nX-Big: " + String(repeating: "b", count: 3000))
        XCTAssertEqual(d.readResponse()?.status, 431)
    }

    func testTimeouts408() throws {
        let server = try makeServer { $0.headerTimeout = 0.3; $0.bodyTimeout = 0.3; $0.idleTimeout = 0.5 }
        let start = Date()
        do {
        let c = try HTTPRawClient(port: server.port)
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\n")  // never finishes the header block
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.status, 408)
        XCTAssertNotNil(Self.errorMessage(r))
        XCTAssertTrue(c.waitForClose())
        XCTAssertLessThan(Date().timeIntervalSince(start), 2)

        let b = try HTTPRawClient(port: server.port)
        b.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        XCTAssertEqual(b.readResponse()?.status, 408)
        }  // closing our ends ends the server's lingering close

        // An idle keep-alive connection is closed quietly.
        let idle = try HTTPRawClient(port: server.port)
        idle.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertEqual(idle.readResponse()?.status, 200)
        let t0 = Date()
        XCTAssertTrue(idle.waitForClose())
        XCTAssertGreaterThan(Date().timeIntervalSince(t0), 0.3)
        XCTAssertTrue(httpEventually(2) { server.activeConnections == 0 })
    }

    func testMalformedRequests400And501() throws {
        let server = try makeServer()
        let cases: [(String, Int)] = [
            ("GARBAGE\r\n\r\n", 400),
            ("GET /x HTTP/1.1 extra\r\n\r\n", 400),
            ("GET /x HTTP/9\r\n\r\n", 400),
            ("GET /x HTTP/2.0\r\n\r\n", 505),
            ("GET /x HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
            ("GET /x HTTP/1.1\r\nBad Name: v\r\n\r\n", 400),
            ("GET /x HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
            ("POST /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
            ("POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
            ("POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST /x HTTP/1.1\r\nTransfer-Encoding: compress\r\n\r\n", 501),
        ]
        for (request, status) in cases {
            let c = try HTTPRawClient(port: server.port)
            c.send(request)
            let r = try XCTUnwrap(c.readResponse(), request)
            XCTAssertEqual(r.status, status, request)
            XCTAssertNotNil(Self.errorMessage(r), request)
            XCTAssertTrue(c.waitForClose(), request)
        }
    }

    func testTooManyConnections503() throws {
        let server = try makeServer { $0.maxConnections = 3 }
        let held = try (0..<3).map { _ in try HTTPRawClient(port: server.port) }
        XCTAssertTrue(httpEventually { server.activeConnections == 3 })
        let extra = try HTTPRawClient(port: server.port)
        let r = try XCTUnwrap(extra.readResponse())
        XCTAssertEqual(r.status, 503)
        XCTAssertNotNil(Self.errorMessage(r))
        XCTAssertTrue(extra.waitForClose())
        held[0].send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertEqual(held[0].readResponse()?.status, 200)
    }

    func testSixHundredIdleConnections() throws {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        if limit.rlim_cur < 2048 {
            limit.rlim_cur = min(limit.rlim_max, 4096)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        let server = try makeServer()
        var clients: [HTTPRawClient] = []
        for _ in 0..<600 { clients.append(try HTTPRawClient(port: server.port)) }
        XCTAssertTrue(httpEventually(5) { server.activeConnections == 600 }, "active: \(server.activeConnections)")
        for i in stride(from: 0, to: 600, by: 20) {
            clients[i].send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        }
        for i in stride(from: 0, to: 600, by: 20) {
            XCTAssertEqual(clients[i].readResponse()?.text, "hello", "client \(i)")
        }
        // A second round on the same sockets: the connections stayed healthy.
        clients[599].send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertEqual(clients[599].readResponse()?.text, "hello")
        XCTAssertEqual(server.activeConnections, 600)
        clients = []
        XCTAssertTrue(httpEventually(5) { server.activeConnections == 0 }, "active: \(server.activeConnections)")
    }

    // MARK: gzip and CORS

    func testGzipResponse() throws {
        let server = try makeServer()
        let c = try HTTPRawClient(port: server.port)
        c.send("GET /json?n=300 HTTP/1.1\r\nHost: t\r\n\r\n")
        let plain = try XCTUnwrap(c.readResponse())
        XCTAssertNil(plain.header("Content-Encoding"))
        c.send("GET /json?n=300 HTTP/1.1\r\nHost: t\r\nAccept-Encoding: deflate, gzip;q=0.8\r\n\r\n")
        let zipped = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(zipped.header("Content-Encoding"), "gzip")
        XCTAssertEqual(zipped.header("Vary"), "Accept-Encoding")
        XCTAssertEqual(Int(zipped.header("Content-Length") ?? ""), zipped.body.count)
        XCTAssertLessThan(zipped.body.count, plain.body.count / 3)
        XCTAssertEqual(Array(zipped.body.prefix(2)), [0x1f, 0x8b])
        // Independent check with GNU gzip.
        if FileManager.default.isExecutableFile(atPath: "/bin/gzip") {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/gzip")
            p.arguments = ["-dc"]
            let inPipe = Pipe(), outPipe = Pipe()
            p.standardInput = inPipe
            p.standardOutput = outPipe
            try p.run()
            inPipe.fileHandleForWriting.write(Data(zipped.body))
            try inPipe.fileHandleForWriting.close()
            let decoded = outPipe.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0)
            XCTAssertEqual([UInt8](decoded), plain.body)
        }
        // Small bodies, q=0 and non-text types stay uncompressed.
        c.send("GET /json?n=2 HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n")
        XCTAssertNil(c.readResponse()?.header("Content-Encoding"))
        c.send("GET /json?n=300 HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip;q=0\r\n\r\n")
        XCTAssertNil(c.readResponse()?.header("Content-Encoding"))
        let binary = String(repeating: "z", count: 5000)
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nContent-Length: 5000\r\n\r\n" + binary)
        XCTAssertNil(c.readResponse()?.header("Content-Encoding"))
    }

    func testCORS() throws {
        let server = try makeServer { $0.corsAllowOrigin = "*" }
        let c = try HTTPRawClient(port: server.port)
        c.send("OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: t\r\nOrigin: http://example.com\r\n"
               + "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type, authorization\r\n\r\n")
        let pre = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(pre.status, 204)
        XCTAssertEqual(pre.header("Access-Control-Allow-Origin"), "*")
        XCTAssertTrue(pre.header("Access-Control-Allow-Methods")?.contains("POST") ?? false)
        XCTAssertEqual(pre.header("Access-Control-Allow-Headers"), "content-type, authorization")
        XCTAssertNil(pre.header("Content-Length"))
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\nOrigin: http://example.com\r\n\r\n")
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.header("Access-Control-Allow-Origin"), "*")
        XCTAssertEqual(r.text, "hello")

        let specific = try makeServer { $0.corsAllowOrigin = "https://app.example" }
        let d = try HTTPRawClient(port: specific.port)
        d.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        let s = try XCTUnwrap(d.readResponse())
        XCTAssertEqual(s.header("Access-Control-Allow-Origin"), "https://app.example")
        XCTAssertEqual(s.header("Vary"), "Origin")
    }

    // MARK: streaming, disconnects, backpressure

    func testServerSentEventsStream() throws {
        let events = HTTPTestBox<[String]>([])
        let server = try makeServer(events: events)
        let c = try HTTPRawClient(port: server.port)
        c.send("GET /stream?n=4&delay=5 HTTP/1.1\r\nHost: t\r\n\r\n")
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.header("Transfer-Encoding"), "chunked")
        XCTAssertEqual(r.header("Content-Type"), "text/event-stream")
        XCTAssertNil(r.header("Content-Length"))
        XCTAssertEqual(r.chunkCount, 5)
        XCTAssertEqual(r.text, (0..<4).map { "data: {\"i\":\($0)}\n\n" }.joined() + "data: [DONE]\n\n")
        XCTAssertTrue(httpEventually { events.get().contains("stream-ended") })
        XCTAssertFalse(events.get().contains("stream-closed"))  // completed streams do not fire onClose
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertEqual(c.readResponse()?.text, "hello")

        // HTTP/1.0: no chunked coding, body delimited by close.
        let old = try HTTPRawClient(port: server.port)
        old.send("GET /stream?n=2 HTTP/1.0\r\n\r\n")
        let r10 = try XCTUnwrap(old.readResponse())
        XCTAssertNil(r10.header("Transfer-Encoding"))
        XCTAssertEqual(r10.text, "data: {\"i\":0}\n\ndata: {\"i\":1}\n\ndata: [DONE]\n\n")
    }

    func testClientDisconnectDuringStream() throws {
        let events = HTTPTestBox<[String]>([])
        let server = try makeServer(events: events)
        let c = try HTTPRawClient(port: server.port)
        c.send("GET /stream?n=1000&delay=10 HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertEqual(c.readHead()?.status, 200)
        XCTAssertNotNil(c.readChunk())
        Glibc.close(c.fd)  // deinit closes again harmlessly (EBADF)
        XCTAssertTrue(httpEventually { events.get().contains("stream-closed") }, "\(events.get())")
        XCTAssertTrue(httpEventually { events.get().contains { $0.hasPrefix("write-failed-at-") } }, "\(events.get())")
        XCTAssertEqual(events.get().filter { $0 == "stream-closed" }.count, 1)
        XCTAssertTrue(httpEventually { server.activeConnections == 0 })
    }

    func testHandlerThatNeverRespondsIsReleasedOnDisconnect() throws {
        let events = HTTPTestBox<[String]>([])
        let server = try makeServer(events: events)
        do {
            let c = try HTTPRawClient(port: server.port)
            c.send("GET /never HTTP/1.1\r\nHost: t\r\n\r\n")
            XCTAssertTrue(httpEventually { server.activeConnections == 1 })
        }
        XCTAssertTrue(httpEventually { events.get() == ["never-started", "never-closed"] }, "\(events.get())")
        XCTAssertTrue(httpEventually { server.activeConnections == 0 })
    }

    func testOnCloseAfterCloseFiresImmediately() throws {
        let writerBox = HTTPTestBox<HTTPResponseWriter?>(nil)
        let server = try makeServer(handler: { _, writer in writerBox.set(writer) })
        do {
            let c = try HTTPRawClient(port: server.port)
            c.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            XCTAssertTrue(httpEventually { writerBox.get() != nil })
        }
        let writer = try XCTUnwrap(writerBox.get())
        XCTAssertTrue(httpEventually { writer.isClosed })
        let fired = HTTPTestBox(0)
        writer.onClose { fired.update { $0 += 1 } }
        XCTAssertEqual(fired.get(), 1)
        XCTAssertFalse(writer.startStream(status: 200, headers: []))
        XCTAssertFalse(writer.writeChunk(Data("x".utf8)))
    }

    func testSlowReaderIsDisconnectedWithBoundedBuffer() throws {
        let events = HTTPTestBox<[String]>([])
        let server = try makeServer({ $0.maxPendingBytes = 256 * 1024 }, events: events)
        let c = try HTTPRawClient(port: server.port)
        c.setReceiveBuffer(16 * 1024)
        c.send("GET /flood?pace=1 HTTP/1.1\r\nHost: t\r\n\r\n")  // and never read
        XCTAssertTrue(httpEventually(8) { events.get().contains { $0.hasPrefix("flood-stopped") } }, "\(events.get())")
        let summary = try XCTUnwrap(events.get().first { $0.hasPrefix("flood-stopped") })
        print("slow reader:", summary)
        let fields = Dictionary(uniqueKeysWithValues: summary.split(separator: " ").dropFirst().map {
            let kv = $0.split(separator: "=")
            return (String(kv[0]), String(kv[1]))
        })
        let total = Int(fields["total"]!)!
        let maxBuffered = Int(fields["maxBuffered"]!)!
        // Kernel socket buffers absorb some megabytes at most; our own buffer never exceeds the bound.
        XCTAssertLessThan(total, 32 * 1024 * 1024, summary)
        XCTAssertLessThanOrEqual(maxBuffered, 256 * 1024 + 64 * 1024 + 16, summary)
        XCTAssertEqual(fields["again"], "false")
        XCTAssertEqual(fields["closed"], "true")
        XCTAssertTrue(httpEventually { events.get().contains("flood-closed") })
        XCTAssertTrue(httpEventually { server.activeConnections == 0 })
    }

    func testWriteTimeoutClosesStalledConnection() throws {
        let events = HTTPTestBox<[String]>([])
        // Buffer bound large enough that only the write timeout can end this.
        let server = try makeServer({ $0.maxPendingBytes = 1 << 30; $0.writeTimeout = 0.4 }, events: events)
        let c = try HTTPRawClient(port: server.port)
        c.setReceiveBuffer(16 * 1024)
        c.send("GET /flood HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertTrue(httpEventually(8) { events.get().contains("flood-closed") }, "\(events.get())")
        XCTAssertTrue(httpEventually { server.activeConnections == 0 })
    }

    // MARK: shutdown

    func testShutdownDrainsInFlightStream() throws {
        let events = HTTPTestBox<[String]>([])
        let server = try makeServer(events: events)
        let idle = try HTTPRawClient(port: server.port)
        let streaming = try HTTPRawClient(port: server.port)
        streaming.send("GET /stream?n=10&delay=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertEqual(streaming.readHead()?.status, 200)
        XCTAssertNotNil(streaming.readChunk())
        XCTAssertTrue(httpEventually { server.activeConnections == 2 })
        let port = server.port
        let start = Date()
        server.shutdown(timeout: 5)
        let took = Date().timeIntervalSince(start)
        XCTAssertTrue(events.get().contains("stream-ended"), "\(events.get())")
        XCTAssertGreaterThan(took, 0.15)
        XCTAssertLessThan(took, 3)
        XCTAssertEqual(server.activeConnections, 0)
        var chunks = 1
        while let chunk = streaming.readChunk(), !chunk.isEmpty { chunks += 1 }
        XCTAssertEqual(chunks, 11)
        XCTAssertTrue(streaming.waitForClose())
        XCTAssertTrue(idle.waitForClose())
        XCTAssertThrowsError(try HTTPRawClient(port: port))
    }

    func testShutdownGivesUpAfterTimeout() throws {
        let events = HTTPTestBox<[String]>([])
        let server = try makeServer(events: events)
        let c = try HTTPRawClient(port: server.port)
        c.send("GET /never HTTP/1.1\r\nHost: t\r\n\r\n")
        // Wait for the handler, not just the connection: a connection whose request is unread is idle and
        // closes at once without ever reaching it.
        XCTAssertTrue(httpEventually { events.get() == ["never-started"] })
        let start = Date()
        server.shutdown(timeout: 0.3)
        XCTAssertLessThan(Date().timeIntervalSince(start), 1.5)
        XCTAssertEqual(server.activeConnections, 0)
        XCTAssertTrue(httpEventually { events.get() == ["never-started", "never-closed"] })
    }

    func testShutdownHookRunsOnlyAfterTheTimeout() throws {
        let events = HTTPTestBox<[String]>([])
        let server = try makeServer(events: events)
        let c = try HTTPRawClient(port: server.port)
        c.send("GET /stream?n=1000&delay=10 HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertEqual(c.readHead()?.status, 200)
        let start = Date()
        server.shutdown(timeout: 0.3, onTimeout: { events.update { $0.append("timeout-hook") } }, grace: 0.2)
        let took = Date().timeIntervalSince(start)
        XCTAssertGreaterThan(took, 0.45)
        XCTAssertLessThan(took, 2)
        XCTAssertEqual(events.get().filter { $0 == "timeout-hook" }.count, 1)
        XCTAssertEqual(server.activeConnections, 0)
        // A server with nothing in flight never calls it.
        let idle = try makeServer(events: events)
        idle.shutdown(timeout: 0.3, onTimeout: { events.update { $0.append("idle-hook") } })
        XCTAssertFalse(events.get().contains("idle-hook"))
    }

    // MARK: issue 15: request details

    func testHTTP11WithoutHostIs400() throws {
        let server = try makeServer()
        let c = try HTTPRawClient(port: server.port)
        c.send("GET /hello HTTP/1.1\r\n\r\n")
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.status, 400)
        XCTAssertTrue(Self.errorMessage(r)?.contains("Host") ?? false, r.text)
        let old = try HTTPRawClient(port: server.port)
        old.send("GET /hello HTTP/1.0\r\n\r\n")
        XCTAssertEqual(old.readResponse()?.text, "hello", "HTTP/1.0 needs no Host")
    }

    /// Garbage, TLS on the plain port and HTTP/0.9 get their 400 as soon as the first bytes show it, not after
    /// the header timeout.
    func testBadRequestLinesAre400AtOnce() throws {
        let server = try makeServer { $0.headerTimeout = 10 }
        let cases: [[UInt8]] = [
            Array("GET /\r\n".utf8),                       // HTTP/0.9
            [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00],      // a TLS ClientHello
            Array("\u{7f}ELF garbage".utf8),
            Array("GET /x HTTP/1.1 extra".utf8),
            Array("GET  /x".utf8),
            Array(String(repeating: "A", count: 40).utf8),    // no method is that long
        ]
        for bytes in cases {
            let c = try HTTPRawClient(port: server.port)
            let start = Date()
            c.send(bytes)
            let r = try XCTUnwrap(c.readResponse(), "\(bytes)")
            XCTAssertEqual(r.status, 400, "\(bytes)")
            XCTAssertLessThan(Date().timeIntervalSince(start), 2, "\(bytes)")
            XCTAssertTrue(c.waitForClose())
        }
        // A request line arriving in pieces is still fine.
        let slow = try HTTPRawClient(port: server.port)
        for piece in ["GE", "T /hel", "lo HT", "TP/1", ".1\r\nHo", "st: t\r\n\r\n"] {
            slow.send(piece)
            usleep(20_000)
        }
        XCTAssertEqual(slow.readResponse()?.text, "hello")
    }

    /// gzip compressed by GNU gzip, the independent reference.
    private func gnuGzip(_ data: [UInt8]) throws -> [UInt8] {
        guard FileManager.default.isExecutableFile(atPath: "/bin/gzip") else { throw XCTSkip("no /bin/gzip") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/gzip")
        p.arguments = ["-c"]
        let inPipe = Pipe(), outPipe = Pipe()
        p.standardInput = inPipe
        p.standardOutput = outPipe
        try p.run()
        let writer = Thread { inPipe.fileHandleForWriting.write(Data(data)); try? inPipe.fileHandleForWriting.close() }
        writer.start()
        let out = outPipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return [UInt8](out)
    }

    func testGzipRequestBodiesAreDecoded() throws {
        let server = try makeServer { $0.maxBodyBytes = 100_000 }
        let text = Array(String(repeating: "{\"prompt\":\"hello\"} ", count: 200).utf8)
        let zipped = try gnuGzip(text)
        let c = try HTTPRawClient(port: server.port)
        c.send(Array("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nContent-Length: \(zipped.count)\r\n\r\n".utf8) + zipped)
        let r = try XCTUnwrap(c.readResponse())
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.body, text)
        // Two members back to back decode to both texts, as gzip -d does.
        let twice = zipped + zipped
        c.send(Array("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nContent-Length: \(twice.count)\r\n\r\n".utf8) + twice)
        XCTAssertEqual(c.readResponse()?.body, text + text)

        // A body that inflates past the limit: 413 without inflating it all.
        let bomb = try gnuGzip([UInt8](repeating: 0, count: 5_000_000))
        let b = try HTTPRawClient(port: server.port)
        b.send(Array("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nContent-Length: \(bomb.count)\r\n\r\n".utf8) + bomb)
        XCTAssertEqual(b.readResponse()?.status, 413)
        // Damaged or cut bodies: 400.
        for bad in [Array(zipped.prefix(zipped.count / 2)), Array(zipped.prefix(10)) + [UInt8](repeating: 0xAB, count: 40), Array("plain".utf8)] {
            let d = try HTTPRawClient(port: server.port)
            d.send(Array("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nContent-Length: \(bad.count)\r\n\r\n".utf8) + bad)
            let answer = try XCTUnwrap(d.readResponse())
            XCTAssertEqual(answer.status, 400, answer.text)
            XCTAssertNotNil(Self.errorMessage(answer))
        }
        // No body, nothing to decode.
        c.send("GET /hello HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\n\r\n")
        XCTAssertEqual(c.readResponse()?.text, "hello")
        // Codings nobody here decodes: 415 before the body is read.
        let u = try HTTPRawClient(port: server.port)
        u.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\n")
        XCTAssertEqual(u.readResponse()?.status, 415)
    }

    // MARK: start errors

    func testStartErrors() throws {
        let first = try makeServer()
        var config = HTTPServerConfiguration()
        config.port = first.port
        let second = try HTTPServer(configuration: config, handler: { _, _ in })
        XCTAssertThrowsError(try second.start()) { error in
            XCTAssertTrue("\(error)".contains("already in use"), "\(error)")
        }
        config.port = 0
        config.host = "no.such.host.invalid"
        XCTAssertThrowsError(try HTTPServer(configuration: config, handler: { _, _ in }).start()) { error in
            XCTAssertTrue("\(error)".contains("no.such.host.invalid"), "\(error)")
        }
        config.host = "127.0.0.1"
        config.tlsCertificatePath = "/nonexistent/cert.pem"
        config.tlsKeyPath = "/nonexistent/key.pem"
        XCTAssertThrowsError(try HTTPServer(configuration: config, handler: { _, _ in })) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent/cert.pem"), "\(error)")
        }
    }

    // MARK: TLS

    static func run(_ path: String, _ args: [String], stdin: Data? = nil) throws -> (status: Int32, out: Data, err: Data) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let outPipe = Pipe(), errPipe = Pipe()
        p.standardOutput = outPipe
        p.standardError = errPipe
        try p.run()
        // Drain both pipes concurrently so a chatty child cannot block.
        let errData = HTTPTestBox(Data())
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { errData.set(errPipe.fileHandleForReading.readDataToEndOfFile()) }
        let out = outPipe.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return (p.terminationStatus, out, errData.get())
    }

    func testTLSRoundTrip() throws {
        let openssl = "/usr/bin/openssl", curl = "/usr/bin/curl"
        guard FileManager.default.isExecutableFile(atPath: openssl), FileManager.default.isExecutableFile(atPath: curl) else {
            throw XCTSkip("openssl or curl CLI not available")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let cert = dir.appendingPathComponent("cert.pem").path, key = dir.appendingPathComponent("key.pem").path
        let gen = try Self.run(openssl, ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"])
        guard gen.status == 0 else { throw XCTSkip("openssl could not make a certificate") }

        let logs = HTTPTestBox<[String]>([])
        let events = HTTPTestBox<[String]>([])
        let server = try makeServer({
            $0.tlsCertificatePath = cert
            $0.tlsKeyPath = key
            $0.log = { line in logs.update { $0.append(line) } }
        }, events: events)
        let base = "https://127.0.0.1:\(server.port)"
        // Two requests on one connection (keep-alive over TLS), a POST body, gzip, and a stream.
        let r = try Self.run(curl, ["-sS", "-k", "--http1.1", "--compressed", "-o", "/dev/null", "-w", "%{http_code}\n",
                                    "\(base)/hello", "-o", "/dev/null", "\(base)/json?n=300"])
        XCTAssertEqual(String(decoding: r.out, as: UTF8.self), "200\n200\n", String(decoding: r.err, as: UTF8.self))
        let echo = try Self.run(curl, ["-sS", "-k", "--http1.1", "-H", "Content-Type: text/plain",
                                       "--data-binary", "secret payload", "\(base)/echo"])
        XCTAssertEqual(String(decoding: echo.out, as: UTF8.self), "secret payload", String(decoding: echo.err, as: UTF8.self))
        let big = String(repeating: "0123456789", count: 50_000)  // 500 KB each way: many records, partial writes
        let bigPath = dir.appendingPathComponent("big.txt").path
        try big.write(toFile: bigPath, atomically: true, encoding: .utf8)
        let bigEcho = try Self.run(curl, ["-sS", "-k", "--http1.1", "-H", "Content-Type: application/octet-stream",
                                          "--data-binary", "@" + bigPath, "\(base)/echo"])
        XCTAssertEqual(bigEcho.out.count, big.utf8.count)
        XCTAssertEqual(String(decoding: bigEcho.out, as: UTF8.self) == big, true)
        let stream = try Self.run(curl, ["-sS", "-k", "--http1.1", "-N", "\(base)/stream?n=3"])
        XCTAssertEqual(String(decoding: stream.out, as: UTF8.self),
                       "data: {\"i\":0}\n\ndata: {\"i\":1}\n\ndata: {\"i\":2}\n\ndata: [DONE]\n\n")
        let gz = try Self.run(curl, ["-sS", "-k", "--http1.1", "-D", "-", "-o", "/dev/null", "-H", "Accept-Encoding: gzip",
                                     "\(base)/json?n=300"])
        XCTAssertTrue(String(decoding: gz.out, as: UTF8.self).lowercased().contains("content-encoding: gzip"))

        // A plaintext client on the TLS port fails the handshake; the failure is logged, the server lives on.
        let plain = try HTTPRawClient(port: server.port, receiveTimeout: 2)
        plain.send("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        XCTAssertNil(plain.readResponse())
        XCTAssertTrue(httpEventually { logs.get().contains { $0.contains("TLS") } }, "\(logs.get())")
        let again = try Self.run(curl, ["-sS", "-k", "\(base)/hello"])
        XCTAssertEqual(String(decoding: again.out, as: UTF8.self), "hello")
        XCTAssertTrue(httpEventually { server.activeConnections == 0 })
    }
}
