// Filters, tests, string/dict/list methods and global functions available to chat templates, following
// the behaviour of Jinja2's built-ins (and Python's str methods) as Hugging Face exposes them.

import Foundation

typealias JinjaArgs = ([JinjaValue], [(String, JinjaValue)])

private func argument(_ a: JinjaArgs, _ index: Int, _ name: String) -> JinjaValue? {
    if index < a.0.count { return a.0[index] }
    return a.1.first(where: { $0.0 == name })?.1
}

private func runtime(_ message: String) -> ChatTemplateError { ChatTemplateError(.runtime, message) }

private func requireString(_ v: JinjaValue, _ what: String) throws -> String {
    if case let .string(s) = v { return s }
    throw runtime("\(what) must be a string, not \(v.typeName)")
}

// MARK: - Python string helpers (all on Unicode scalars, as Python str works on code points)

enum JinjaPyString {
    static func strip(_ s: String, _ chars: String?, leading: Bool, trailing: Bool) -> String {
        let scalars = Array(s.unicodeScalars)
        let set = chars.map { Set($0.unicodeScalars) }
        func drop(_ c: Unicode.Scalar) -> Bool { set?.contains(c) ?? TemplateLexer.isSpace(c) }
        var a = 0, b = scalars.count
        if leading { while a < b, drop(scalars[a]) { a += 1 } }
        if trailing { while b > a, drop(scalars[b - 1]) { b -= 1 } }
        var v = String.UnicodeScalarView()
        v.append(contentsOf: scalars[a..<b])
        return String(v)
    }

