// Runtime values of the template interpreter and the Python semantics they follow: truthiness, str()/repr()
// rendering, equality, ordering, arithmetic and JSON output (as json.dumps with ensure_ascii=False).

import Foundation

/// Insertion-ordered string-keyed mapping, standing in for a Python dict.
struct JinjaDict {
    private(set) var keys: [String] = []
    private var storage: [String: JinjaValue] = [:]

    subscript(key: String) -> JinjaValue? {
        get { storage[key] }
        set {
            if let v = newValue {
                if storage.updateValue(v, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    var count: Int { keys.count }
    var pairs: [(String, JinjaValue)] { keys.map { ($0, storage[$0]!) } }
    var values: [JinjaValue] { keys.map { storage[$0]! } }
}

/// `namespace()` objects: the one mutable value, shared by reference so loop bodies can update it.
final class JinjaNamespace {
    var attributes = JinjaDict()
}

final class JinjaCallable {
    let name: String
    let body: (JinjaInterpreter, [JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue
    init(_ name: String, _ body: @escaping (JinjaInterpreter, [JinjaValue], [(String, JinjaValue)]) throws -> JinjaValue) {
        self.name = name
        self.body = body
    }
}

enum JinjaValue {
    case undefined(String)  // the name that was looked up, for error messages
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JinjaValue])
    case tuple([JinjaValue])
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case callable(JinjaCallable)

    init(_ v: TemplateValue) {
        switch v {
        case .none: self = .none
        case let .bool(b): self = .bool(b)
        case let .int(i): self = .int(i)
        case let .double(d): self = .double(d)
        case let .string(s): self = .string(s)
        case let .array(a): self = .array(a.map(JinjaValue.init))
        case let .dictionary(pairs):
            var d = JinjaDict()
            for (k, v) in pairs { d[k] = JinjaValue(v) }
            self = .dict(d)
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case let .bool(b): return b
        case let .int(i): return i != 0
        case let .double(d): return d != 0
        case let .string(s): return !s.isEmpty
        case let .array(a), let .tuple(a): return !a.isEmpty
        case let .dict(d): return d.count > 0
        case .namespace, .callable: return true
        }
    }

    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .array: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .callable: return "function"
        }
    }

    /// Numeric view following Python, where bool is an int.
    var asInt: Int? {
        switch self {
        case let .int(i): return i
        case let .bool(b): return b ? 1 : 0
        default: return nil
        }
    }

    var asDouble: Double? {
        switch self {
        case let .double(d): return d
        default: return asInt.map(Double.init)
        }
    }

    var isNumber: Bool {
        switch self {
        case .int, .double, .bool: return true
        default: return false
        }
    }

    /// Python str().
    var str: String {
        switch self {
        case .undefined: return ""
        case let .string(s): return s
        default: return repr
        }
    }

    /// Python repr(), used for containers rendered with str().
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case let .bool(b): return b ? "True" : "False"
        case let .int(i): return String(i)
        case let .double(d): return JinjaValue.pythonFloat(d)
        case let .string(s): return JinjaValue.pythonRepr(s)
        case let .array(a): return "[" + a.map(\.repr).joined(separator: ", ") + "]"
        case let .tuple(a): return "(" + a.map(\.repr).joined(separator: ", ") + (a.count == 1 ? ",)" : ")")
        case let .dict(d): return "{" + d.pairs.map { JinjaValue.pythonRepr($0.0) + ": " + $0.1.repr }.joined(separator: ", ") + "}"
        case let .namespace(n):
            return "<Namespace {" + n.attributes.pairs.map { JinjaValue.pythonRepr($0.0) + ": " + $0.1.repr }.joined(separator: ", ") + "}>"
        case let .callable(c): return "<function \(c.name)>"
        }
    }

    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        // Swift's shortest round-trip form matches Python's repr except for the exponent's zero padding.
        var s = "\(d)"
        if let e = s.firstIndex(of: "e") {
            var mantissa = String(s[..<e])
            if mantissa.hasSuffix(".0") { mantissa.removeLast(2) }
            var exp = String(s[s.index(after: e)...])
            var sign = "+"
            if exp.hasPrefix("-") { sign = "-"; exp.removeFirst() } else if exp.hasPrefix("+") { exp.removeFirst() }
            if exp.count < 2 { exp = "0" + exp }
            s = mantissa + "e" + sign + exp
        }
        return s
    }

    static func pythonRepr(_ s: String) -> String {
        let quote: Character = (s.contains("'") && !s.contains("\"")) ? "\"" : "'"
        var out = String(quote)
        for u in s.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(u) == quote {
                    out += "\\" + String(quote)
                } else if u.value < 0x20 || u.value == 0x7F {
                    out += String(format: "\\x%02x", u.value)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out.append(quote)
        return out
    }
}

