// The listening side: bind/listen, accept loop on a Dispatch read source, the connection registry and limit,
// a periodic timeout sweep, and graceful shutdown. Connections do their own I/O on their own serial queues.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// State shared by the server and its connections.
final class HTTPServerCore: @unchecked Sendable {
    let config: HTTPServerConfiguration
    let handler: @Sendable (HTTPRequest, HTTPResponseWriter) -> Void
    let tls: HTTPTLSContext?
    /// Connection queues target this one so a burst of connections cannot spawn unbounded Dispatch threads
    /// beyond what the global pool allows.
    let ioQueue = DispatchQueue(label: "tern.http.io", attributes: .concurrent)

    private let lock = NSLock()
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]
    private var draining = false

    init(config: HTTPServerConfiguration, handler: @escaping @Sendable (HTTPRequest, HTTPResponseWriter) -> Void,
         tls: HTTPTLSContext?) {
        self.config = config
        self.handler = handler
        self.tls = tls
    }

    var isDraining: Bool {
        lock.lock(); defer { lock.unlock() }
        return draining
    }

    func setDraining() {
        lock.lock(); draining = true; lock.unlock()
    }

    var count: Int {
        lock.lock(); defer { lock.unlock() }
        return connections.count
    }

    /// Registers unless the limit is reached.
    func add(_ c: HTTPConnection) -> Bool {
        lock.lock(); defer { lock.unlock() }
        if connections.count >= config.maxConnections { return false }
        connections[ObjectIdentifier(c)] = c
        return true
    }

    func remove(_ c: HTTPConnection) {
        lock.lock()
        connections.removeValue(forKey: ObjectIdentifier(c))
        lock.unlock()
    }

    func snapshot() -> [HTTPConnection] {
        lock.lock(); defer { lock.unlock() }
        return Array(connections.values)
    }
}

public final class HTTPServer: @unchecked Sendable {
    private let core: HTTPServerCore
    private let acceptQueue = DispatchQueue(label: "tern.http.accept")
    private let lock = NSLock()
    private var listenFD: Int32 = -1
    private var acceptSource: DispatchSourceRead?
    private var acceptSuspended = false
    private var sweepTimer: DispatchSourceTimer?
    private var boundPort = 0
    private var started = false
    private var stopped = false

    /// `handler` runs once per request on the connection's Dispatch queue. It must not block for long; it
    /// answers through the writer, now or later, from any thread.
    public init(configuration: HTTPServerConfiguration,
                handler: @escaping @Sendable (HTTPRequest, HTTPResponseWriter) -> Void) throws {
        var tls: HTTPTLSContext?
        switch (configuration.tlsCertificatePath, configuration.tlsKeyPath) {
        case let (cert?, key?):
            tls = try HTTPTLSContext(certificatePath: cert, keyPath: key)
        case (nil, nil):
            tls = nil
        default:
            throw HTTPServerError.tls("both a certificate and a key are needed for TLS")
        }
        core = HTTPServerCore(config: configuration, handler: handler, tls: tls)
    }

    deinit {
        // Dropped without shutdown: stop listening; live connections end through their own timeouts.
        if !stopped {
            if acceptSuspended { acceptSource?.resume() }
            acceptSource?.cancel()
            sweepTimer?.cancel()
        }
    }

    public var port: Int {
        lock.lock(); defer { lock.unlock() }
        return boundPort
    }

    public var activeConnections: Int { core.count }

    public var isTLS: Bool { core.tls != nil }

    private func log(_ message: String) { core.config.log?(message) }

    /// Binds and listens, then accepts in the background.
    public func start() throws {
        lock.lock()
        defer { lock.unlock() }
        if started { throw HTTPServerError.alreadyStarted }
        // A peer closing mid-write must surface as EPIPE, not kill the process.
        signal(SIGPIPE, SIG_IGN)
        let config = core.config

        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let host = config.host.isEmpty ? nil : config.host
        let rc = getaddrinfo(host, String(config.port), &hints, &result)
        guard rc == 0, let info = result else {
            throw HTTPServerError.badHost(config.host, reason: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(result) }
        guard config.port >= 0 && config.port <= 65535 else {
            throw HTTPServerError.socket("port \(config.port) is out of range")
        }

        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HTTPServerError.socket("socket(): \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) != 0 {
            let e = errno
            Glibc.close(fd)
            if e == EADDRINUSE { throw HTTPServerError.addressInUse(host: config.host, port: config.port) }
            if e == EADDRNOTAVAIL {
                throw HTTPServerError.badHost(config.host, reason: "address not available on this machine")
            }
            throw HTTPServerError.socket("bind(\(config.host):\(config.port)): \(String(cString: strerror(e)))")
        }
        guard listen(fd, 1024) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw HTTPServerError.socket("listen(): \(String(cString: strerror(e)))")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        boundPort = Self.localPort(fd) ?? config.port
        listenFD = fd

        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: acceptQueue)
        source.setEventHandler { [weak self] in self?.acceptPending() }
        source.setCancelHandler { Glibc.close(fd) }
        acceptSource = source
        source.resume()

        let minTimeout = [config.headerTimeout, config.bodyTimeout, config.idleTimeout, config.writeTimeout].min()!
        let interval = min(1.0, max(0.02, minTimeout / 4))
        let timer = DispatchSource.makeTimerSource(queue: acceptQueue)
        timer.schedule(deadline: .now() + interval, repeating: interval, leeway: .milliseconds(Int(interval * 250)))
        timer.setEventHandler { [core] in
            let now = httpMonotonicSeconds()
            for c in core.snapshot() { c.queue.async { c.checkTimeouts(now: now) } }
        }
        sweepTimer = timer
        timer.resume()
        started = true
    }

