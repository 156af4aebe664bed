// One accepted client connection: non-blocking socket (optionally TLS) driven by Dispatch read/write sources on
// a private serial queue. It parses requests one at a time, hands each to the handler with a response writer,
// and drains the bounded output buffer that writers fill from any thread.
//
// Ownership: everything under "queue-only" is touched only on `queue` (socket, SSL, parser state). The output
// buffer and response state are shared with writer threads and guarded by `lock`; the socket is only ever
// written on `queue`, so writers never block on a slow client.

import Foundation
#if canImport(Glibc)
import Glibc
#endif
import COpenSSL

final class HTTPConnection: @unchecked Sendable {
    enum Phase {
        case head                // waiting for (the rest of) a header block
        case body                // reading a request body
        case waitingResponse     // handler owns the request; response not complete yet
        case closeAfterFlush     // last response queued; shut down once the buffer drains
        case linger              // write side shut; discarding input until EOF so the peer sees our response
    }
    enum ResponseState { case none, streaming, complete }

    let fd: Int32
    let queue: DispatchQueue
    let core: HTTPServerCore
    let remoteAddress: String
    var config: HTTPServerConfiguration { core.config }

    // MARK: queue-only state
    private var ssl: OpaquePointer?
    private var readSource: DispatchSourceRead?
    private var writeSource: DispatchSourceWrite?
    private var writeSourceActive = false
    private var readSuspended = false
    private var pendingCancels = 0
    private var tornDown = false
    private var inBuf: [UInt8] = []
    private var scanOffset = 0
    /// Validates the request line of the request now arriving; reset for each request.
    private var lineScanner = HTTPRequestLineScanner()
    private(set) var phase = Phase.head
    private var idleSince: Double
    private var headStart: Double?
    private var bodyStart = 0.0
    private var lingerStart = 0.0
    private var head: HTTPParsedHead?
    private var bodyRemaining = 0
    private var body: [UInt8] = []
    private var chunked: HTTPChunkedDecoder?
    private var tlsReadWantsWrite = false
    private var tlsWriteWantsRead = false

    // MARK: lock-protected state (shared with writers)
    let lock = NSLock()
    private var out: [UInt8] = []
    private var outOffset = 0
    private var flushScheduled = false
    private var lastWriteProgress = 0.0
    private(set) var closed = false
    private var seq = 0
    private var responseState = ResponseState.none
    private var closeHandlers: [@Sendable () -> Void] = []
    /// Set by shutdown and by responses that must end the connection (HTTP/1.0 streams, errors).
    private var closeAfterResponse = false

    init(fd: Int32, remoteAddress: String, core: HTTPServerCore) {
        self.fd = fd
        self.remoteAddress = remoteAddress
        self.core = core
        self.queue = DispatchQueue(label: "tern.http.connection", target: core.ioQueue)
        self.idleSince = httpMonotonicSeconds()
    }

    /// Arms the event sources. Called once after registration.
    func start() {
        queue.async { [self] in
            if let tls = core.tls {
                guard let s = tls.makeSession(fd: fd) else {
                    log("TLS: SSL_new failed for \(remoteAddress)")
                    Glibc.close(fd)
                    tornDown = true
                    core.remove(self)
                    return
                }
                ssl = s
            }
            let rs = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
            let ws = DispatchSource.makeWriteSource(fileDescriptor: fd, queue: queue)
            rs.setEventHandler { [unowned self] in handleReadable() }
            ws.setEventHandler { [unowned self] in handleWritable() }
            // The fd (and SSL) outlive both sources: close only after both cancel handlers ran.
            let cancel: @Sendable () -> Void = { [self] in sourceCancelled() }
            rs.setCancelHandler(handler: cancel)
            ws.setCancelHandler(handler: cancel)
            readSource = rs
            writeSource = ws
            pendingCancels = 2
            rs.resume()
        }
    }

    private func log(_ message: String) { config.log?(message) }

    // MARK: reading