// MARK: - JSON

extension JinjaValue {
    func json(indent: Int?, ascii: Bool = false, level: Int = 0, into out: inout String) throws {
        switch self {
        case .none: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .int(i): out += String(i)
        case let .double(d):
            if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else { out += JinjaValue.pythonFloat(d) }
        case let .string(s): JinjaValue.jsonString(s, ascii: ascii, into: &out)
        case let .array(a), let .tuple(a):
            if a.isEmpty { out += "[]"; return }
            out += "["
            for (k, v) in a.enumerated() {
                if k > 0 { out += indent == nil ? ", " : "," }
                if let indent { out += "\n" + String(repeating: " ", count: indent * (level + 1)) }
                try v.json(indent: indent, ascii: ascii, level: level + 1, into: &out)
            }
            if let indent { out += "\n" + String(repeating: " ", count: indent * level) }
            out += "]"
        case let .dict(d):
            try JinjaValue.jsonObject(d.pairs, indent: indent, ascii: ascii, level: level, into: &out)
        case let .namespace(n):
            try JinjaValue.jsonObject(n.attributes.pairs, indent: indent, ascii: ascii, level: level, into: &out)
        case .undefined, .callable:
            throw ChatTemplateError(.runtime, "Object of type \(typeName) is not JSON serializable")
        }
    }

    private static func jsonObject(_ pairs: [(String, JinjaValue)], indent: Int?, ascii: Bool, level: Int, into out: inout String) throws {
        if pairs.isEmpty { out += "{}"; return }
        out += "{"
        for (k, (key, v)) in pairs.enumerated() {
            if k > 0 { out += indent == nil ? ", " : "," }
            if let indent { out += "\n" + String(repeating: " ", count: indent * (level + 1)) }
            jsonString(key, ascii: ascii, into: &out)
            out += ": "
            try v.json(indent: indent, ascii: ascii, level: level + 1, into: &out)
        }
        if let indent { out += "\n" + String(repeating: " ", count: indent * level) }
        out += "}"
    }

    static func jsonString(_ s: String, ascii: Bool = false, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 || (ascii && u.value == 0x7F) {
                    out += String(format: "\\u%04x", u.value)
                } else if ascii && u.value > 0x7F {
                    for unit in String(u).utf16 { out += String(format: "\\u%04x", unit) }
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }
}

// MARK: - Comparison and arithmetic

extension JinjaValue {
    static func equal(_ a: JinjaValue, _ b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): return true
        case let (.string(x), .string(y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case let (.array(x), .array(y)), let (.tuple(x), .tuple(y)):
            return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case let (.dict(x), .dict(y)):
            return x.count == y.count && x.pairs.allSatisfy { k, v in y[k].map { equal(v, $0) } ?? false }
        case let (.namespace(x), .namespace(y)): return x === y
        case let (.callable(x), .callable(y)): return x === y
        default:
            if let x = a.asInt, let y = b.asInt { return x == y }
            if a.isNumber, b.isNumber, let x = a.asDouble, let y = b.asDouble { return x == y }
            return false
        }
    }

