// HTTP/1.1 request parsing: finding and validating the header block, deciding body framing
// (Content-Length, chunked), and an incremental decoder for chunked request bodies.
// Strict where leniency invites request smuggling (TE+CL together, obs-fold, bad lengths).

import Foundation

enum HTTPBodyFraming: Equatable {
    case none
    case length(Int)
    case chunked
}

struct HTTPParsedHead {
    var method: String
    var path: String
    var query: String?
    var version: String
    var headers: [(name: String, value: String)]
    var framing: HTTPBodyFraming
    var keepAlive: Bool
    var expectContinue: Bool
    var acceptsGzip: Bool
    /// The body's Content-Encoding when it must be decoded ("gzip" or "deflate"); nil for identity.
    var contentEncoding: String? = nil

    func header(_ name: String) -> String? {
        for h in headers where h.name.caseInsensitiveCompare(name) == .orderedSame { return h.value }
        return nil
    }
}

/// A request that cannot be served; answered with `status` and the connection is closed.
struct HTTPParseError: Error {
    var status: Int
    var message: String
}

enum HTTPParser {
    private static let cr: UInt8 = 13, lf: UInt8 = 10, sp: UInt8 = 32, ht: UInt8 = 9, colon: UInt8 = 58

    /// Index just past the blank line ending the header block, searching from `from`
    /// (callers resume where the last search stopped). Accepts CRLF and bare LF line ends.
    static func findHeadEnd(_ buf: [UInt8], from: Int) -> Int? {
        var i = max(from, 1)
        let n = buf.count
        while i < n {
            if buf[i] == lf {
                if buf[i - 1] == lf { return i + 1 }
                if buf[i - 1] == cr && i >= 2 && buf[i - 2] == lf { return i + 1 }
            }
            i += 1
        }
        return nil
    }

    static func isTokenChar(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }

