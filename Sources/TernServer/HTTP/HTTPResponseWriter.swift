// The handle a request handler answers through: a complete response or a chunked stream (SSE). Safe to use
// from any thread; bytes go into the connection's bounded output buffer and never block the caller.

import Foundation

public final class HTTPResponseWriter: @unchecked Sendable {
    // All mutable response state lives in the connection under its lock; these are immutable request facts.
    private let connection: HTTPConnection
    private let seq: Int
    private let isHead: Bool
    private let requestKeepAlive: Bool
    private let acceptsGzip: Bool
    /// HTTP/1.0 has no chunked coding: such streams are delimited by closing the connection.
    private let chunkedStreams: Bool

    init(connection: HTTPConnection, seq: Int, request: HTTPParsedHead) {
        self.connection = connection
        self.seq = seq
        self.isHead = request.method == "HEAD"
        self.requestKeepAlive = request.keepAlive
        self.acceptsGzip = request.acceptsGzip
        self.chunkedStreams = request.version == "HTTP/1.1"
    }

    /// A complete response. Adds Content-Length, Date, Server, Connection and CORS headers; gzip-compresses
    /// json/text bodies over 1 KiB when the client accepts gzip. Ignored if a response was already started.
    public func respond(status: Int, headers: [(String, String)], body: Data) {
        var headers = headers
        var body = body
        let noBody = status == 204 || status == 304 || (100..<200).contains(status)
        if acceptsGzip && !isHead && !noBody && body.count > HTTPGzip.minimumSize
            && !headers.contains(where: { $0.0.lowercased() == "content-encoding" })
            && HTTPGzip.isCompressible(contentType: Self.value("content-type", in: headers)),
            let compressed = HTTPGzip.compress(body), compressed.count < body.count {
            body = compressed
            headers.append(("Content-Encoding", "gzip"))
            headers.append(("Vary", "Accept-Encoding"))
        }
        var bytes = head(status: status, headers: headers,
                         framing: noBody ? nil : "Content-Length: \(body.count)")
        if !isHead && !noBody { bytes.append(contentsOf: body) }
        _ = connection.append(bytes, forSeq: seq, newState: .complete, allowedFrom: [.none])
    }

    /// Convenience: an OpenAI-style JSON error response.
    public func respondError(status: Int, message: String, type: String = "invalid_request_error",
                             param: String? = nil, code: String? = nil) {
        respond(status: status, headers: [("Content-Type", "application/json")],
                body: httpErrorJSON(message: message, type: type, param: param, code: code))
    }

    /// Begins a streamed response (chunked transfer coding on HTTP/1.1). False if the client is gone.
    @discardableResult
    public func startStream(status: Int, headers: [(String, String)]) -> Bool {
        if !chunkedStreams { connection.markCloseAfterResponse() }
        let bytes = head(status: status, headers: headers,
                         framing: chunkedStreams ? "Transfer-Encoding: chunked" : nil)
        return connection.append(bytes, forSeq: seq, newState: .streaming, allowedFrom: [.none]) == .ok
    }

    /// One piece of the stream. False when the client is gone or stopped reading (buffer overflow closes it).
    @discardableResult
    public func writeChunk(_ data: Data) -> Bool {
        if data.isEmpty { return !isClosed }  // an empty chunk would end the chunked body
        if isHead { return !isClosed }
        var bytes: [UInt8]
        if chunkedStreams {
            bytes = Array(String(data.count, radix: 16).utf8)
            bytes.reserveCapacity(bytes.count + data.count + 4)
            bytes.append(13); bytes.append(10)
            bytes.append(contentsOf: data)
            bytes.append(13); bytes.append(10)
        } else {
            bytes = [UInt8](data)
        }
        return connection.append(bytes, forSeq: seq, newState: .streaming, allowedFrom: [.streaming]) == .ok
    }

    /// Ends the stream; the connection then serves its next request (or closes).
    public func endStream() {
        let bytes: [UInt8] = chunkedStreams && !isHead ? Array("0\r\n\r\n".utf8) : []
        _ = connection.append(bytes, forSeq: seq, newState: .complete, allowedFrom: [.streaming])
    }

    /// True once the client disconnected or the connection was closed (timeouts, overflow, shutdown).
    public var isClosed: Bool { connection.isClosed }

    /// Response bytes accepted but not yet taken by the socket; a producer may pace itself on it.
    public var bufferedBytes: Int { connection.pendingBytes() }

    /// Called once, on an arbitrary thread, if the connection closes before respond/endStream completed the
    /// response; immediately if it is already closed. Never called for a response that completed.
    public func onClose(_ handler: @escaping @Sendable () -> Void) {
        connection.addCloseHandler(seq: seq, handler)
    }

    // MARK: header block

    private static func value(_ name: String, in headers: [(String, String)]) -> String? {
        headers.first(where: { $0.0.lowercased() == name })?.1
    }

    private func head(status: Int, headers: [(String, String)], framing: String?) -> [UInt8] {
        var text = "HTTP/1.1 \(status) \(HTTPStatus.reason(status))\r\n"
        var hasDate = false, hasServer = false, hasCORS = false, forceClose = false
        var vary: [String] = []
        for (name, value) in headers {
            switch name.lowercased() {
            case "content-length", "transfer-encoding":
                continue  // framing is ours
            case "connection":
                if value.lowercased().contains("close") { forceClose = true }
                continue
            case "vary":
                vary.append(value)
                continue
            case "date": hasDate = true
            case "server": hasServer = true
            case "access-control-allow-origin": hasCORS = true
            default: break
            }
            // Values with CR/LF would let a caller inject headers.
            if name.utf8.contains(where: { $0 == 13 || $0 == 10 }) || value.utf8.contains(where: { $0 == 13 || $0 == 10 }) {
                continue
            }
            text += "\(name): \(value)\r\n"
        }
        if !hasDate { text += "Date: \(httpDate())\r\n" }
        if !hasServer { text += "Server: tern\r\n" }
        if let origin = connection.config.corsAllowOrigin, !hasCORS {
            text += "Access-Control-Allow-Origin: \(origin)\r\n"
            if origin != "*" { vary.insert("Origin", at: 0) }
        }
        if !vary.isEmpty { text += "Vary: \(vary.joined(separator: ", "))\r\n" }
        if let framing { text += framing + "\r\n" }
        if forceClose { connection.markCloseAfterResponse() }
        let keepAlive = requestKeepAlive && !connection.wantsClose()
        if !keepAlive { connection.markCloseAfterResponse() }
        text += keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n"
        return Array(text.utf8)
    }
}