    static func find(_ hay: [Unicode.Scalar], _ needle: [Unicode.Scalar], from: Int) -> Int? {
        if needle.isEmpty { return from <= hay.count ? from : nil }
        guard hay.count >= needle.count else { return nil }
        var i = from
        while i + needle.count <= hay.count {
            if hay[i] == needle[0] && hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    static func make<S: Sequence>(_ s: S) -> String where S.Element == Unicode.Scalar {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s)
        return String(v)
    }

    static func replace(_ s: String, _ old: String, _ new: String, count: Int?) -> String {
        let hay = Array(s.unicodeScalars), needle = Array(old.unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0, done = 0
        let limit = count.flatMap { $0 < 0 ? nil : $0 } ?? Int.max
        if needle.isEmpty {
            for c in hay {
                if done < limit { out.append(contentsOf: new.unicodeScalars); done += 1 }
                out.append(c)
            }
            if done < limit { out.append(contentsOf: new.unicodeScalars) }
            return String(out)
        }
        while done < limit, let j = find(hay, needle, from: i) {
            out.append(contentsOf: hay[i..<j])
            out.append(contentsOf: new.unicodeScalars)
            i = j + needle.count
            done += 1
        }
        out.append(contentsOf: hay[i...])
        return String(out)
    }

    static func split(_ s: String, _ sep: String?, maxsplit: Int) throws -> [String] {
        let hay = Array(s.unicodeScalars)
        var parts: [String] = []
        if let sep {
            let needle = Array(sep.unicodeScalars)
            if needle.isEmpty { throw runtime("empty separator") }
            var i = 0
            while maxsplit < 0 || parts.count < maxsplit, let j = find(hay, needle, from: i) {
                parts.append(make(hay[i..<j]))
                i = j + needle.count
            }
            parts.append(make(hay[i...]))
            return parts
        }
        var i = 0
        while i < hay.count {
            while i < hay.count, TemplateLexer.isSpace(hay[i]) { i += 1 }
            if i == hay.count { break }
            if maxsplit >= 0 && parts.count == maxsplit {
                var end = hay.count
                while end > i, TemplateLexer.isSpace(hay[end - 1]) { end -= 1 }
                parts.append(make(hay[i..<end]))
                return parts
            }
            let start = i
            while i < hay.count, !TemplateLexer.isSpace(hay[i]) { i += 1 }
            parts.append(make(hay[start..<i]))
        }
        return parts
    }

    static func splitlines(_ s: String) -> [String] {
        var lines: [String] = []
        var cur = String.UnicodeScalarView()
        var it = Array(s.unicodeScalars)[...]
        while let c = it.popFirst() {
            switch c.value {
            case 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029:
                if c == "\r", it.first == "\n" { it.removeFirst() }
                lines.append(String(cur))
                cur = String.UnicodeScalarView()
            default:
                cur.append(c)
            }
        }
        if !cur.isEmpty { lines.append(String(cur)) }
        return lines
    }

    static func upper(_ s: String) -> String { s.uppercased() }
    static func lower(_ s: String) -> String { s.lowercased() }

    private static func isCased(_ c: Unicode.Scalar) -> Bool {
        c.properties.isLowercase || c.properties.isUppercase || c.properties.generalCategory == .titlecaseLetter
    }

    private static func titled(_ c: Unicode.Scalar) -> String { c.properties.titlecaseMapping }

    /// Python's str.title(): a cased character is upper after an uncased one, lower after a cased one.
    static func title(_ s: String) -> String {
        var out = ""
        var previousCased = false
        for c in s.unicodeScalars {
            if isCased(c) {
                out += previousCased ? c.properties.lowercaseMapping : titled(c)
                previousCased = true
            } else {
                out.unicodeScalars.append(c)
                previousCased = false
            }
        }
        return out
    }

    static func capitalize(_ s: String) -> String {
        guard let first = s.unicodeScalars.first else { return s }
        return titled(first) + make(s.unicodeScalars.dropFirst()).lowercased()
    }

    /// Jinja2's `title` filter: capitalise after runs of whitespace, '-', and opening brackets.
    static func jinjaTitle(_ s: String) -> String {
        var out = ""
        var word = String.UnicodeScalarView()
        func flush() {
            guard let f = word.first else { return }
            out += String(f).uppercased() + make(word.dropFirst()).lowercased()
            word = String.UnicodeScalarView()
        }
        for c in s.unicodeScalars {
            let delimiter = TemplateLexer.isSpace(c) || "-({[<".unicodeScalars.contains(c)
            if delimiter {
                flush()
                out.unicodeScalars.append(c)
            } else {
                word.append(c)
            }
        }
        flush()
        return out
    }
}

// MARK: - methods

extension JinjaInterpreter {
    /// Bound method `name` of `v`, if its Python type has one we support.
    func method(_ v: JinjaValue, _ name: String) -> JinjaCallable? {
        switch v {
        case let .string(s): return stringMethod(s, name)
        case let .dict(d):
            switch name {
            case "items": return JinjaCallable(name) { _, _, _ in .array(d.pairs.map { .tuple([.string($0.0), $0.1]) }) }
            case "keys": return JinjaCallable(name) { _, _, _ in .array(d.keys.map { .string($0) }) }
            case "values": return JinjaCallable(name) { _, _, _ in .array(d.values) }
            case "get":
                return JinjaCallable(name) { _, p, k in
                    guard let key = argument((p, k), 0, "key") else { throw runtime("get expected at least 1 argument") }
                    if case let .string(ks) = key, let x = d[ks] { return x }
                    return argument((p, k), 1, "default") ?? .none
                }
            default: return nil
            }
        case let .array(a), let .tuple(a):
            switch name {
            case "index":
                return JinjaCallable(name) { _, p, _ in
                    guard let x = p.first, let i = a.firstIndex(where: { JinjaValue.equal($0, x) }) else { throw runtime("value is not in list") }
                    return .int(i)
                }
            case "count":
                return JinjaCallable(name) { _, p, _ in .int(a.filter { JinjaValue.equal($0, p.first ?? .none) }.count) }
            default: return nil
            }
        default: return nil
        }
    }

    private func stringMethod(_ s: String, _ name: String) -> JinjaCallable? {
        func chars(_ a: JinjaArgs) throws -> String? {
            guard let c = argument(a, 0, "chars"), !c.isNone else { return nil }
            return try requireString(c, "strip arg")
        }
        func affix(_ a: JinjaArgs, _ test: @escaping (String) -> Bool) throws -> JinjaValue {
            guard let x = argument(a, 0, "prefix") else { throw runtime("startswith/endswith expected an argument") }
            switch x {
            case let .string(p): return .bool(test(p))
            case let .tuple(items), let .array(items):
                return .bool(try items.contains { test(try requireString($0, "prefix")) })
            default: throw runtime("startswith first arg must be str or a tuple of str, not \(x.typeName)")
            }
        }
        let scalars = { Array(s.unicodeScalars) }
        switch name {
        case "strip": return JinjaCallable(name) { _, p, k in .string(JinjaPyString.strip(s, try chars((p, k)), leading: true, trailing: true)) }
        case "lstrip": return JinjaCallable(name) { _, p, k in .string(JinjaPyString.strip(s, try chars((p, k)), leading: true, trailing: false)) }
        case "rstrip": return JinjaCallable(name) { _, p, k in .string(JinjaPyString.strip(s, try chars((p, k)), leading: false, trailing: true)) }
        case "upper": return JinjaCallable(name) { _, _, _ in .string(JinjaPyString.upper(s)) }
        case "lower": return JinjaCallable(name) { _, _, _ in .string(JinjaPyString.lower(s)) }
        case "title": return JinjaCallable(name) { _, _, _ in .string(JinjaPyString.title(s)) }
        case "capitalize": return JinjaCallable(name) { _, _, _ in .string(JinjaPyString.capitalize(s)) }
        case "startswith":
            return JinjaCallable(name) { _, p, k in try affix((p, k)) { s.unicodeScalars.starts(with: $0.unicodeScalars) } }
        case "endswith":
            return JinjaCallable(name) { _, p, k in
                try affix((p, k)) { Array(s.unicodeScalars).reversed().starts(with: Array($0.unicodeScalars).reversed()) }
            }
        case "split", "rsplit":
            return JinjaCallable(name) { _, p, k in
                let sepValue = argument((p, k), 0, "sep")
                let sep = (sepValue == nil || sepValue!.isNone) ? nil : try requireString(sepValue!, "separator")
                let maxsplit = argument((p, k), 1, "maxsplit")?.asInt ?? -1
                if name == "rsplit" && maxsplit >= 0 {
                    // Split from the right by reversing the string and the separator.
                    let rev = JinjaPyString.make(s.unicodeScalars.reversed())
                    let parts = try JinjaPyString.split(rev, sep.map { JinjaPyString.make($0.unicodeScalars.reversed()) }, maxsplit: maxsplit)
                    return .array(parts.reversed().map { .string(JinjaPyString.make($0.unicodeScalars.reversed())) })
                }
                return .array(try JinjaPyString.split(s, sep, maxsplit: maxsplit).map { .string($0) })
            }
        case "splitlines": return JinjaCallable(name) { _, _, _ in .array(JinjaPyString.splitlines(s).map { .string($0) }) }
        case "replace":
            return JinjaCallable(name) { _, p, k in
                guard let old = argument((p, k), 0, "old"), let new = argument((p, k), 1, "new") else {
                    throw runtime("replace expected 2 arguments")
                }
                return .string(JinjaPyString.replace(s, try requireString(old, "replace arg"), try requireString(new, "replace arg"),
                                                count: argument((p, k), 2, "count")?.asInt))
            }
        case "find", "index", "rfind":
            return JinjaCallable(name) { _, p, _ in
                let needle = Array(try requireString(p.first ?? .none, "substring").unicodeScalars)
                let hay = scalars()
                var found: Int? = nil
                if name == "rfind" {
                    var i = hay.count - needle.count
                    while i >= 0 { if hay[i..<(i + needle.count)].elementsEqual(needle) { found = i; break }; i -= 1 }
                } else {
                    found = JinjaPyString.find(hay, needle, from: 0)
                }
                if found == nil && name == "index" { throw runtime("substring not found") }
                return .int(found ?? -1)
            }
        case "count":
            return JinjaCallable(name) { _, p, _ in
                let needle = Array(try requireString(p.first ?? .none, "substring").unicodeScalars)
                let hay = scalars()
                if needle.isEmpty { return .int(hay.count + 1) }
                var n = 0, i = 0
                while let j = JinjaPyString.find(hay, needle, from: i) { n += 1; i = j + needle.count }
                return .int(n)
            }
        case "join":
            return JinjaCallable(name) { interp, p, _ in
                .string(try interp.iterate(p.first ?? .none).map { try requireString($0, "sequence item") }.joined(separator: s))
            }
        case "isdigit", "isnumeric", "isdecimal":
            return JinjaCallable(name) { _, _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType != nil }) }
        case "isalpha":
            return JinjaCallable(name) { _, _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic }) }
        case "isalnum":
            return JinjaCallable(name) { _, _, _ in
                .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
            }
        case "isspace": return JinjaCallable(name) { _, _, _ in .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(TemplateLexer.isSpace)) }
        case "islower": return JinjaCallable(name) { _, _, _ in .bool(s.contains { $0.isLowercase } && !s.contains { $0.isUppercase }) }
        case "isupper": return JinjaCallable(name) { _, _, _ in .bool(s.contains { $0.isUppercase } && !s.contains { $0.isLowercase }) }
        default: return nil
        }
    }
}

