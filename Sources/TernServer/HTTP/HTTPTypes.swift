// Public value types of the HTTP layer (request, configuration, errors) and small shared helpers:
// reason phrases, the OpenAI-style JSON error body, the Date header and a monotonic clock.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One parsed HTTP request with its complete body.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The request target without the query string (not percent-decoded).
    public var path: String
    public var query: String?
    /// "HTTP/1.1" or "HTTP/1.0".
    public var version: String
    public var headers: [(name: String, value: String)]
    public var body: Data
    /// "ip:port" of the peer.
    public var remoteAddress: String

    public init(method: String, path: String, query: String? = nil, version: String = "HTTP/1.1",
                headers: [(name: String, value: String)] = [], body: Data = Data(), remoteAddress: String = "") {
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.remoteAddress = remoteAddress
    }

    /// Case-insensitive lookup; the first header with that name wins.
    public func header(_ name: String) -> String? {
        for h in headers where h.name.caseInsensitiveCompare(name) == .orderedSame { return h.value }
        return nil
    }
}

public struct HTTPServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    /// 0 picks a free port; read it back from `HTTPServer.port`.
    public var port = 8080
    public var maxHeaderBytes = 32 * 1024
    public var maxBodyBytes = 16 * 1024 * 1024
    /// Seconds from a request's first byte until its header block is complete.
    public var headerTimeout: Double = 10
    /// Seconds from the end of the header block until the whole body has arrived.
    public var bodyTimeout: Double = 30
    /// A connection waiting for its (next) request is closed after this many seconds.
    public var idleTimeout: Double = 60
    /// Output pending with no byte accepted by the socket for this long closes the connection.
    public var writeTimeout: Double = 60
    public var maxConnections = 4096
    /// Per-connection bound on buffered, not yet sent response bytes (slow readers are disconnected).
    public var maxPendingBytes = 4 * 1024 * 1024
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?
    /// When set (e.g. "*"), every response carries Access-Control-Allow-Origin and OPTIONS preflights are
    /// answered with 204 by the server itself.
    public var corsAllowOrigin: String?
    /// Diagnostics: accept errors, TLS failures, timeouts.
    public var log: (@Sendable (String) -> Void)?

    public init() {}
}

public enum HTTPServerError: Error, CustomStringConvertible, Sendable {
    case addressInUse(host: String, port: Int)
    case badHost(String, reason: String)
    case socket(String)
    case tls(String)
    case alreadyStarted

    public var description: String {
        switch self {
        case .addressInUse(let host, let port): return "address \(host):\(port) is already in use"
        case .badHost(let host, let reason): return "cannot listen on host '\(host)': \(reason)"
        case .socket(let message): return "socket error: \(message)"
        case .tls(let message): return "TLS setup failed: \(message)"
        case .alreadyStarted: return "server already started"
        }
    }
}

enum HTTPStatus {
    static func reason(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 204: return "No Content"
        case 206: return "Partial Content"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 304: return "Not Modified"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 415: return "Unsupported Media Type"
        case 417: return "Expectation Failed"
        case 422: return "Unprocessable Content"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return status < 300 ? "OK" : (status < 500 ? "Client Error" : "Server Error")
        }
    }
}

/// OpenAI-style error JSON: {"error":{"message":…,"type":…,"param":null,"code":null}}.
public func httpErrorJSON(message: String, type: String = "invalid_request_error", param: String? = nil,
                          code: String? = nil) -> Data {
    func quoted(_ s: String?) -> String { s.map { "\"\(httpJSONEscape($0))\"" } ?? "null" }
    let text = "{\"error\":{\"message\":\(quoted(message)),\"type\":\(quoted(type)),\"param\":\(quoted(param)),\"code\":\(quoted(code))}}"
    return Data(text.utf8)
}

/// A string's JSON escaping, without the surrounding quotes (the API's encoder does the escaping).
func httpJSONEscape(_ s: String) -> String {
    var out = ""
    JSONValue.writeString(s, to: &out)
    return String(out.dropFirst().dropLast())
}

/// Seconds on a clock that wall-clock adjustments cannot move; all timeouts use it.
@inline(__always) func httpMonotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// IMF-fixdate for the Date header, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
func httpDate() -> String {
    var t = time(nil)
    var tmv = tm()
    gmtime_r(&t, &tmv)
    let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(days[Int(tmv.tm_wday)]), \(two(tmv.tm_mday)) \(months[Int(tmv.tm_mon)]) \(tmv.tm_year + 1900) "
        + "\(two(tmv.tm_hour)):\(two(tmv.tm_min)):\(two(tmv.tm_sec)) GMT"
}
