// Builds the syntax tree of a chat template from the lexer's tokens, with Jinja2's operator
// precedence (filters and tests bind tighter than arithmetic; `~` tighter than `+`).

indirect enum JinjaExpr: Sendable {
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case name(String)
    case list([JinjaExpr])
    case tuple([JinjaExpr])
    case dict([(JinjaExpr, JinjaExpr)])
    case attribute(JinjaExpr, String)
    case item(JinjaExpr, JinjaExpr)
    case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
    case call(JinjaExpr, JinjaArguments)
    case filter(JinjaExpr, String, JinjaArguments)
    case test(JinjaExpr, String, JinjaArguments, negated: Bool)
    case unary(String, JinjaExpr)
    case binary(String, JinjaExpr, JinjaExpr)
    case and(JinjaExpr, JinjaExpr)
    case or(JinjaExpr, JinjaExpr)
    case concat([JinjaExpr])
    case compare(JinjaExpr, [(String, JinjaExpr)])
    case conditional(then: JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
}

struct JinjaArguments: Sendable {
    var positional: [JinjaExpr] = []
    var keyword: [(String, JinjaExpr)] = []
}

enum JinjaSetTarget: Sendable {
    case names([String])
    case attribute(String, String)
}

indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpr, line: Int)
    case conditional([(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode], line: Int)
    case loop(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode], line: Int)
    case set(JinjaSetTarget, JinjaExpr, line: Int)
    case setBlock(String, body: [JinjaNode], line: Int)
    case macro(JinjaMacro)
    case breakLoop
    case continueLoop
    case filterBlock(filters: [(String, JinjaArguments)], body: [JinjaNode], line: Int)
    case generation([JinjaNode])
}

struct JinjaMacro: Sendable {
    let name: String
    let parameters: [(String, JinjaExpr?)]
    let body: [JinjaNode]
}

struct TemplateParser {
    private let tokens: [TemplateLocatedToken]
    private let lexer: TemplateLexer
    private var i = 0

    init(lexer: TemplateLexer) {
        self.lexer = lexer
        self.tokens = lexer.tokens
    }

    // MARK: token helpers

    private var current: TemplateToken? { i < tokens.count ? tokens[i].token : nil }
    private var offset: Int { i < tokens.count ? tokens[i].offset : (tokens.last?.offset ?? 0) }
    private func peek(_ k: Int = 1) -> TemplateToken? { i + k < tokens.count ? tokens[i + k].token : nil }

    func line(ofToken k: Int) -> Int { lexer.position(of: k < tokens.count ? tokens[k].offset : 0).line }

    private func fail(_ message: String) -> ChatTemplateError {
        lexer.error(message, at: offset)
    }

    private func describe(_ t: TemplateToken?) -> String {
        switch t {
        case nil: return "end of template"
        case .text: return "template data"
        case .variableBegin: return "'{{'"
        case .variableEnd: return "'}}'"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "end of statement block"
        case let .name(n): return "'\(n)'"
        case .string: return "string"
        case .int, .float: return "number"
        case let .op(o): return "'\(o)'"
        }
    }

    private func isOp(_ o: String) -> Bool { current == .op(o) }
    private func isName(_ n: String) -> Bool { current == .name(n) }

    private mutating func expectOp(_ o: String) throws {
        guard isOp(o) else { throw fail("expected '\(o)', got \(describe(current))") }
        i += 1
    }

    private mutating func expectName() throws -> String {
        guard case let .name(n)? = current else { throw fail("expected a name, got \(describe(current))") }
        i += 1
        return n
    }

    private mutating func expectKeyword(_ k: String) throws {
        guard isName(k) else { throw fail("expected '\(k)', got \(describe(current))") }
        i += 1
    }

    private mutating func expectBlockEnd() throws {
        guard current == .blockEnd else { throw fail("expected end of statement block, got \(describe(current))") }
        i += 1
    }

    // MARK: statements

    mutating func parseTemplate() throws -> [JinjaNode] {
        let (nodes, end) = try parseBody(until: [])
        if let end { throw fail("unexpected '\(end)'") }
        return nodes
    }