// MARK: - filters

extension JinjaInterpreter {
    /// Follows a dotted attribute path the way Jinja2's filters do (item lookup, integer parts as indices).
    func lookupPath(_ v: JinjaValue, _ path: String) throws -> JinjaValue {
        var cur = v
        for part in path.split(separator: ".", omittingEmptySubsequences: false) {
            if let i = Int(part) { cur = try item(cur, .int(i)) } else { cur = try item(cur, .string(String(part))) }
        }
        return cur
    }

    private func sortKey(_ v: JinjaValue, caseSensitive: Bool) -> JinjaValue {
        if !caseSensitive, case let .string(s) = v { return .string(s.lowercased()) }
        return v
    }

    private func sorted(_ items: [JinjaValue], reverse: Bool, key: (JinjaValue) throws -> JinjaValue) throws -> [JinjaValue] {
        let keyed = try items.map { (try key($0), $0) }
        var failure: ChatTemplateError? = nil
        let result = keyed.enumerated().sorted { x, y in
            if let lt = JinjaValue.less(x.element.0, y.element.0), let gt = JinjaValue.less(y.element.0, x.element.0) {
                if lt != gt { return reverse ? gt : lt }
                return x.offset < y.offset  // stable, as Python's sort
            }
            failure = runtime("'<' not supported between instances of '\(x.element.0.typeName)' and '\(y.element.0.typeName)'")
            return x.offset < y.offset
        }
        if let failure { throw failure }
        return result.map { $0.element.1 }
    }