    static func parseHead(_ buf: ArraySlice<UInt8>, maxBodyBytes: Int) throws(HTTPParseError) -> HTTPParsedHead {
        // Split into lines, dropping CR before LF.
        var lines: [ArraySlice<UInt8>] = []
        var start = buf.startIndex
        var i = buf.startIndex
        while i < buf.endIndex {
            if buf[i] == lf {
                var end = i
                if end > start && buf[end - 1] == cr { end -= 1 }
                lines.append(buf[start..<end])
                start = i + 1
            }
            i += 1
        }
        while let last = lines.last, last.isEmpty { lines.removeLast() }
        guard let requestLine = lines.first else { throw HTTPParseError(status: 400, message: "empty request") }

        // Request line: method SP target SP version, single spaces.
        let parts = requestLine.split(separator: sp, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw HTTPParseError(status: 400, message: "malformed request line")
        }
        guard parts[0].allSatisfy(isTokenChar) else { throw HTTPParseError(status: 400, message: "malformed method") }
        guard parts[1].allSatisfy({ $0 > 32 && $0 != 127 }) else {
            throw HTTPParseError(status: 400, message: "malformed request target")
        }
        let method = String(decoding: parts[0], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            let v = Array(parts[2])
            if v.count == 8 && version.hasPrefix("HTTP/") && v[6] == UInt8(ascii: ".") {
                throw HTTPParseError(status: 505, message: "HTTP version \(version) is not supported")
            }
            throw HTTPParseError(status: 400, message: "malformed HTTP version")
        }
        var target = String(decoding: parts[1], as: UTF8.self)
        if !target.hasPrefix("/") && target != "*" {
            // absolute-form (proxies): keep only path and query.
            if let schemeEnd = target.range(of: "://") {
                let rest = target[schemeEnd.upperBound...]
                target = rest.firstIndex(where: { $0 == "/" || $0 == "?" }).map { String(rest[$0...]) } ?? "/"
                if target.hasPrefix("?") { target = "/" + target }
            } else {
                throw HTTPParseError(status: 400, message: "malformed request target")
            }
        }
        var path = target
        var query: String?
        if let q = target.firstIndex(of: "?") {
            path = String(target[..<q])
            query = String(target[target.index(after: q)...])
        }

        var headers: [(name: String, value: String)] = []
        headers.reserveCapacity(lines.count - 1)
        for line in lines.dropFirst() {
            guard let first = line.first else { throw HTTPParseError(status: 400, message: "malformed header") }
            if first == sp || first == ht {
                throw HTTPParseError(status: 400, message: "obsolete header line folding is not accepted")
            }
            guard let c = line.firstIndex(of: colon) else {
                throw HTTPParseError(status: 400, message: "malformed header line")
            }
            let name = line[line.startIndex..<c]
            guard !name.isEmpty, name.allSatisfy(isTokenChar) else {
                throw HTTPParseError(status: 400, message: "malformed header name")
            }
            var v = line[(c + 1)...]
            while let f = v.first, f == sp || f == ht { v = v.dropFirst() }
            while let l = v.last, l == sp || l == ht { v = v.dropLast() }
            if v.contains(where: { ($0 < 32 && $0 != ht) || $0 == 127 }) {
                throw HTTPParseError(status: 400, message: "control character in header value")
            }
            headers.append((String(decoding: name, as: UTF8.self), String(decoding: v, as: UTF8.self)))
        }

        // Framing.
        var contentLength: Int?
        var transferCodings: [String] = []
        var connectionTokens: [String] = []
        var expectContinue = false
        var acceptsGzip = false
        var hostCount = 0
        var contentCodings: [String] = []
        for (name, value) in headers {
            switch name.lowercased() {
            case "content-length":
                guard !value.isEmpty, value.utf8.count <= 18, value.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                      let n = Int(value) else {
                    throw HTTPParseError(status: 400, message: "invalid Content-Length")
                }
                if let old = contentLength, old != n {
                    throw HTTPParseError(status: 400, message: "conflicting Content-Length headers")
                }
                contentLength = n
            case "transfer-encoding":
                transferCodings += value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
                    .filter { !$0.isEmpty }
            case "connection":
                connectionTokens += value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            case "expect":
                if value.lowercased() == "100-continue" { expectContinue = true }
                else { throw HTTPParseError(status: 417, message: "unsupported Expect value") }
            case "accept-encoding":
                acceptsGzip = acceptsCoding("gzip", value)
            case "host":
                hostCount += 1
            case "content-encoding":
                contentCodings += value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
                    .filter { !$0.isEmpty && $0 != "identity" }
            default:
                break
            }
        }
        if hostCount > 1 { throw HTTPParseError(status: 400, message: "multiple Host headers") }
        var framing = HTTPBodyFraming.none
        if !transferCodings.isEmpty {
            if contentLength != nil {
                throw HTTPParseError(status: 400, message: "both Transfer-Encoding and Content-Length given")
            }
            guard transferCodings == ["chunked"] else {
                throw HTTPParseError(status: 501, message: "unsupported Transfer-Encoding '\(transferCodings.joined(separator: ", "))'")
            }
            framing = .chunked
        } else if let n = contentLength, n > 0 {
            if n > maxBodyBytes {
                throw HTTPParseError(status: 413, message: "request body of \(n) bytes exceeds the limit of \(maxBodyBytes) bytes")
            }
            framing = .length(n)
        }
        var contentEncoding: String?
        switch contentCodings {
        case []: break
        case ["gzip"], ["x-gzip"]: contentEncoding = "gzip"
        case ["deflate"]: contentEncoding = "deflate"
        default:
            throw HTTPParseError(status: 415, message: "unsupported Content-Encoding '\(contentCodings.joined(separator: ", "))' (gzip and deflate are accepted)")
        }
        // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request without Host.
        if version == "HTTP/1.1" && hostCount == 0 {
            throw HTTPParseError(status: 400, message: "an HTTP/1.1 request needs a Host header")
        }
        let keepAlive = version == "HTTP/1.1" ? !connectionTokens.contains("close")
                                              : connectionTokens.contains("keep-alive")
        return HTTPParsedHead(method: method, path: path, query: query, version: version, headers: headers,
                          framing: framing, keepAlive: keepAlive, expectContinue: expectContinue && version == "HTTP/1.1",
                          acceptsGzip: acceptsGzip, contentEncoding: contentEncoding)
    }

    /// Whether an Accept-Encoding value admits `coding` (explicitly or via "*") with a non-zero q.
    static func acceptsCoding(_ coding: String, _ value: String) -> Bool {
        var star: Bool?
        for item in value.split(separator: ",") {
            let fields = item.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard let name = fields.first else { continue }
            var q = 1.0
            for f in fields.dropFirst() where f.hasPrefix("q=") { q = Double(f.dropFirst(2)) ?? 1.0 }
            if name == coding { return q > 0 }
            if name == "*" { star = q > 0 }
        }
        return star ?? false
    }
}

/// Incremental decoder for `Transfer-Encoding: chunked` request bodies; trailers are read and dropped.
struct HTTPChunkedDecoder {
    private enum State { case size, data(Int), dataEnd, trailer, done }
    private var state = State.size
    private(set) var body: [UInt8] = []
    let maxBodyBytes: Int
    private static let maxLine = 4096

    init(maxBodyBytes: Int) { self.maxBodyBytes = maxBodyBytes }