    private func handleReadable() {
        if tornDown { return }
        if tlsWriteWantsRead { tlsWriteWantsRead = false; flush() }
        if tornDown { return }
        var sawEOF = false
        let chunk = 32 * 1024
        readLoop: for _ in 0..<16 {
            let result: HTTPIOResult = withUnsafeTemporaryAllocation(byteCount: chunk, alignment: 16) { buf in
                let r = transportRead(buf.baseAddress!, chunk)
                if case .done(let n) = r, phase != .linger {
                    inBuf.append(contentsOf: UnsafeRawBufferPointer(rebasing: buf[0..<n]))
                }
                return r
            }
            switch result {
            case .done:
                // A client pipelining while its request is served may not grow our buffer without bound.
                if phase == .waitingResponse || phase == .closeAfterFlush,
                   inBuf.count > config.maxHeaderBytes + 64 * 1024 {
                    suspendReading()
                    break readLoop
                }
            case .wouldBlock(let wantsWrite):
                if wantsWrite { tlsReadWantsWrite = true; enableWriteSource() }
                break readLoop
            case .eof:
                sawEOF = true
                break readLoop
            case .failed(let message):
                if ssl != nil { log("\(message) (\(remoteAddress))") }
                closeNow()
                return
            }
        }
        if phase == .head || phase == .body { process() }
        if sawEOF { closeNow() }
    }