    func applyFilter(_ name: String, _ v: JinjaValue, _ a: JinjaArgs) throws -> JinjaValue {
        switch name {
        case "safe", "string":
            return name == "safe" ? v : .string(v.str)
        case "upper": return .string(JinjaPyString.upper(v.str))
        case "lower": return .string(JinjaPyString.lower(v.str))
        case "title": return .string(JinjaPyString.jinjaTitle(v.str))
        case "capitalize": return .string(JinjaPyString.capitalize(v.str))
        case "trim":
            let chars = argument(a, 0, "chars").flatMap { $0.isNone ? nil : $0.str }
            return .string(JinjaPyString.strip(v.str, chars, leading: true, trailing: true))
        case "length", "count":
            switch v {
            case let .string(s): return .int(s.unicodeScalars.count)
            case let .array(x), let .tuple(x): return .int(x.count)
            case let .dict(d): return .int(d.count)
            case .undefined: return .int(0)
            case let .namespace(n): return .int(n.attributes.count)
            default: throw runtime("object of type '\(v.typeName)' has no len()")
            }
        case "default", "d":
            let fallback = argument(a, 0, "default_value") ?? .string("")
            let boolean = argument(a, 1, "boolean")?.truthy ?? false
            return (v.isUndefined || (boolean && !v.truthy)) ? fallback : v
        case "first":
            return try iterate(v).first ?? .undefined("first")
        case "last":
            return try iterate(v).last ?? .undefined("last")
        case "list":
            return .array(try iterate(v))
        case "reverse":
            if case let .string(s) = v { return .string(JinjaPyString.make(s.unicodeScalars.reversed())) }
            return .array(try iterate(v).reversed())
        case "join":
            let sep = argument(a, 0, "d")?.str ?? ""
            var items = try iterate(v)
            if let attr = argument(a, 1, "attribute"), !attr.isNone { items = try items.map { try lookupPath($0, attr.str) } }
            return .string(items.map(\.str).joined(separator: sep))
        case "replace":
            guard let old = argument(a, 0, "old"), let new = argument(a, 1, "new") else { throw runtime("replace needs 2 arguments") }
            return .string(JinjaPyString.replace(v.str, old.str, new.str, count: argument(a, 2, "count")?.asInt))
        case "tojson":
            var indent: Int? = nil
            if let i = argument(a, 1, "indent"), !i.isNone {
                guard let n = i.asInt else { throw runtime("tojson indent must be an integer") }
                indent = n
            }
            var value = v
            if argument(a, 3, "sort_keys")?.truthy == true { value = sortKeys(v) }
            var out = ""
            try value.json(indent: indent, ascii: argument(a, 0, "ensure_ascii")?.truthy ?? false, into: &out)
            return .string(out)
        case "int":
            let fallback = argument(a, 0, "default") ?? .int(0)
            switch v {
            case .int, .bool: return .int(v.asInt!)
            case let .double(d): return d.isFinite && abs(d) < 9.2e18 ? .int(Int(d)) : fallback
            case let .string(s):
                let t = JinjaPyString.strip(s, nil, leading: true, trailing: true).replacingOccurrences(of: "_", with: "")
                let base = argument(a, 1, "base")?.asInt ?? 10
                if let i = Int(t, radix: base) { return .int(i) }
                if let d = Double(t), d.isFinite, abs(d) < 9.2e18 { return .int(Int(d)) }
                return fallback
            default: return fallback
            }
        case "float":
            let fallback = argument(a, 0, "default") ?? .double(0)
            if let d = v.asDouble { return .double(d) }
            if case let .string(s) = v, let d = Double(JinjaPyString.strip(s, nil, leading: true, trailing: true)) { return .double(d) }
            return fallback
        case "abs":
            if let i = v.asInt { return .int(abs(i)) }
            if case let .double(d) = v { return .double(abs(d)) }
            throw runtime("bad operand type for abs(): '\(v.typeName)'")
        case "round":
            guard let d = v.asDouble else { throw runtime("round needs a number") }
            let precision = argument(a, 0, "precision")?.asInt ?? 0
            let method = argument(a, 1, "method")?.str ?? "common"
            let scale = pow(10.0, Double(precision))
            let rule: FloatingPointRoundingRule = method == "ceil" ? .up : method == "floor" ? .down : .toNearestOrEven
            return .double((d * scale).rounded(rule) / scale)
        case "items":
            switch v {
            case let .dict(d): return .array(d.pairs.map { .tuple([.string($0.0), $0.1]) })
            case .undefined: return .array([])
            default: throw runtime("items filter needs a mapping, got \(v.typeName)")
            }
        case "dictsort":
            guard case let .dict(d) = v else { throw runtime("dictsort needs a mapping") }
            let caseSensitive = argument(a, 0, "case_sensitive")?.truthy ?? false
            let byValue = argument(a, 1, "by")?.str == "value"
            let reverse = argument(a, 2, "reverse")?.truthy ?? false
            let pairs: [JinjaValue] = d.pairs.map { .tuple([.string($0.0), $0.1]) }
            return .array(try sorted(pairs, reverse: reverse) { p in
                guard case let .tuple(kv) = p else { return p }
                return sortKey(byValue ? kv[1] : kv[0], caseSensitive: caseSensitive)
            })
        case "sort":
            let reverse = argument(a, 0, "reverse")?.truthy ?? false
            let caseSensitive = argument(a, 1, "case_sensitive")?.truthy ?? false
            let attr = argument(a, 2, "attribute").flatMap { $0.isNone ? nil : $0.str }
            return .array(try sorted(try iterate(v), reverse: reverse) { x in
                sortKey(try attr.map { try lookupPath(x, $0) } ?? x, caseSensitive: caseSensitive)
            })
        case "unique":
            let caseSensitive = argument(a, 0, "case_sensitive")?.truthy ?? false
            let attr = argument(a, 1, "attribute").flatMap { $0.isNone ? nil : $0.str }
            var seen: [JinjaValue] = []
            var out: [JinjaValue] = []
            for x in try iterate(v) {
                let key = sortKey(try attr.map { try lookupPath(x, $0) } ?? x, caseSensitive: caseSensitive)
                if !seen.contains(where: { JinjaValue.equal($0, key) }) {
                    seen.append(key)
                    out.append(x)
                }
            }
            return .array(out)
        case "min", "max":
            let caseSensitive = argument(a, 0, "case_sensitive")?.truthy ?? false
            let attr = argument(a, 1, "attribute").flatMap { $0.isNone ? nil : $0.str }
            let items = try sorted(try iterate(v), reverse: false) { x in
                sortKey(try attr.map { try lookupPath(x, $0) } ?? x, caseSensitive: caseSensitive)
            }
            return (name == "min" ? items.first : items.last) ?? .undefined(name)
        case "sum":
            let attr = argument(a, 0, "attribute").flatMap { $0.isNone ? nil : $0.str }
            var total = argument(a, 1, "start") ?? .int(0)
            for x in try iterate(v) { total = try JinjaValue.arithmetic("+", total, try attr.map { try lookupPath(x, $0) } ?? x) }
            return total
        case "map":
            let items = try iterate(v)
            if let attr = a.1.first(where: { $0.0 == "attribute" })?.1 {
                let fallback = a.1.first(where: { $0.0 == "default" })?.1
                return .array(try items.map { x in
                    let r = try lookupPath(x, attr.str)
                    if r.isUndefined, let fallback { return fallback }
                    return r
                })
            }
            guard let filterName = a.0.first else { throw runtime("map requires a filter name or attribute=") }
            let rest: JinjaArgs = (Array(a.0.dropFirst()), a.1)
            return .array(try items.map { try applyFilter(filterName.str, $0, rest) })
        case "select", "reject", "selectattr", "rejectattr":
            let byAttr = name.hasSuffix("attr")
            let wanted = name.hasPrefix("select")
            var pos = a.0
            let attr: String? = byAttr ? (pos.isEmpty ? nil : pos.removeFirst().str) : nil
            if byAttr && attr == nil { throw runtime("\(name) requires an attribute name") }
            let testName = pos.isEmpty ? nil : pos.removeFirst().str
            return .array(try iterate(v).filter { x in
                let subject = try attr.map { try lookupPath(x, $0) } ?? x
                let ok = try testName.map { try applyTest($0, subject, pos) } ?? subject.truthy
                return ok == wanted
            })
        case "attr":
            // Jinja2's attr filter uses Python getattr only, so dict keys are not reachable through it.
            let attrName = argument(a, 0, "name")?.str ?? ""
            if case let .namespace(n) = v { return n.attributes[attrName] ?? .undefined(attrName) }
            return method(v, attrName).map { .callable($0) } ?? .undefined(attrName)
        case "batch":
            guard let size = argument(a, 0, "linecount")?.asInt, size > 0 else { throw runtime("batch needs a positive size") }
            let fill = argument(a, 1, "fill_with").flatMap { $0.isNone ? nil : $0 }
            let items = try iterate(v)
            var out: [JinjaValue] = []
            var start = 0
            while start < items.count {
                var chunk = Array(items[start..<min(start + size, items.count)])
                if let fill { while chunk.count < size { chunk.append(fill) } }
                out.append(.array(chunk))
                start += size
            }
            return .array(out)
        case "indent":
            let widthValue = argument(a, 0, "width") ?? .int(4)
            let indentation: String
            if case let .string(s) = widthValue { indentation = s } else { indentation = String(repeating: " ", count: widthValue.asInt ?? 4) }
            let first = argument(a, 1, "first")?.truthy ?? false
            let blank = argument(a, 2, "blank")?.truthy ?? false
            var lines = JinjaPyString.splitlines(v.str + "\n")
            var out: String
            if blank {
                out = lines.joined(separator: "\n" + indentation)
            } else {
                out = lines.isEmpty ? "" : lines.removeFirst()
                if !lines.isEmpty { out += "\n" + lines.map { $0.isEmpty ? $0 : indentation + $0 }.joined(separator: "\n") }
            }
            return .string(first ? indentation + out : out)
        case "escape", "e", "forceescape":
            var out = ""
            for c in v.str.unicodeScalars {
                switch c {
                case "&": out += "&amp;"
                case "<": out += "&lt;"
                case ">": out += "&gt;"
                case "\"": out += "&#34;"
                case "'": out += "&#39;"
                default: out.unicodeScalars.append(c)
                }
            }
            return .string(out)
        case "format":
            if !a.1.isEmpty { throw runtime("format with keyword arguments is not supported") }
            return .string(try JinjaValue.printf(v.str, .tuple(a.0)))
        case "wordcount":
            return .int(v.str.split(whereSeparator: { !($0.isLetter || $0.isNumber || $0 == "_") }).count)
        case "center":
            let width = argument(a, 0, "width")?.asInt ?? 80
            let s = v.str
            let n = s.unicodeScalars.count
            guard width > n else { return .string(s) }
            let total = width - n
            let left = total / 2 + (total & width & 1)
            return .string(String(repeating: " ", count: left) + s + String(repeating: " ", count: total - left))
        default:
            throw runtime("No filter named '\(name)'.")
        }
    }

