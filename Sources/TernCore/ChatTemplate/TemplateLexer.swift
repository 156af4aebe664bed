// Splits a Jinja template into text and tag tokens, applying Jinja2's whitespace rules as Hugging Face
// configures them (trim_blocks and lstrip_blocks on, trailing newline of the source dropped).

import Foundation

enum TemplateToken: Equatable {
    case text(String)
    case variableBegin, variableEnd, blockBegin, blockEnd
    case name(String)
    case string(String)
    case int(Int)
    case float(Double)
    case op(String)
}

struct TemplateLocatedToken {
    let token: TemplateToken
    let offset: Int  // scalar index into the normalised source, for error positions
}

struct TemplateLexer {
    private let s: [Unicode.Scalar]
    private var lineStarts: [Int] = [0]
    private(set) var tokens: [TemplateLocatedToken] = []

    init(source: String) {
        // Jinja2 treats \r\n, \r and \n alike and drops one trailing newline (keep_trailing_newline off).
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(source.unicodeScalars.count)
        var it = source.unicodeScalars.makeIterator()
        var pending: Unicode.Scalar? = it.next()
        while let c = pending {
            pending = it.next()
            if c == "\r" {
                if pending == "\n" { pending = it.next() }
                out.append("\n")
            } else {
                out.append(c)
            }
        }
        if out.last == "\n" { out.removeLast() }
        s = out
        for (i, c) in s.enumerated() where c == "\n" { lineStarts.append(i + 1) }
    }