    private static func localPort(_ fd: Int32) -> Int? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { return nil }
        return addressString(&storage).port
    }

    private static func addressString(_ storage: inout sockaddr_storage) -> (host: String, port: Int) {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    var addr = sin.pointee.sin_addr
                    inet_ntop(AF_INET, &addr, &buf, socklen_t(buf.count))
                    return (httpCString(buf), Int(UInt16(bigEndian: sin.pointee.sin_port)))
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                    var addr = sin6.pointee.sin6_addr
                    inet_ntop(AF_INET6, &addr, &buf, socklen_t(buf.count))
                    return ("[" + httpCString(buf) + "]", Int(UInt16(bigEndian: sin6.pointee.sin6_port)))
                }
            }
        default:
            return ("unknown", 0)
        }
    }

    /// Runs on `acceptQueue`; takes every pending connection.
    private func acceptPending() {
        let listenFD = lock.withLock { self.listenFD }
        while true {
            var storage = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    accept(listenFD, $0, &len)
                }
            }
            if fd >= 0 {
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
            if fd < 0 {
                let e = errno
                if e == EINTR || e == ECONNABORTED { continue }
                if e == EAGAIN || e == EWOULDBLOCK { return }
                log("accept failed: \(String(cString: strerror(e)))")
                if e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM {
                    // The listen socket stays readable; back off instead of spinning.
                    pauseAccepting(seconds: 0.1)
                }
                return
            }
            if core.isDraining {
                Glibc.close(fd)
                continue
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let peer = Self.addressString(&storage)
            let connection = HTTPConnection(fd: fd, remoteAddress: "\(peer.host):\(peer.port)", core: core)
            if !core.add(connection) {
                reject(fd)
                continue
            }
            connection.start()
        }
    }

    /// Over the connection limit: a best-effort 503 and close, without any per-connection state.
    private func reject(_ fd: Int32) {
        log("rejecting connection: limit of \(core.config.maxConnections) reached")
        if core.tls == nil {
            let body = httpErrorJSON(message: "server is at its connection limit, retry later", type: "server_error")
            let text = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n"
                + "Retry-After: 1\r\nConnection: close\r\n\r\n"
            let bytes = Array(text.utf8) + Array(body)
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            Glibc.shutdown(fd, Int32(SHUT_WR))
        }
        Glibc.close(fd)
    }

    private func pauseAccepting(seconds: Double) {
        guard let source = lock.withLock({ acceptSource }), !acceptSuspended else { return }
        source.suspend()
        acceptSuspended = true
        acceptQueue.asyncAfter(deadline: .now() + seconds) { [weak self] in
            guard let self, self.acceptSuspended, let source = self.lock.withLock({ self.acceptSource }) else { return }
            self.acceptSuspended = false
            source.resume()
        }
    }

    /// Stops accepting, closes idle connections, lets in-flight responses finish for up to `timeout` seconds,
    /// then closes whatever is left. Blocks the caller until done.
    ///
    /// `onTimeout` runs when responses are still going after `timeout`: it may end them cleanly (an API layer
    /// writes a final error event and ends each stream), and gets up to `grace` more seconds for those bytes
    /// to reach the clients before the connections are closed.
    public func shutdown(timeout: Double, onTimeout: (() -> Void)? = nil, grace: Double = 2) {
        lock.lock()
        if stopped || !started { stopped = true; lock.unlock(); return }
        stopped = true
        let source = acceptSource
        let timer = sweepTimer
        lock.unlock()
        core.setDraining()
        acceptQueue.sync {
            if acceptSuspended { source?.resume(); acceptSuspended = false }
            source?.cancel()
        }
        for c in core.snapshot() { c.closeIfIdle() }
        let deadline = httpMonotonicSeconds() + timeout
        while core.count > 0 && httpMonotonicSeconds() < deadline { usleep(5_000) }
        if core.count > 0, let onTimeout {
            log("shutdown: ending \(core.count) connection(s) still busy after \(timeout) s")
            onTimeout()
            let graceDeadline = httpMonotonicSeconds() + grace
            while core.count > 0 && httpMonotonicSeconds() < graceDeadline { usleep(5_000) }
        }
        let left = core.snapshot()
        if !left.isEmpty { log("shutdown: closing \(left.count) connection(s) still busy after \(timeout) s") }
        for c in left { c.forceClose() }
        let hardDeadline = httpMonotonicSeconds() + 1
        while core.count > 0 && httpMonotonicSeconds() < hardDeadline { usleep(2_000) }
        timer?.cancel()
    }
}

func httpCString(_ buf: [CChar]) -> String {
    buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}
