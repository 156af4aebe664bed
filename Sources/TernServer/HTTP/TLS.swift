// TLS for the HTTP server over OpenSSL 3: one shared SSL_CTX built from PEM files, and the per-connection
// non-blocking read/write calls that map OpenSSL's WANT_READ/WANT_WRITE onto the connection's event sources.

import COpenSSL
import Foundation

/// Outcome of one non-blocking transport read or write.
enum HTTPIOResult {
    case done(Int)
    /// Retry when the socket is readable (`wantsWrite` false) or writable (`wantsWrite` true).
    case wouldBlock(wantsWrite: Bool)
    case eof
    case failed(String)
}

/// The server's SSL_CTX. OpenSSL 3 contexts are safe to share between threads once configured.
final class HTTPTLSContext: @unchecked Sendable {
    let ctx: OpaquePointer

    init(certificatePath: String, keyPath: String) throws {
        guard let ctx = SSL_CTX_new(TLS_server_method()) else {
            throw HTTPServerError.tls("SSL_CTX_new failed: \(HTTPTLSContext.errorString())")
        }
        self.ctx = ctx
        _ = SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, Int(TLS1_2_VERSION), nil)
        // Partial writes let the output buffer drain record by record; moving buffers because our buffer
        // may be reallocated between a WANT_WRITE and the retry.
        let mode = Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS)
        _ = SSL_CTX_ctrl(ctx, SSL_CTRL_MODE, mode, nil)
        guard FileManager.default.isReadableFile(atPath: certificatePath) else {
            throw HTTPServerError.tls("cannot read certificate file '\(certificatePath)'")
        }
        guard FileManager.default.isReadableFile(atPath: keyPath) else {
            throw HTTPServerError.tls("cannot read key file '\(keyPath)'")
        }
        ERR_clear_error()
        guard SSL_CTX_use_certificate_chain_file(ctx, certificatePath) == 1 else {
            throw HTTPServerError.tls("bad certificate file '\(certificatePath)': \(HTTPTLSContext.errorString())")
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, keyPath, SSL_FILETYPE_PEM) == 1 else {
            throw HTTPServerError.tls("bad key file '\(keyPath)': \(HTTPTLSContext.errorString())")
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw HTTPServerError.tls("key does not match certificate: \(HTTPTLSContext.errorString())")
        }
    }

    deinit { SSL_CTX_free(ctx) }

    /// A server-side SSL object on `fd`; the handshake happens inside the first reads/writes.
    func makeSession(fd: Int32) -> OpaquePointer? {
        guard let ssl = SSL_new(ctx) else { return nil }
        SSL_set_fd(ssl, fd)
        SSL_set_accept_state(ssl)
        return ssl
    }

    static func errorString() -> String {
        var parts: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buf = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buf, buf.count)
            parts.append(httpCString(buf))
        }
        return parts.isEmpty ? "unknown error" : parts.joined(separator: "; ")
    }

    static func read(_ ssl: OpaquePointer, _ ptr: UnsafeMutableRawPointer, _ count: Int) -> HTTPIOResult {
        ERR_clear_error()
        let r = SSL_read(ssl, ptr, Int32(clamping: count))
        if r > 0 { return .done(Int(r)) }
        return classify(ssl, r)
    }

    static func write(_ ssl: OpaquePointer, _ ptr: UnsafeRawPointer, _ count: Int) -> HTTPIOResult {
        ERR_clear_error()
        let r = SSL_write(ssl, ptr, Int32(clamping: count))
        if r > 0 { return .done(Int(r)) }
        return classify(ssl, r)
    }

    private static func classify(_ ssl: OpaquePointer, _ r: Int32) -> HTTPIOResult {
        let savedErrno = errno
        switch SSL_get_error(ssl, r) {
        case SSL_ERROR_WANT_READ: return .wouldBlock(wantsWrite: false)
        case SSL_ERROR_WANT_WRITE: return .wouldBlock(wantsWrite: true)
        case SSL_ERROR_ZERO_RETURN: return .eof
        case SSL_ERROR_SYSCALL:
            let detail = errorString()
            if savedErrno == 0 || savedErrno == ECONNRESET || savedErrno == EPIPE {
                return detail == "unknown error" ? .eof : .failed("TLS: \(detail)")
            }
            return .failed("TLS I/O: \(String(cString: strerror(savedErrno)))")
        default:
            return .failed("TLS: \(errorString())")
        }
    }

    /// Best-effort close_notify; never waits for the peer's.
    static func shutdown(_ ssl: OpaquePointer) {
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }
}