    private func transportRead(_ ptr: UnsafeMutableRawPointer, _ count: Int) -> HTTPIOResult {
        if let ssl { return HTTPTLSContext.read(ssl, ptr, count) }
        while true {
            let n = Glibc.read(fd, ptr, count)
            if n > 0 { return .done(n) }
            if n == 0 { return .eof }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock(wantsWrite: false) }
            if e == ECONNRESET { return .eof }
            return .failed(String(cString: strerror(e)))
        }
    }

    private func suspendReading() {
        guard !readSuspended, let rs = readSource else { return }
        rs.suspend()
        readSuspended = true
    }

    private func resumeReading() {
        guard readSuspended, let rs = readSource else { return }
        rs.resume()
        readSuspended = false
        // TLS may hold decrypted bytes the fd will never signal again.
        queue.async { [self] in handleReadable() }
    }

    /// Advances the request state machine over `inBuf`.
    private func process() {
        while !tornDown {
            switch phase {
            case .head:
                var skip = 0
                while skip < inBuf.count && (inBuf[skip] == 13 || inBuf[skip] == 10) && skip < 64 { skip += 1 }
                if skip > 0 { inBuf.removeFirst(skip); scanOffset = 0 }
                if inBuf.isEmpty { return }
                if headStart == nil { headStart = httpMonotonicSeconds() }
                guard let end = HTTPParser.findHeadEnd(inBuf, from: scanOffset) else {
                    if let problem = lineScanner.check(inBuf) {
                        sendError(400, problem)
                    } else if inBuf.count > config.maxHeaderBytes {
                        sendError(431, "request header block exceeds \(config.maxHeaderBytes) bytes")
                    } else {
                        scanOffset = max(0, inBuf.count - 3)
                    }
                    return
                }
                if end > config.maxHeaderBytes {
                    sendError(431, "request header block exceeds \(config.maxHeaderBytes) bytes")
                    return
                }
                let parsed: HTTPParsedHead
                do {
                    parsed = try HTTPParser.parseHead(inBuf[0..<end], maxBodyBytes: config.maxBodyBytes)
                } catch {
                    sendError(error.status, error.message)
                    return
                }
                inBuf.removeFirst(end)
                scanOffset = 0
                lineScanner = HTTPRequestLineScanner()
                head = parsed
                body = []
                switch parsed.framing {
                case .none:
                    dispatchRequest()
                    continue
                case .length(let n):
                    bodyRemaining = n
                    chunked = nil
                    body.reserveCapacity(n)
                    if parsed.expectContinue && inBuf.count < n { sendContinue() }
                case .chunked:
                    chunked = HTTPChunkedDecoder(maxBodyBytes: config.maxBodyBytes)
                    if parsed.expectContinue && inBuf.isEmpty { sendContinue() }
                }
                phase = .body
                bodyStart = httpMonotonicSeconds()
            case .body:
                if var decoder = chunked {
                    let used: Int
                    do { used = try decoder.consume(inBuf, from: 0) } catch {
                        sendError(error.status, error.message)
                        return
                    }
                    inBuf.removeFirst(used)
                    if decoder.isDone {
                        body = decoder.body
                        chunked = nil
                        dispatchRequest()
                        continue
                    }
                    chunked = decoder
                    return
                }
                let take = min(bodyRemaining, inBuf.count)
                if take > 0 {
                    body.append(contentsOf: inBuf[0..<take])
                    inBuf.removeFirst(take)
                    bodyRemaining -= take
                }
                if bodyRemaining > 0 { return }
                dispatchRequest()
            case .waitingResponse, .closeAfterFlush, .linger:
                return
            }
        }
    }

    private func sendContinue() {
        enqueueRaw(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
    }

    private func enqueueRaw(_ bytes: [UInt8]) {
        lock.lock()
        if out.count == outOffset { lastWriteProgress = httpMonotonicSeconds() }
        out.append(contentsOf: bytes)
        let schedule = !flushScheduled
        flushScheduled = true
        lock.unlock()
        if schedule { queue.async { [self] in flush() } }
    }

    private func dispatchRequest() {
        guard let h = head else { return }
        head = nil
        headStart = nil
        var requestBody = Data(body)
        var headers = h.headers
        body = []
        if let coding = h.contentEncoding, !requestBody.isEmpty {
            do {
                requestBody = try HTTPGzip.decompress(requestBody, limit: config.maxBodyBytes)
            } catch {
                sendError(error.status, "\(coding) request body: \(error.message)")
                return
            }
            // The handler sees the decoded body, so the header that described the encoded one goes.
            headers.removeAll { $0.name.lowercased() == "content-encoding" || $0.name.lowercased() == "content-length" }
        }
        phase = .waitingResponse
        let request = HTTPRequest(method: h.method, path: h.path, query: h.query, version: h.version,
                                  headers: headers, body: requestBody, remoteAddress: remoteAddress)
        lock.lock()
        seq += 1
        let mySeq = seq
        responseState = .none
        closeHandlers = []
        lock.unlock()
        let writer = HTTPResponseWriter(connection: self, seq: mySeq, request: h)
        if let origin = config.corsAllowOrigin, h.method == "OPTIONS",
           request.header("Access-Control-Request-Method") != nil {
            let allowHeaders = request.header("Access-Control-Request-Headers") ?? "Authorization, Content-Type"
            writer.respond(status: 204, headers: [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
                ("Access-Control-Allow-Headers", allowHeaders),
                ("Access-Control-Max-Age", "86400"),
            ], body: Data())
            return
        }
        core.handler(request, writer)
    }

    /// An error response produced by the server itself; the connection closes after it.
    private func sendError(_ status: Int, _ message: String) {
        lock.lock()
        closeAfterResponse = true
        seq += 1
        let mySeq = seq
        responseState = .none
        lock.unlock()
        phase = .waitingResponse
        headStart = nil
        let pseudo = HTTPParsedHead(method: "GET", path: "/", query: nil, version: "HTTP/1.1", headers: [],
                                framing: .none, keepAlive: false, expectContinue: false, acceptsGzip: false)
        let writer = HTTPResponseWriter(connection: self, seq: mySeq, request: pseudo)
        let type = status >= 500 ? "server_error" : "invalid_request_error"
        writer.respond(status: status, headers: [("Content-Type", "application/json")],
                       body: httpErrorJSON(message: message, type: type))
    }

    // MARK: writer interface (any thread)

    enum AppendResult { case ok, closed, overflow }

    /// Appends response bytes for request `forSeq` if its response is in one of `allowedFrom` states, moving it
    /// to `newState`. The bound is checked only against bytes already waiting, so one large response always fits.
    func append(_ bytes: [UInt8], forSeq: Int, newState: ResponseState, allowedFrom: Set<ResponseState>) -> AppendResult {
        lock.lock()
        guard !closed, seq == forSeq, allowedFrom.contains(responseState) else {
            lock.unlock()
            return .closed
        }
        let pending = out.count - outOffset
        if pending > 0 && pending + bytes.count > config.maxPendingBytes {
            // Slow reader: drop the connection instead of buffering without bound.
            closed = true
            lock.unlock()
            log("closing connection \(remoteAddress): client is not reading (\(pending) bytes pending)")
            queue.async { [self] in closeNow() }
            return .overflow
        }
        if pending == 0 { lastWriteProgress = httpMonotonicSeconds() }
        out.append(contentsOf: bytes)
        responseState = newState
        let schedule = !flushScheduled
        flushScheduled = true
        lock.unlock()
        if schedule { queue.async { [self] in flush() } }
        return .ok
    }

    func wantsClose() -> Bool {
        lock.lock(); defer { lock.unlock() }
        return closeAfterResponse || core.isDraining
    }

    func markCloseAfterResponse() {
        lock.lock(); closeAfterResponse = true; lock.unlock()
    }

    var isClosed: Bool {
        lock.lock(); defer { lock.unlock() }
        return closed
    }

    func pendingBytes() -> Int {
        lock.lock(); defer { lock.unlock() }
        return out.count - outOffset
    }

    func addCloseHandler(seq forSeq: Int, _ handler: @escaping @Sendable () -> Void) {
        lock.lock()
        if closed {
            let fire = seq == forSeq && responseState != .complete
            lock.unlock()
            if fire { handler() }
            return
        }
        if seq == forSeq && responseState != .complete { closeHandlers.append(handler) }
        lock.unlock()
    }

    // MARK: writing (queue)

    private func handleWritable() {
        if tornDown { return }
        if tlsReadWantsWrite {
            tlsReadWantsWrite = false
            handleReadable()
            if tornDown { return }
        }
        flush()
    }

    private func flush() {
        if tornDown { return }
        lock.lock()
        flushScheduled = false
        var blocked = false
        var failure: String?
        while outOffset < out.count {
            let count = min(out.count - outOffset, 256 * 1024)
            let result: HTTPIOResult = out.withUnsafeBytes { raw in
                transportWrite(raw.baseAddress! + outOffset, count)
            }
            switch result {
            case .done(let n):
                outOffset += n
                lastWriteProgress = httpMonotonicSeconds()
            case .wouldBlock(let wantsWrite):
                blocked = true
                if !wantsWrite { tlsWriteWantsRead = true }
            case .eof:
                failure = ""
            case .failed(let message):
                failure = message
            }
            if blocked || failure != nil { break }
        }
        if outOffset == out.count {
            if out.count > 64 * 1024 { out = [] } else { out.removeAll(keepingCapacity: true) }
            outOffset = 0
        } else if outOffset > 256 * 1024 && outOffset * 2 > out.count {
            out.removeFirst(outOffset)
            outOffset = 0
        }
        let drained = out.isEmpty
        let complete = responseState == .complete
        let closeAfter = closeAfterResponse || core.isDraining
        lock.unlock()

        if let failure {
            if ssl != nil && !failure.isEmpty { log("\(failure) (\(remoteAddress))") }
            closeNow()
            return
        }
        if blocked, !tlsWriteWantsRead { enableWriteSource() } else if !blocked { disableWriteSource() }
        if complete && phase == .waitingResponse {
            if closeAfter {
                phase = .closeAfterFlush
            } else {
                requestFinished()
                return
            }
        }
        if drained && phase == .closeAfterFlush { startLinger() }
    }

    private func transportWrite(_ ptr: UnsafeRawPointer, _ count: Int) -> HTTPIOResult {
        if let ssl { return HTTPTLSContext.write(ssl, ptr, min(count, 64 * 1024)) }
        while true {
            let n = Glibc.send(fd, ptr, count, Int32(MSG_NOSIGNAL))
            if n >= 0 { return .done(n) }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock(wantsWrite: true) }
            if e == EPIPE || e == ECONNRESET { return .eof }
            return .failed(String(cString: strerror(e)))
        }
    }

    private func enableWriteSource() {
        guard !writeSourceActive, let ws = writeSource else { return }
        ws.resume()
        writeSourceActive = true
    }

    private func disableWriteSource() {
        guard writeSourceActive, let ws = writeSource else { return }
        ws.suspend()
        writeSourceActive = false
    }

    /// The current response is completely queued: move on to the next (possibly pipelined) request.
    private func requestFinished() {
        phase = .head
        idleSince = httpMonotonicSeconds()
        headStart = nil
        scanOffset = 0
        resumeReading()
        if !inBuf.isEmpty { process() }
    }

    private func startLinger() {
        phase = .linger
        lingerStart = httpMonotonicSeconds()
        inBuf = []
        if let ssl { HTTPTLSContext.shutdown(ssl) }
        Glibc.shutdown(fd, Int32(SHUT_WR))
        // While draining for shutdown nobody waits on the peer's EOF.
        if core.isDraining { closeNow(); return }
        resumeReading()
    }

    // MARK: timeouts and teardown

    /// Called periodically on `queue` by the server's sweeper.
    func checkTimeouts(now: Double) {
        if tornDown { return }
        switch phase {
        case .head:
            if let started = headStart {
                if now - started > config.headerTimeout {
                    log("header timeout for \(remoteAddress)")
                    sendError(408, "timed out reading the request headers")
                    return
                }
            } else if now - idleSince > config.idleTimeout {
                closeNow()
                return
            }
        case .body:
            if now - bodyStart > config.bodyTimeout {
                log("body timeout for \(remoteAddress)")
                sendError(408, "timed out reading the request body")
                return
            }
        case .linger:
            if now - lingerStart > 2 { closeNow(); return }
        case .waitingResponse, .closeAfterFlush:
            break
        }
        lock.lock()
        let stalled = out.count > outOffset && now - lastWriteProgress > config.writeTimeout
        lock.unlock()
        if stalled {
            log("write timeout for \(remoteAddress)")
            closeNow()
        }
    }

    /// Closes at the next opportunity on the connection's queue (used by shutdown).
    func closeIfIdle() {
        queue.async { [self] in
            if tornDown { return }
            if phase == .head && headStart == nil && inBuf.isEmpty {
                closeNow()
            } else {
                markCloseAfterResponse()
                if phase == .linger { closeNow(); return }
                // A response that already completed while waiting for the drain flag: re-run the flush logic.
                flush()
            }
        }
    }

    func forceClose() {
        queue.async { [self] in closeNow() }
    }

    /// Tears the connection down; fires close handlers of an unfinished response.
    func closeNow() {
        if tornDown { return }
        tornDown = true
        lock.lock()
        closed = true
        let fire = responseState != .complete ? closeHandlers : []
        closeHandlers = []
        out = []
        outOffset = 0
        lock.unlock()
        if let rs = readSource {
            if readSuspended { rs.resume(); readSuspended = false }
            rs.cancel()
        }
        if let ws = writeSource {
            if !writeSourceActive { ws.resume(); writeSourceActive = true }
            ws.cancel()
        }
        if readSource == nil && writeSource == nil { finalClose() }
        core.remove(self)
        for h in fire { h() }
    }

    private func sourceCancelled() {
        pendingCancels -= 1
        if pendingCancels == 0 { finalClose() }
    }

    private func finalClose() {
        if let ssl {
            SSL_free(ssl)
            self.ssl = nil
        }
        Glibc.close(fd)
        readSource = nil
        writeSource = nil
    }
}
