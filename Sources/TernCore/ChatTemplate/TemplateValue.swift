// Public value types handed to chat templates (messages, tools, extra variables) and the error type
// every template failure is reported with.

import Foundation

/// A chat message as templates see it: a mapping with `role` and `content`.
public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A JSON-like value passed into a template. Dictionaries keep their key order because templates
/// iterate over them and `tojson` prints them in insertion order, as Python dicts do.
public enum TemplateValue: Sendable, Equatable {
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([TemplateValue])
    case dictionary([(key: String, value: TemplateValue)])

    public static func == (a: TemplateValue, b: TemplateValue) -> Bool {
        switch (a, b) {
        case (.none, .none): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.double(x), .double(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.dictionary(x), .dictionary(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: return false
        }
    }

    /// Looks a key up in a dictionary value; nil for other cases or a missing key.
    public subscript(key: String) -> TemplateValue? {
        if case let .dictionary(pairs) = self { return pairs.first(where: { $0.key == key })?.value }
        return nil
    }
}

extension TemplateValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    public init(nilLiteral: ()) { self = .none }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: TemplateValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, TemplateValue)...) {
        self = .dictionary(elements.map { (key: $0.0, value: $0.1) })
    }
}

extension ChatMessage {
    /// The mapping a template receives for this message.
    public var templateValue: TemplateValue {
        .dictionary([(key: "role", value: .string(role)), (key: "content", value: .string(content))])
    }
}

/// Any failure while parsing or rendering a template. `raise_exception("msg")` in a template yields
/// kind `.raised` whose description is exactly "msg", so callers can show it to API clients as is.
public struct ChatTemplateError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable { case syntax, runtime, raised }
    public let kind: Kind
    public let message: String
    public let line: Int?
    public let column: Int?

    public init(_ kind: Kind, _ message: String, line: Int? = nil, column: Int? = nil) {
        self.kind = kind
        self.message = message
        self.line = line
        self.column = column
    }

    public var description: String {
        if kind == .raised { return message }
        var s = kind == .syntax ? "chat template syntax error" : "chat template error"
        if let line {
            s += " at line \(line)"
            if let column { s += ", column \(column)" }
        }
        return s + ": " + message
    }
}