    /// Parses nodes until a `{% word %}` with word in `ends`; returns that word with the position just after it
    /// (the tag's remaining tokens are left for the caller), or nil at end of input.
    private mutating func parseBody(until ends: Set<String>) throws -> ([JinjaNode], String?) {
        var nodes: [JinjaNode] = []
        while let t = current {
            switch t {
            case let .text(s):
                nodes.append(.text(s))
                i += 1
            case .variableBegin:
                let ln = line(ofToken: i)
                i += 1
                let e = try parseTuple()
                guard current == .variableEnd else { throw fail("expected '}}', got \(describe(current))") }
                i += 1
                nodes.append(.output(e, line: ln))
            case .blockBegin:
                let ln = line(ofToken: i)
                i += 1
                guard case let .name(word)? = current else { throw fail("expected a statement name, got \(describe(current))") }
                if ends.contains(word) {
                    i += 1
                    return (nodes, word)
                }
                i += 1
                nodes.append(try parseStatement(word, line: ln))
            default:
                throw fail("unexpected \(describe(t))")
            }
        }
        if !ends.isEmpty {
            throw fail("unexpected end of template; expected one of: " + ends.sorted().joined(separator: ", "))
        }
        return (nodes, nil)
    }

    private mutating func parseStatement(_ word: String, line ln: Int) throws -> JinjaNode {
        switch word {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var cond = try parseTuple()
            while true {
                try expectBlockEnd()
                let (body, end) = try parseBody(until: ["elif", "else", "endif"])
                branches.append((cond, body))
                if end == "elif" {
                    cond = try parseTuple()
                    continue
                }
                if end == "else" {
                    try expectBlockEnd()
                    let (otherwise, _) = try parseBody(until: ["endif"])
                    try expectBlockEnd()
                    return .conditional(branches, otherwise: otherwise, line: ln)
                }
                try expectBlockEnd()
                return .conditional(branches, otherwise: [], line: ln)
            }
        case "for":
            var targets = [try expectName()]
            while isOp(",") {
                i += 1
                targets.append(try expectName())
            }
            try expectKeyword("in")
            let iterable = try parseTuple(withCondition: false)
            var filter: JinjaExpr? = nil
            if isName("if") {
                i += 1
                filter = try parseExpression()
            }
            if isName("recursive") { throw fail("recursive loops are not supported") }
            try expectBlockEnd()
            let (body, end) = try parseBody(until: ["endfor", "else"])
            var otherwise: [JinjaNode] = []
            if end == "else" {
                try expectBlockEnd()
                (otherwise, _) = try parseBody(until: ["endfor"])
            }
            try expectBlockEnd()
            return .loop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise, line: ln)
        case "set":
            let first = try expectName()
            var target = JinjaSetTarget.names([first])
            if isOp(".") {
                i += 1
                target = .attribute(first, try expectName())
            } else if isOp(",") {
                var names = [first]
                while isOp(",") {
                    i += 1
                    names.append(try expectName())
                }
                target = .names(names)
            }
            if current == .blockEnd, case let .names(n) = target, n.count == 1 {
                i += 1
                let (body, _) = try parseBody(until: ["endset"])
                try expectBlockEnd()
                return .setBlock(first, body: body, line: ln)
            }
            try expectOp("=")
            let value = try parseTuple()
            try expectBlockEnd()
            return .set(target, value, line: ln)
        case "macro":
            let name = try expectName()
            try expectOp("(")
            var params: [(String, JinjaExpr?)] = []
            while !isOp(")") {
                if !params.isEmpty { try expectOp(",") }
                if isOp(")") { break }
                let p = try expectName()
                var def: JinjaExpr? = nil
                if isOp("=") {
                    i += 1
                    def = try parseExpression()
                }
                params.append((p, def))
            }
            i += 1
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endmacro"])
            if case .name? = current { i += 1 }  // `{% endmacro name %}`
            try expectBlockEnd()
            return .macro(JinjaMacro(name: name, parameters: params, body: body))
        case "break", "continue":
            try expectBlockEnd()
            return word == "break" ? .breakLoop : .continueLoop
        case "filter":
            var filters: [(String, JinjaArguments)] = []
            repeat {
                if !filters.isEmpty { i += 1 }
                filters.append(try parseFilterCall())
            } while isOp("|")
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endfilter"])
            try expectBlockEnd()
            return .filterBlock(filters: filters, body: body, line: ln)
        case "generation":
            // Hugging Face's assistant-mask extension; rendering ignores it.
            try expectBlockEnd()
            let (body, _) = try parseBody(until: ["endgeneration"])
            try expectBlockEnd()
            return .generation(body)
        default:
            i -= 1
            throw fail("unknown tag '\(word)'")
        }
    }

    // MARK: expressions

    private mutating func parseTuple(withCondition: Bool = true) throws -> JinjaExpr {
        let first = withCondition ? try parseExpression() : try parseOr()
        guard isOp(",") else { return first }
        var items = [first]
        while isOp(",") {
            i += 1
            if current == .blockEnd || current == .variableEnd || isOp(")") { break }
            items.append(withCondition ? try parseExpression() : try parseOr())
        }
        return .tuple(items)
    }

    mutating func parseExpression() throws -> JinjaExpr {
        var e = try parseOr()
        while isName("if") {
            i += 1
            let cond = try parseOr()
            var otherwise: JinjaExpr? = nil
            if isName("else") {
                i += 1
                otherwise = try parseExpression()
            }
            e = .conditional(then: e, condition: cond, otherwise: otherwise)
        }
        return e
    }

    private mutating func parseOr() throws -> JinjaExpr {
        var e = try parseAnd()
        while isName("or") {
            i += 1
            e = .or(e, try parseAnd())
        }
        return e
    }

    private mutating func parseAnd() throws -> JinjaExpr {
        var e = try parseNot()
        while isName("and") {
            i += 1
            e = .and(e, try parseNot())
        }
        return e
    }

    private mutating func parseNot() throws -> JinjaExpr {
        if isName("not") {
            i += 1
            return .unary("not", try parseNot())
        }
        return try parseCompare()
    }

    private static let comparisons: Set<String> = ["==", "!=", "<", "<=", ">", ">="]

    private mutating func parseCompare() throws -> JinjaExpr {
        let e = try parseMath1()
        var ops: [(String, JinjaExpr)] = []
        while true {
            if case let .op(o)? = current, Self.comparisons.contains(o) {
                i += 1
                ops.append((o, try parseMath1()))
            } else if isName("in") {
                i += 1
                ops.append(("in", try parseMath1()))
            } else if isName("not"), peek() == .name("in") {
                i += 2
                ops.append(("not in", try parseMath1()))
            } else {
                break
            }
        }
        return ops.isEmpty ? e : .compare(e, ops)
    }

    private mutating func parseMath1() throws -> JinjaExpr {
        var e = try parseConcat()
        while case let .op(o)? = current, o == "+" || o == "-" {
            i += 1
            e = .binary(o, e, try parseConcat())
        }
        return e
    }

    private mutating func parseConcat() throws -> JinjaExpr {
        var items = [try parseMath2()]
        while isOp("~") {
            i += 1
            items.append(try parseMath2())
        }
        return items.count == 1 ? items[0] : .concat(items)
    }

    private mutating func parseMath2() throws -> JinjaExpr {
        var e = try parsePow()
        while case let .op(o)? = current, o == "*" || o == "/" || o == "//" || o == "%" {
            i += 1
            e = .binary(o, e, try parsePow())
        }
        return e
    }

    private mutating func parsePow() throws -> JinjaExpr {
        var e = try parseUnary()
        while isOp("**") {
            i += 1
            e = .binary("**", e, try parseUnary())
        }
        return e
    }

    private mutating func parseUnary(withFilter: Bool = true) throws -> JinjaExpr {
        var e: JinjaExpr
        if isOp("-") || isOp("+") {
            let o = isOp("-") ? "-" : "+"
            i += 1
            e = .unary(o, try parseUnary(withFilter: false))
        } else {
            e = try parsePrimary()
        }
        e = try parsePostfix(e)
        if withFilter { e = try parseFilterExpr(e) }
        return e
    }

    private mutating func parsePrimary() throws -> JinjaExpr {
        guard let t = current else { throw fail("unexpected end of template") }
        switch t {
        case let .name(n):
            i += 1
            switch n {
            case "true", "True": return .bool(true)
            case "false", "False": return .bool(false)
            case "none", "None": return .none
            default: return .name(n)
            }
        case let .string(s):
            i += 1
            var str = s
            while case let .string(more)? = current {  // adjacent literals concatenate, as in Python
                str += more
                i += 1
            }
            return .string(str)
        case let .int(v):
            i += 1
            return .int(v)
        case let .float(v):
            i += 1
            return .double(v)
        case .op("("):
            i += 1
            if isOp(")") {
                i += 1
                return .tuple([])
            }
            let e = try parseTuple()
            try expectOp(")")
            return e
        case .op("["):
            i += 1
            var items: [JinjaExpr] = []
            while !isOp("]") {
                if !items.isEmpty { try expectOp(",") }
                if isOp("]") { break }
                items.append(try parseExpression())
            }
            i += 1
            return .list(items)
        case .op("{"):
            i += 1
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !isOp("}") {
                if !pairs.isEmpty { try expectOp(",") }
                if isOp("}") { break }
                let k = try parseExpression()
                try expectOp(":")
                pairs.append((k, try parseExpression()))
            }
            i += 1
            return .dict(pairs)
        default:
            throw fail("unexpected \(describe(t))")
        }
    }

    private mutating func parsePostfix(_ start: JinjaExpr) throws -> JinjaExpr {
        var e = start
        while true {
            if isOp(".") {
                i += 1
                switch current {
                case let .name(n)?:
                    i += 1
                    e = .attribute(e, n)
                case let .int(v)?:
                    i += 1
                    e = .item(e, .int(v))
                default:
                    throw fail("expected an attribute name, got \(describe(current))")
                }
            } else if isOp("[") {
                i += 1
                e = try parseSubscript(e)
            } else if isOp("(") {
                e = .call(e, try parseArguments())
            } else {
                return e
            }
        }
    }

    private mutating func parseSubscript(_ target: JinjaExpr) throws -> JinjaExpr {
        var parts: [JinjaExpr?] = []
        var isSlice = false
        var cur: JinjaExpr? = nil
        while !isOp("]") {
            if isOp(":") {
                i += 1
                parts.append(cur)
                cur = nil
                isSlice = true
            } else {
                if cur != nil { throw fail("expected ']' or ':', got \(describe(current))") }
                cur = try parseExpression()
            }
        }
        i += 1
        if !isSlice {
            guard let key = cur else { throw fail("expected a subscript") }
            return .item(target, key)
        }
        parts.append(cur)
        guard parts.count <= 3 else { throw fail("invalid slice") }
        while parts.count < 3 { parts.append(nil) }
        return .slice(target, parts[0], parts[1], parts[2])
    }

    private mutating func parseArguments() throws -> JinjaArguments {
        try expectOp("(")
        var args = JinjaArguments()
        while !isOp(")") {
            if !args.positional.isEmpty || !args.keyword.isEmpty { try expectOp(",") }
            if isOp(")") { break }
            if case let .name(n)? = current, peek() == .op("=") {
                i += 2
                args.keyword.append((n, try parseExpression()))
            } else {
                if !args.keyword.isEmpty { throw fail("positional argument after keyword argument") }
                args.positional.append(try parseExpression())
            }
        }
        i += 1
        return args
    }

    private mutating func parseDottedName() throws -> String {
        var n = try expectName()
        while isOp("."), case .name? = peek() {
            i += 1
            n += "." + (try expectName())
        }
        return n
    }

    private mutating func parseFilterCall() throws -> (String, JinjaArguments) {
        let name = try parseDottedName()
        let args = isOp("(") ? try parseArguments() : JinjaArguments()
        return (name, args)
    }

    private mutating func parseFilterExpr(_ start: JinjaExpr) throws -> JinjaExpr {
        var e = start
        while true {
            if isOp("|") {
                i += 1
                let (name, args) = try parseFilterCall()
                e = .filter(e, name, args)
            } else if isName("is") {
                i += 1
                var negated = false
                if isName("not") {
                    i += 1
                    negated = true
                }
                let name = try parseDottedName()
                var args = JinjaArguments()
                if isOp("(") {
                    args = try parseArguments()
                } else if let t = current, startsTestArgument(t) {
                    args.positional = [try parsePostfix(try parsePrimary())]
                }
                e = .test(e, name, args, negated: negated)
            } else if isOp("(") {
                e = .call(e, try parseArguments())
            } else {
                return e
            }
        }
    }

    private func startsTestArgument(_ t: TemplateToken) -> Bool {
        switch t {
        case let .name(n): return !["else", "or", "and", "if", "in", "not", "is"].contains(n)
        case .string, .int, .float: return true
        case .op("["), .op("{"): return true
        default: return false
        }
    }
}