    private func sortKeys(_ v: JinjaValue) -> JinjaValue {
        switch v {
        case let .dict(d):
            var out = JinjaDict()
            for k in d.keys.sorted(by: { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) { $0.value < $1.value } }) {
                out[k] = sortKeys(d[k]!)
            }
            return .dict(out)
        case let .array(a): return .array(a.map(sortKeys))
        case let .tuple(a): return .tuple(a.map(sortKeys))
        default: return v
        }
    }

    // MARK: tests

    func applyTest(_ name: String, _ v: JinjaValue, _ args: [JinjaValue]) throws -> Bool {
        func arg() throws -> JinjaValue {
            guard let x = args.first else { throw runtime("test '\(name)' needs an argument") }
            return x
        }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": return v.isNone
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "number": return v.isNumber
        case "string": if case .string = v { return true } else { return false }
        case "mapping": if case .dict = v { return true } else { return false }
        case "iterable":
            switch v {
            case .string, .array, .tuple, .dict, .undefined: return true
            default: return false
            }
        case "sequence":
            switch v {
            case .string, .array, .tuple, .dict, .undefined: return true
            default: return false
            }
        case "callable": if case .callable = v { return true } else { return false }
        case "even", "odd":
            guard let i = v.asInt else {
                if case let .double(d) = v, d == d.rounded() { return (Int(d) % 2 == 0) == (name == "even") }
                throw runtime("test '\(name)' needs an integer")
            }
            return (i % 2 == 0) == (name == "even")
        case "divisibleby":
            guard let i = v.asInt, let n = try arg().asInt, n != 0 else { throw runtime("divisibleby needs integers") }
            return i % n == 0
        case "eq", "equalto", "==": return JinjaValue.equal(v, try arg())
        case "ne", "!=": return !JinjaValue.equal(v, try arg())
        case "lt", "lessthan", "<": return try JinjaValue.compare("<", v, try arg())
        case "le", "<=": return try JinjaValue.compare("<=", v, try arg())
        case "gt", "greaterthan", ">": return try JinjaValue.compare(">", v, try arg())
        case "ge", ">=": return try JinjaValue.compare(">=", v, try arg())
        case "in": return try JinjaValue.contains(try arg(), v)
        case "sameas":
            let o = try arg()
            switch (v, o) {
            case (.none, .none): return true
            case let (.bool(x), .bool(y)): return x == y
            case let (.namespace(x), .namespace(y)): return x === y
            default: return false
            }
        case "lower": return v.str == v.str.lowercased()
        case "upper": return v.str == v.str.uppercased()
        case "escaped": return false
        case "filter", "test": return true
        default: throw runtime("No test named '\(name)'.")
        }
    }
}