    /// Python's `<`; nil when the types cannot be ordered.
    static func less(_ a: JinjaValue, _ b: JinjaValue) -> Bool? {
        switch (a, b) {
        case let (.string(x), .string(y)):
            return x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars) { $0.value < $1.value }
        case let (.array(x), .array(y)), let (.tuple(x), .tuple(y)):
            for (p, q) in zip(x, y) where !equal(p, q) { return less(p, q) }
            return x.count < y.count
        default:
            if let x = a.asInt, let y = b.asInt { return x < y }
            if a.isNumber, b.isNumber, let x = a.asDouble, let y = b.asDouble { return x < y }
            return nil
        }
    }

    static func compare(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> Bool {
        switch op {
        case "==": return equal(a, b)
        case "!=": return !equal(a, b)
        case "in": return try contains(b, a)
        case "not in": return try !contains(b, a)
        default:
            let lt: Bool?, gt: Bool?
            switch op {
            case "<": lt = less(a, b); gt = nil
            case ">": lt = nil; gt = less(b, a)
            case "<=": lt = less(b, a).map { !$0 }; gt = nil
            default: lt = nil; gt = less(a, b).map { !$0 }
            }
            if let r = lt ?? gt { return r }
            throw ChatTemplateError(.runtime, "'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
        }
    }

    static func contains(_ container: JinjaValue, _ item: JinjaValue) throws -> Bool {
        switch container {
        case let .string(s):
            guard case let .string(sub) = item else {
                throw ChatTemplateError(.runtime, "'in <string>' requires string as left operand, not \(item.typeName)")
            }
            return sub.isEmpty || s.contains(sub)
        case let .array(a), let .tuple(a): return a.contains { equal($0, item) }
        case let .dict(d):
            if case let .string(k) = item { return d[k] != nil }
            return false
        case .undefined: return false
        case let .namespace(n):
            if case let .string(k) = item { return n.attributes[k] != nil }
            return false
        default:
            throw ChatTemplateError(.runtime, "argument of type '\(container.typeName)' is not iterable")
        }
    }

    private static func unsupported(_ op: String, _ a: JinjaValue, _ b: JinjaValue) -> ChatTemplateError {
        if case let .undefined(n) = a { return ChatTemplateError(.runtime, "'\(n)' is undefined") }
        if case let .undefined(n) = b { return ChatTemplateError(.runtime, "'\(n)' is undefined") }
        return ChatTemplateError(.runtime, "unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'")
    }

    private static func overflow() -> ChatTemplateError { ChatTemplateError(.runtime, "integer overflow") }

    static func arithmetic(_ op: String, _ a: JinjaValue, _ b: JinjaValue) throws -> JinjaValue {
        if let x = a.asInt, let y = b.asInt {
            switch op {
            case "+": let r = x.addingReportingOverflow(y); if r.overflow { throw overflow() }; return .int(r.partialValue)
            case "-": let r = x.subtractingReportingOverflow(y); if r.overflow { throw overflow() }; return .int(r.partialValue)
            case "*": let r = x.multipliedReportingOverflow(by: y); if r.overflow { throw overflow() }; return .int(r.partialValue)
            case "/":
                if y == 0 { throw ChatTemplateError(.runtime, "division by zero") }
                return .double(Double(x) / Double(y))
            case "//":
                if y == 0 { throw ChatTemplateError(.runtime, "integer division or modulo by zero") }
                var q = x / y
                if (x % y != 0) && ((x < 0) != (y < 0)) { q -= 1 }
                return .int(q)
            case "%":
                if y == 0 { throw ChatTemplateError(.runtime, "integer division or modulo by zero") }
                var r = x % y
                if r != 0 && ((r < 0) != (y < 0)) { r += y }
                return .int(r)
            case "**":
                if y < 0 { return .double(pow(Double(x), Double(y))) }
                var result = 1, base = x, e = y
                while e > 0 {
                    if e & 1 == 1 {
                        let r = result.multipliedReportingOverflow(by: base); if r.overflow { throw overflow() }; result = r.partialValue
                    }
                    e >>= 1
                    if e > 0 { let r = base.multipliedReportingOverflow(by: base); if r.overflow { throw overflow() }; base = r.partialValue }
                }
                return .int(result)
            default: break
            }
        }
        if a.isNumber, b.isNumber, let x = a.asDouble, let y = b.asDouble {
            switch op {
            case "+": return .double(x + y)
            case "-": return .double(x - y)
            case "*": return .double(x * y)
            case "/":
                if y == 0 { throw ChatTemplateError(.runtime, "float division by zero") }
                return .double(x / y)
            case "//":
                if y == 0 { throw ChatTemplateError(.runtime, "float floor division by zero") }
                return .double((x / y).rounded(.down))
            case "%":
                if y == 0 { throw ChatTemplateError(.runtime, "float modulo") }
                var r = fmod(x, y)
                if r != 0 && ((r < 0) != (y < 0)) { r += y }
                return .double(r)
            case "**": return .double(pow(x, y))
            default: break
            }
        }
        switch (op, a, b) {
        case let ("+", .string(x), .string(y)): return .string(x + y)
        case let ("+", .array(x), .array(y)): return .array(x + y)
        case let ("+", .tuple(x), .tuple(y)): return .tuple(x + y)
        case let ("*", .string(s), n) where n.asInt != nil: return .string(String(repeating: s, count: max(0, n.asInt!)))
        case let ("*", n, .string(s)) where n.asInt != nil: return .string(String(repeating: s, count: max(0, n.asInt!)))
        case let ("*", .array(x), n) where n.asInt != nil: return .array(Array(repeating: x, count: max(0, n.asInt!)).flatMap { $0 })
        case let ("%", .string(f), args): return .string(try printf(f, args))
        default: throw unsupported(op, a, b)
        }
    }

    /// Python's `format % args` for the common conversions.
    static func printf(_ format: String, _ args: JinjaValue) throws -> String {
        var list: [JinjaValue]
        if case let .tuple(t) = args { list = t } else { list = [args] }
        var out = ""
        var it = Array(format.unicodeScalars)[...]
        while let c = it.popFirst() {
            guard c == "%" else { out.unicodeScalars.append(c); continue }
            var spec = ""
            while let n = it.first, "-+ #0123456789.".unicodeScalars.contains(n) { spec.unicodeScalars.append(n); it.removeFirst() }
            guard let conv = it.popFirst() else { throw ChatTemplateError(.runtime, "incomplete format") }
            if conv == "%" { out += "%"; continue }
            guard !list.isEmpty else { throw ChatTemplateError(.runtime, "not enough arguments for format string") }
            let v = list.removeFirst()
            var text: String
            switch conv {
            case "s": text = v.str
            case "r": text = v.repr
            case "d", "i":
                guard let d = v.asDouble else { throw ChatTemplateError(.runtime, "%d format: a number is required, not \(v.typeName)") }
                text = String(v.asInt ?? Int(d))
            case "f", "F":
                guard let d = v.asDouble else { throw ChatTemplateError(.runtime, "must be real number, not \(v.typeName)") }
                let parts = spec.split(separator: ".", omittingEmptySubsequences: false)
                let precision = parts.count > 1 ? Int(parts[1]) ?? 0 : 6
                text = String(format: "%.\(precision)f", d)
            default: throw ChatTemplateError(.runtime, "unsupported format character '\(conv)'")
            }
            let widthText = spec.split(separator: ".", omittingEmptySubsequences: false).first.map { $0.filter { $0.isNumber } } ?? ""
            if let width = Int(widthText), text.unicodeScalars.count < width {
                let pad = String(repeating: " ", count: width - text.unicodeScalars.count)
                text = spec.hasPrefix("-") ? text + pad : pad + text
            }
            out += text
        }
        if !list.isEmpty { throw ChatTemplateError(.runtime, "not all arguments converted during string formatting") }
        return out
    }
}