    func position(of offset: Int) -> (line: Int, column: Int) {
        var lo = 0, hi = lineStarts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if lineStarts[mid] <= offset { lo = mid } else { hi = mid - 1 }
        }
        return (lo + 1, offset - lineStarts[lo] + 1)
    }

    func error(_ message: String, at offset: Int) -> ChatTemplateError {
        let p = position(of: min(offset, s.count))
        return ChatTemplateError(.syntax, message, line: p.line, column: p.column)
    }

    // MARK: character helpers

    static func isSpace(_ c: Unicode.Scalar) -> Bool {
        // Python's str.isspace / re's \s for str patterns.
        switch c.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return true
        default: return false
        }
    }

    private func at(_ i: Int) -> Unicode.Scalar? { i < s.count ? s[i] : nil }

    private func matches(_ lit: String, at i: Int) -> Bool {
        var j = i
        for c in lit.unicodeScalars {
            guard j < s.count, s[j] == c else { return false }
            j += 1
        }
        return true
    }

    private func skipSpaces(from i: Int) -> Int {
        var j = i
        while j < s.count, Self.isSpace(s[j]) { j += 1 }
        return j
    }

    private func string(_ a: Int, _ b: Int) -> String {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s[a..<b])
        return String(v)
    }

    /// The text before a tag, with `-` stripping or lstrip_blocks applied.
    private func leadingText(_ a: Int, _ b: Int, sign: Unicode.Scalar?, isVariable: Bool, lineStarting: Bool) -> String {
        var end = b
        if sign == "-" {
            while end > a, Self.isSpace(s[end - 1]) { end -= 1 }
        } else if sign != "+" && !isVariable {
            var lPos = end
            while lPos > a, s[lPos - 1] != "\n" { lPos -= 1 }
            if (lPos > a || lineStarting) && lPos < end && (lPos..<end).allSatisfy({ Self.isSpace(s[$0]) }) {
                end = lPos
            }
        }
        return string(a, end)
    }

    // MARK: main loop

    mutating func tokenize() throws {
        var pos = 0
        var lineStarting = true
        while pos < s.count {
            // Find the next tag opener.
            var i = pos
            var kind: Unicode.Scalar? = nil
            while i + 1 < s.count {
                if s[i] == "{", s[i + 1] == "{" || s[i + 1] == "%" || s[i + 1] == "#" { kind = s[i + 1]; break }
                i += 1
            }
            guard let kind else {
                tokens.append(TemplateLocatedToken(token: .text(string(pos, s.count)), offset: pos))
                return
            }
            var bodyStart = i + 2
            var sign: Unicode.Scalar? = nil
            if let c = at(bodyStart), c == "-" || c == "+" { sign = c; bodyStart += 1 }
            let text = leadingText(pos, i, sign: sign, isVariable: kind == "{", lineStarting: lineStarting)
            if !text.isEmpty { tokens.append(TemplateLocatedToken(token: .text(text), offset: pos)) }

            switch kind {
            case "#":
                var j = bodyStart
                var end: Int? = nil
                while j < s.count {
                    if matches("+#}", at: j) { end = j + 3; break }
                    if matches("-#}", at: j) { end = skipSpaces(from: j + 3); break }
                    if matches("#}", at: j) { end = j + 2 + (at(j + 2) == "\n" ? 1 : 0); break }
                    j += 1
                }
                guard let end else { throw error("Missing end of comment tag", at: i) }
                pos = end
                lineStarting = s[end - 1] == "\n"
            case "%":
                if let afterRaw = rawBegin(bodyStart) {
                    lineStarting = s[afterRaw - 1] == "\n"
                    pos = try rawBody(from: afterRaw, lineStarting: lineStarting, openedAt: i)
                    lineStarting = s[pos - 1] == "\n"
                } else {
                    tokens.append(TemplateLocatedToken(token: .blockBegin, offset: i))
                    pos = try tagBody(from: bodyStart, isBlock: true, openedAt: i)
                    lineStarting = s[pos - 1] == "\n"
                }
            default:
                tokens.append(TemplateLocatedToken(token: .variableBegin, offset: i))
                pos = try tagBody(from: bodyStart, isBlock: false, openedAt: i)
                lineStarting = s[pos - 1] == "\n"
            }
        }
    }

    private func keyword(_ word: String, at i: Int) -> Int? {
        guard matches(word, at: i) else { return nil }
        let j = i + word.unicodeScalars.count
        if let c = at(j), Self.isIdentifierContinue(c) { return nil }
        return j
    }

    /// If `{% raw %}` starts here, the index after its closing `%}`.
    private func rawBegin(_ start: Int) -> Int? {
        guard let j = keyword("raw", at: skipSpaces(from: start)) else { return nil }
        let k = skipSpaces(from: j)
        if matches("-%}", at: k) { return skipSpaces(from: k + 3) }
        if matches("%}", at: k) { return k + 2 }
        return nil
    }

    private mutating func rawBody(from start: Int, lineStarting: Bool, openedAt: Int) throws -> Int {
        var j = start
        while j + 1 < s.count {
            if s[j] == "{", s[j + 1] == "%" {
                var k = j + 2
                var sign: Unicode.Scalar? = nil
                if let c = at(k), c == "-" || c == "+" { sign = c; k += 1 }
                if let e = keyword("endraw", at: skipSpaces(from: k)) {
                    let m = skipSpaces(from: e)
                    var end: Int? = nil
                    if matches("+%}", at: m) { end = m + 3 }
                    else if matches("-%}", at: m) { end = skipSpaces(from: m + 3) }
                    else if matches("%}", at: m) { end = m + 2 + (at(m + 2) == "\n" ? 1 : 0) }
                    if let end {
                        let text = leadingText(start, j, sign: sign, isVariable: false, lineStarting: lineStarting)
                        if !text.isEmpty { tokens.append(TemplateLocatedToken(token: .text(text), offset: start)) }
                        return end
                    }
                }
            }
            j += 1
        }
        throw error("Missing end of raw directive", at: openedAt)
    }

    static func isIdentifierStart(_ c: Unicode.Scalar) -> Bool {
        c == "_" || (c.value < 128 ? (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") : c.properties.isAlphabetic)
    }

    static func isIdentifierContinue(_ c: Unicode.Scalar) -> Bool {
        isIdentifierStart(c) || (c >= "0" && c <= "9") || (c.value >= 128 && c.properties.numericType != nil)
    }

    private static let operators2 = ["//", "**", "==", "!=", ">=", "<="]
    private static let operators1: Set<Unicode.Scalar> = [
        "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";",
    ]

    /// Tokenizes the inside of `{% %}` or `{{ }}`; returns the index after the closing delimiter.
    private mutating func tagBody(from start: Int, isBlock: Bool, openedAt: Int) throws -> Int {
        var i = start
        var balance: [Unicode.Scalar] = []
        while true {
            guard i < s.count else {
                throw error(isBlock ? "unexpected end of template, expected '%}'" : "unexpected end of template, expected '}}'", at: openedAt)
            }
            if balance.isEmpty {
                if isBlock {
                    if matches("+%}", at: i) { tokens.append(TemplateLocatedToken(token: .blockEnd, offset: i)); return i + 3 }
                    if matches("-%}", at: i) { tokens.append(TemplateLocatedToken(token: .blockEnd, offset: i)); return skipSpaces(from: i + 3) }
                    if matches("%}", at: i) {
                        tokens.append(TemplateLocatedToken(token: .blockEnd, offset: i))
                        return i + 2 + (at(i + 2) == "\n" ? 1 : 0)
                    }
                } else {
                    if matches("-}}", at: i) { tokens.append(TemplateLocatedToken(token: .variableEnd, offset: i)); return skipSpaces(from: i + 3) }
                    if matches("}}", at: i) { tokens.append(TemplateLocatedToken(token: .variableEnd, offset: i)); return i + 2 }
                }
            }
            let c = s[i]
            if Self.isSpace(c) { i += 1; continue }
            if c >= "0" && c <= "9" {
                i = try number(at: i)
                continue
            }
            if Self.isIdentifierStart(c) {
                var j = i + 1
                while j < s.count, Self.isIdentifierContinue(s[j]) { j += 1 }
                tokens.append(TemplateLocatedToken(token: .name(string(i, j)), offset: i))
                i = j
                continue
            }
            if c == "'" || c == "\"" {
                var j = i + 1
                while j < s.count, s[j] != c {
                    if s[j] == "\\" { j += 1 }
                    j += 1
                }
                guard j < s.count else { throw error("unterminated string literal", at: i) }
                tokens.append(TemplateLocatedToken(token: .string(try unescape(i + 1, j)), offset: i))
                i = j + 1
                continue
            }
            if let op = Self.operators2.first(where: { matches($0, at: i) }) {
                tokens.append(TemplateLocatedToken(token: .op(op), offset: i))
                i += 2
                continue
            }
            if Self.operators1.contains(c) {
                switch c {
                case "(": balance.append(")")
                case "[": balance.append("]")
                case "{": balance.append("}")
                case ")", "]", "}":
                    guard let expected = balance.popLast() else { throw error("unexpected '\(c)'", at: i) }
                    if expected != c { throw error("unexpected '\(c)', expected '\(expected)'", at: i) }
                default: break
                }
                tokens.append(TemplateLocatedToken(token: .op(String(c)), offset: i))
                i += 1
                continue
            }
            throw error("unexpected char '\(c)'", at: i)
        }
    }

    private mutating func number(at start: Int) throws -> Int {
        func digits(_ from: Int) -> Int {
            var j = from
            while j < s.count, (s[j] >= "0" && s[j] <= "9") || (s[j] == "_" && j + 1 < s.count && s[j + 1] >= "0" && s[j + 1] <= "9") { j += 1 }
            return j
        }
        // Radix prefixes.
        if s[start] == "0", let p = at(start + 1), "xXoObB".unicodeScalars.contains(p) {
            let radix = (p == "x" || p == "X") ? 16 : (p == "o" || p == "O") ? 8 : 2
            var j = start + 2
            var text = ""
            while j < s.count, s[j] == "_" || Character(s[j]).hexDigitValue.map({ $0 < radix }) == true {
                if s[j] != "_" { text.unicodeScalars.append(s[j]) }
                j += 1
            }
            guard let v = Int(text, radix: radix) else { throw error("invalid integer literal", at: start) }
            tokens.append(TemplateLocatedToken(token: .int(v), offset: start))
            return j
        }
        var j = digits(start)
        var isFloat = false
        let afterDot = tokens.last?.token == .op(".")  // `foo.0.1` is two item accesses, not a float
        if !afterDot, at(j) == ".", let d = at(j + 1), d >= "0" && d <= "9" {
            j = digits(j + 1)
            isFloat = true
        }
        if !afterDot, let e = at(j), e == "e" || e == "E" {
            var k = j + 1
            if let sgn = at(k), sgn == "+" || sgn == "-" { k += 1 }
            if let d = at(k), d >= "0" && d <= "9" {
                j = digits(k)
                isFloat = true
            }
        }
        let text = string(start, j).replacingOccurrences(of: "_", with: "")
        if isFloat {
            guard let v = Double(text) else { throw error("invalid float literal", at: start) }
            tokens.append(TemplateLocatedToken(token: .float(v), offset: start))
        } else {
            guard let v = Int(text) else { throw error("integer literal too large", at: start) }
            tokens.append(TemplateLocatedToken(token: .int(v), offset: start))
        }
        return j
    }

    /// Python "unicode-escape" decoding of a string literal's body.
    private func unescape(_ a: Int, _ b: Int) throws -> String {
        var out = String.UnicodeScalarView()
        var i = a
        func hex(_ n: Int) throws -> Unicode.Scalar {
            guard i + n < b else { throw error("truncated \\x escape", at: i) }
            var v: UInt32 = 0
            for k in 0..<n {
                guard let d = Character(s[i + 1 + k]).hexDigitValue else { throw error("truncated escape", at: i) }
                v = v * 16 + UInt32(d)
            }
            guard let u = Unicode.Scalar(v) else { throw error("illegal Unicode character", at: i) }
            i += n
            return u
        }
        while i < b {
            let c = s[i]
            guard c == "\\", i + 1 < b else { out.append(c); i += 1; continue }
            i += 1
            let e = s[i]
            switch e {
            case "\n": break
            case "\\": out.append("\\")
            case "'": out.append("'")
            case "\"": out.append("\"")
            case "a": out.append("\u{07}")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "n": out.append("\n")
            case "r": out.append("\r")
            case "t": out.append("\t")
            case "v": out.append("\u{0B}")
            case "x": out.append(try hex(2))
            case "u": out.append(try hex(4))
            case "U": out.append(try hex(8))
            case "0"..."7":
                var v = e.value - 48
                var n = 1
                while n < 3, i + 1 < b, s[i + 1] >= "0", s[i + 1] <= "7" {
                    i += 1; n += 1
                    v = v * 8 + (s[i].value - 48)
                }
                out.append(Unicode.Scalar(v)!)
            default:
                out.append("\\")
                out.append(e)
            }
            i += 1
        }
        return String(out)
    }
}