// MARK: - globals

enum TemplateGlobals {
    static func install(into scope: JinjaScope) {
        scope.vars["raise_exception"] = .callable(JinjaCallable("raise_exception") { _, p, k in
            throw ChatTemplateError(.raised, argument((p, k), 0, "message")?.str ?? "")
        })
        scope.vars["range"] = .callable(JinjaCallable("range") { _, p, _ in
            let ints = try p.map { v -> Int in
                guard let i = v.asInt else { throw runtime("'\(v.typeName)' object cannot be interpreted as an integer") }
                return i
            }
            var start = 0, stop = 0, step = 1
            switch ints.count {
            case 1: stop = ints[0]
            case 2: start = ints[0]; stop = ints[1]
            case 3: start = ints[0]; stop = ints[1]; step = ints[2]
            default: throw runtime("range expected 1 to 3 arguments, got \(ints.count)")
            }
            if step == 0 { throw runtime("range() arg 3 must not be zero") }
            let n = step > 0 ? max(0, (stop - start + step - 1) / step) : max(0, (start - stop - step - 1) / -step)
            if n > 100_000 { throw runtime("range too big") }
            return .array((0..<n).map { .int(start + $0 * step) })
        })
        scope.vars["namespace"] = .callable(JinjaCallable("namespace") { _, p, k in
            let ns = JinjaNamespace()
            for x in p {
                guard case let .dict(d) = x else { throw runtime("namespace() positional argument must be a mapping") }
                for (key, v) in d.pairs { ns.attributes[key] = v }
            }
            for (key, v) in k { ns.attributes[key] = v }
            return .namespace(ns)
        })
        scope.vars["dict"] = .callable(JinjaCallable("dict") { _, p, k in
            var d = JinjaDict()
            for x in p {
                guard case let .dict(src) = x else { throw runtime("dict() positional argument must be a mapping") }
                for (key, v) in src.pairs { d[key] = v }
            }
            for (key, v) in k { d[key] = v }
            return .dict(d)
        })
        scope.vars["strftime_now"] = .callable(JinjaCallable("strftime_now") { interp, p, _ in
            .string(strftime(try requireString(p.first ?? .none, "format"), interp.now()))
        })
    }

