// An error the API answers with: an HTTP status and OpenAI's error body, naming the offending parameter.

import Foundation

public struct APIError: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?
    public var headers: [(String, String)] = []

    public init(_ status: Int, _ message: String, param: String? = nil, type: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type ?? (status >= 500 ? "server_error" : "invalid_request_error")
    }

    public static func invalid(_ param: String, _ message: String) -> APIError {
        APIError(400, message, param: param)
    }

    public var description: String { message }

    public var body: JSONValue {
        ["error": .object([("message", .string(message)), ("type", .string(type)),
                           ("param", param.map { .string($0) } ?? .null), ("code", code.map { .string($0) } ?? .null)])]
    }
}