    var isDone: Bool { if case .done = state { return true } else { return false } }

    /// Consumes what it can from `buf` starting at `offset`; returns the new offset.
    mutating func consume(_ buf: [UInt8], from offset: Int) throws(HTTPParseError) -> Int {
        var i = offset
        let n = buf.count
        while i < n {
            switch state {
            case .size:
                guard let lineEnd = Self.lineEnd(buf, from: i) else {
                    if n - i > Self.maxLine { throw HTTPParseError(status: 400, message: "chunk size line too long") }
                    return i
                }
                var line = buf[i..<lineEnd.contentEnd]
                if let semi = line.firstIndex(of: UInt8(ascii: ";")) { line = line[..<semi] }
                while let l = line.last, l == 32 || l == 9 { line = line.dropLast() }
                guard !line.isEmpty, line.count <= 15 else { throw HTTPParseError(status: 400, message: "invalid chunk size") }
                var size = 0
                for c in line {
                    let d: Int
                    switch c {
                    case 48...57: d = Int(c) - 48
                    case 97...102: d = Int(c) - 87
                    case 65...70: d = Int(c) - 55
                    default: throw HTTPParseError(status: 400, message: "invalid chunk size")
                    }
                    size = size * 16 + d
                }
                if body.count + size > maxBodyBytes {
                    throw HTTPParseError(status: 413, message: "request body exceeds the limit of \(maxBodyBytes) bytes")
                }
                i = lineEnd.next
                state = size == 0 ? .trailer : .data(size)
            case .data(let remaining):
                let take = min(remaining, n - i)
                body.append(contentsOf: buf[i..<(i + take)])
                i += take
                state = remaining - take == 0 ? .dataEnd : .data(remaining - take)
            case .dataEnd:
                if buf[i] == 13 {
                    if i + 1 >= n { return i }
                    guard buf[i + 1] == 10 else { throw HTTPParseError(status: 400, message: "missing CRLF after chunk") }
                    i += 2
                } else if buf[i] == 10 {
                    i += 1
                } else {
                    throw HTTPParseError(status: 400, message: "missing CRLF after chunk")
                }
                state = .size
            case .trailer:
                guard let lineEnd = Self.lineEnd(buf, from: i) else {
                    if n - i > Self.maxLine { throw HTTPParseError(status: 400, message: "trailer line too long") }
                    return i
                }
                let empty = lineEnd.contentEnd == i
                i = lineEnd.next
                if empty { state = .done; return i }
            case .done:
                return i
            }
        }
        return i
    }

    private static func lineEnd(_ buf: [UInt8], from: Int) -> (contentEnd: Int, next: Int)? {
        var j = from
        while j < buf.count {
            if buf[j] == 10 { return (j > from && buf[j - 1] == 13 ? j - 1 : j, j + 1) }
            j += 1
        }
        return nil
    }
}

/// Checks the start of a header block as it arrives, so random bytes, TLS on the plain port or an HTTP/0.9 line
/// ("GET /") get their 400 at once instead of waiting for the header timeout. It resumes where the last call
/// stopped: a client sending its request line one byte at a time costs linear time, not quadratic.
struct HTTPRequestLineScanner {
    static let maxMethodLength = 32
    private enum Part { case method, target, version, done }
    private var part = Part.method
    private var length = 0
    /// Bytes of the buffer already checked.
    private var offset = 0
    private static let http: [UInt8] = Array("HTTP/".utf8)

    /// nil while `buf` (the same buffer, grown since the last call) can still begin a valid request line, else
    /// why not. After the line's LF everything is left to the full parser.
    mutating func check(_ buf: [UInt8]) -> String? {
        while offset < buf.count && part != .done {
            let c = buf[offset]
            offset += 1
            switch part {
            case .method:
                if c == 32 && length > 0 { part = .target; length = 0; continue }
                guard HTTPParser.isTokenChar(c) else { return "malformed request line" }
                length += 1
                if length > Self.maxMethodLength { return "malformed method" }
            case .target:
                if c == 32 && length > 0 { part = .version; length = 0; continue }
                guard c > 32 && c != 127 else { return "malformed request line (HTTP/0.9 is not supported)" }
                length += 1
            case .version:
                let ok: Bool
                switch length {
                case 0..<5: ok = c == Self.http[length]
                case 5, 7: ok = c >= 48 && c <= 57
                case 6: ok = c == UInt8(ascii: ".")
                case 8: ok = c == 13 || c == 10
                default: ok = c == 10
                }
                guard ok else { return "malformed request line" }
                if c == 10 { part = .done }
                length += 1
            case .done:
                break
            }
        }
        return nil
    }
}