    private static let months = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
                                 "October", "November", "December"]
    private static let weekdays = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]

    /// C strftime for the conversions templates use, in the local time zone, English names.
    static func strftime(_ format: String, _ date: Date) -> String {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = TimeZone.current
        let c = cal.dateComponents([.year, .month, .day, .hour, .minute, .second, .weekday], from: date)
        let year = c.year ?? 1970, month = c.month ?? 1, day = c.day ?? 1
        let hour = c.hour ?? 0, minute = c.minute ?? 0, second = c.second ?? 0, weekday = (c.weekday ?? 1) - 1
        let dayOfYear = cal.ordinality(of: .day, in: .year, for: date) ?? 1
        func pad(_ v: Int, _ w: Int, _ noPad: Bool) -> String {
            let s = String(v)
            return noPad || s.count >= w ? s : String(repeating: "0", count: w - s.count) + s
        }
        var out = ""
        var it = format[...]
        while let ch = it.popFirst() {
            guard ch == "%", var conv = it.popFirst() else { out.append(ch); continue }
            var noPad = false
            if conv == "-", let next = it.popFirst() { noPad = true; conv = next }
            switch conv {
            case "d": out += pad(day, 2, noPad)
            case "e": out += noPad ? String(day) : (day < 10 ? " " : "") + String(day)
            case "m": out += pad(month, 2, noPad)
            case "Y": out += String(year)
            case "y": out += pad(year % 100, 2, noPad)
            case "H": out += pad(hour, 2, noPad)
            case "I": out += pad(hour % 12 == 0 ? 12 : hour % 12, 2, noPad)
            case "M": out += pad(minute, 2, noPad)
            case "S": out += pad(second, 2, noPad)
            case "p": out += hour < 12 ? "AM" : "PM"
            case "j": out += pad(dayOfYear, 3, noPad)
            case "b", "h": out += String(months[month - 1].prefix(3))
            case "B": out += months[month - 1]
            case "a": out += String(weekdays[weekday].prefix(3))
            case "A": out += weekdays[weekday]
            case "w": out += String(weekday)
            case "F": out += "\(year)-\(pad(month, 2, false))-\(pad(day, 2, false))"
            case "%": out += "%"
            default: out.append("%"); if noPad { out.append("-") }; out.append(conv)
            }
        }
        return out
    }
}
