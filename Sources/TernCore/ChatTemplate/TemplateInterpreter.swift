// Renders a parsed template: scopes (a loop iteration or macro call sees its parent's variables, but its own
// `set`s do not leak out, as in Jinja2), expression evaluation, attribute and item lookup, loops and macros.

import Foundation

final class JinjaScope {
    var vars: [String: JinjaValue] = [:]
    let parent: JinjaScope?
    init(parent: JinjaScope?) { self.parent = parent }

    func lookup(_ name: String) -> JinjaValue? {
        var s: JinjaScope? = self
        while let cur = s {
            if let v = cur.vars[name] { return v }
            s = cur.parent
        }
        return nil
    }
}

private enum Flow { case normal, breakLoop, continueLoop }

final class JinjaInterpreter {
    let now: () -> Date
    private var depth = 0
    /// Scopes that define a macro. A macro's callable holds its defining scope (macros see the variables around
    /// them), and that scope's variables hold the callable: a reference cycle, which `releaseScopes()` breaks when the
    /// render is over. Without it every render of a template with a macro leaked its scopes (found by fuzzing).
    private var macroScopes: [JinjaScope] = []

    init(now: @escaping () -> Date) {
        self.now = now
    }

    // MARK: statements

    /// Empties the scopes that hold macros, once rendering is done (see `macroScopes`).
    func releaseScopes() {
        for s in macroScopes { s.vars.removeAll() }
        macroScopes.removeAll()
    }

    func render(_ nodes: [JinjaNode], scope: JinjaScope) throws -> String {
        var out = ""
        _ = try run(nodes, scope: scope, into: &out)
        return out
    }

    private func located(_ line: Int, _ body: () throws -> Void) throws {
        do {
            try body()
        } catch let e as ChatTemplateError where e.kind == .runtime && e.line == nil {
            throw ChatTemplateError(.runtime, e.message, line: line)
        }
    }

    private func run(_ nodes: [JinjaNode], scope: JinjaScope, into out: inout String) throws -> Flow {
        for node in nodes {
            switch node {
            case let .text(s):
                out += s
            case let .output(e, line):
                try located(line) { out += try eval(e, scope).str }
            case let .conditional(branches, otherwise, line):
                var chosen: [JinjaNode]? = nil
                try located(line) {
                    for (cond, body) in branches where try eval(cond, scope).truthy {
                        chosen = body
                        break
                    }
                }
                let flow = try run(chosen ?? otherwise, scope: scope, into: &out)
                if flow != .normal { return flow }
            case let .loop(targets, iterable, filter, body, otherwise, line):
                try runLoop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise,
                            line: line, scope: scope, into: &out)
            case let .set(target, e, line):
                try located(line) {
                    let v = try eval(e, scope)
                    switch target {
                    case let .names(names) where names.count == 1:
                        scope.vars[names[0]] = v
                    case let .names(names):
                        let items = try iterate(v)
                        guard items.count == names.count else {
                            throw ChatTemplateError(.runtime, "cannot unpack \(items.count) values into \(names.count) names")
                        }
                        for (n, item) in zip(names, items) { scope.vars[n] = item }
                    case let .attribute(name, attr):
                        guard case let .namespace(ns)? = scope.lookup(name) else {
                            throw ChatTemplateError(.runtime, "cannot assign attribute on non-namespace object")
                        }
                        ns.attributes[attr] = v
                    }
                }
            case let .setBlock(name, body, _):
                var captured = ""
                _ = try run(body, scope: scope, into: &captured)
                scope.vars[name] = .string(captured)
            case let .macro(def):
                scope.vars[def.name] = .callable(makeMacro(def, closure: scope))
                macroScopes.append(scope)
            case .breakLoop:
                return .breakLoop
            case .continueLoop:
                return .continueLoop
            case let .filterBlock(filters, body, line):
                var captured = ""
                _ = try run(body, scope: scope, into: &captured)
                try located(line) {
                    var v = JinjaValue.string(captured)
                    for (name, args) in filters {
                        v = try applyFilter(name, v, try evalArguments(args, scope))
                    }
                    out += v.str
                }
            case let .generation(body):
                let flow = try run(body, scope: scope, into: &out)
                if flow != .normal { return flow }
            }
        }
        return .normal
    }

    private func runLoop(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode],
                         line: Int, scope: JinjaScope, into out: inout String) throws {
        var items: [JinjaValue] = []
        try located(line) {
            let all = try iterate(try eval(iterable, scope))
            if let filter {
                let probe = JinjaScope(parent: scope)
                for item in all {
                    try bind(targets, item, in: probe)
                    if try eval(filter, probe).truthy { items.append(item) }
                }
            } else {
                items = all
            }
        }
        if items.isEmpty {
            _ = try run(otherwise, scope: scope, into: &out)
            return
        }
        let n = items.count
        for (k, item) in items.enumerated() {
            let iteration = JinjaScope(parent: scope)
            try located(line) { try bind(targets, item, in: iteration) }
            var loop = JinjaDict()
            loop["index"] = .int(k + 1)
            loop["index0"] = .int(k)
            loop["revindex"] = .int(n - k)
            loop["revindex0"] = .int(n - k - 1)
            loop["first"] = .bool(k == 0)
            loop["last"] = .bool(k == n - 1)
            loop["length"] = .int(n)
            loop["depth"] = .int(1)
            loop["depth0"] = .int(0)
            loop["previtem"] = k > 0 ? items[k - 1] : .undefined("previtem")
            loop["nextitem"] = k + 1 < n ? items[k + 1] : .undefined("nextitem")
            loop["cycle"] = .callable(JinjaCallable("cycle") { _, args, _ in
                guard !args.isEmpty else { throw ChatTemplateError(.runtime, "no items for cycling given") }
                return args[k % args.count]
            })
            iteration.vars["loop"] = .dict(loop)
            let flow = try run(body, scope: iteration, into: &out)
            if flow == .breakLoop { break }
        }
    }

    private func bind(_ targets: [String], _ item: JinjaValue, in scope: JinjaScope) throws {
        if targets.count == 1 {
            scope.vars[targets[0]] = item
            return
        }
        let parts = try iterate(item)
        guard parts.count == targets.count else {
            throw ChatTemplateError(.runtime, "cannot unpack \(parts.count) values into \(targets.count) loop variables")
        }
        for (t, v) in zip(targets, parts) { scope.vars[t] = v }
    }

    private func makeMacro(_ def: JinjaMacro, closure: JinjaScope) -> JinjaCallable {
        JinjaCallable(def.name) { [unowned self] _, args, kwargs in
            guard args.count <= def.parameters.count else {
                throw ChatTemplateError(.runtime, "macro '\(def.name)' takes not more than \(def.parameters.count) argument(s)")
            }
            self.depth += 1
            defer { self.depth -= 1 }
            if self.depth > 200 { throw ChatTemplateError(.runtime, "macro recursion too deep") }
            let frame = JinjaScope(parent: closure)
            for (k, (pname, def)) in def.parameters.enumerated() {
                if k < args.count {
                    frame.vars[pname] = args[k]
                } else if let kw = kwargs.first(where: { $0.0 == pname }) {
                    frame.vars[pname] = kw.1
                } else if let def {
                    frame.vars[pname] = try self.eval(def, frame)
                } else {
                    frame.vars[pname] = .undefined(pname)
                }
            }
            for (k, _) in kwargs where !def.parameters.contains(where: { $0.0 == k }) {
                throw ChatTemplateError(.runtime, "macro '\(def.name)' was invoked with unknown keyword argument '\(k)'")
            }
            return .string(try self.render(def.body, scope: frame))
        }
    }

    // MARK: expressions

    func eval(_ e: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        switch e {
        case .none: return .none
        case let .bool(b): return .bool(b)
        case let .int(i): return .int(i)
        case let .double(d): return .double(d)
        case let .string(s): return .string(s)
        case let .name(n): return scope.lookup(n) ?? .undefined(n)
        case let .list(items): return .array(try items.map { try eval($0, scope) })
        case let .tuple(items): return .tuple(try items.map { try eval($0, scope) })
        case let .dict(pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                guard case let .string(key) = try eval(k, scope) else {
                    throw ChatTemplateError(.runtime, "only string keys are supported in dict literals")
                }
                d[key] = try eval(v, scope)
            }
            return .dict(d)
        case let .attribute(target, name):
            return try attribute(try eval(target, scope), name)
        case let .item(target, key):
            return try item(try eval(target, scope), try eval(key, scope))
        case let .slice(target, a, b, c):
            return try slice(try eval(target, scope), try a.map { try eval($0, scope) },
                             try b.map { try eval($0, scope) }, try c.map { try eval($0, scope) })
        case let .call(target, args):
            let f = try eval(target, scope)
            let (pos, kw) = try evalArguments(args, scope)
            guard case let .callable(c) = f else {
                if case let .undefined(n) = f { throw ChatTemplateError(.runtime, "'\(n)' is undefined") }
                throw ChatTemplateError(.runtime, "'\(f.typeName)' object is not callable")
            }
            return try c.body(self, pos, kw)
        case let .filter(target, name, args):
            return try applyFilter(name, try eval(target, scope), try evalArguments(args, scope))
        case let .test(target, name, args, negated):
            let r = try applyTest(name, try eval(target, scope), try evalArguments(args, scope).0)
            return .bool(r != negated)
        case let .unary(op, x):
            let v = try eval(x, scope)
            switch op {
            case "not": return .bool(!v.truthy)
            case "-":
                if let i = v.asInt {
                    if i == Int.min { throw ChatTemplateError(.runtime, "integer overflow") }
                    return .int(-i)
                }
                if case let .double(d) = v { return .double(-d) }
                throw ChatTemplateError(.runtime, "bad operand type for unary -: '\(v.typeName)'")
            default:
                if let i = v.asInt { return .int(i) }
                if case .double = v { return v }
                throw ChatTemplateError(.runtime, "bad operand type for unary +: '\(v.typeName)'")
            }
        case let .binary(op, a, b):
            return try JinjaValue.arithmetic(op, try eval(a, scope), try eval(b, scope))
        case let .and(a, b):
            let l = try eval(a, scope)
            return l.truthy ? try eval(b, scope) : l
        case let .or(a, b):
            let l = try eval(a, scope)
            return l.truthy ? l : try eval(b, scope)
        case let .concat(items):
            return .string(try items.map { try eval($0, scope).str }.joined())
        case let .compare(first, ops):
            var left = try eval(first, scope)
            for (op, rhs) in ops {
                let right = try eval(rhs, scope)
                if !(try JinjaValue.compare(op, left, right)) { return .bool(false) }
                left = right
            }
            return .bool(true)
        case let .conditional(then, condition, otherwise):
            if try eval(condition, scope).truthy { return try eval(then, scope) }
            if let otherwise { return try eval(otherwise, scope) }
            return .undefined("conditional expression")
        }
    }

    func evalArguments(_ args: JinjaArguments, _ scope: JinjaScope) throws -> ([JinjaValue], [(String, JinjaValue)]) {
        (try args.positional.map { try eval($0, scope) }, try args.keyword.map { ($0.0, try eval($0.1, scope)) })
    }

    func iterate(_ v: JinjaValue) throws -> [JinjaValue] {
        switch v {
        case let .array(a), let .tuple(a): return a
        case let .dict(d): return d.keys.map { .string($0) }
        case let .string(s): return s.unicodeScalars.map { .string(String($0)) }
        case .undefined: return []
        case let .namespace(n): return n.attributes.keys.map { .string($0) }
        default: throw ChatTemplateError(.runtime, "'\(v.typeName)' object is not iterable")
        }
    }

    /// `obj.name`: a method if the type has one by that name, else the key (dicts) — Jinja2's getattr order.
    func attribute(_ v: JinjaValue, _ name: String) throws -> JinjaValue {
        if let m = method(v, name) { return .callable(m) }
        switch v {
        case let .dict(d): return d[name] ?? .undefined(name)
        case let .namespace(n): return n.attributes[name] ?? .undefined(name)
        default: return .undefined(name)
        }
    }

    /// `obj[key]`: the item first, then a method of that name — Jinja2's getitem order.
    func item(_ v: JinjaValue, _ key: JinjaValue) throws -> JinjaValue {
        switch (v, key) {
        case let (.dict(d), .string(k)):
            if let x = d[k] { return x }
            return method(v, k).map { .callable($0) } ?? .undefined(k)
        case let (.namespace(n), .string(k)):
            return n.attributes[k] ?? .undefined(k)
        case let (.array(a), i), let (.tuple(a), i):
            guard let idx = i.asInt else {
                if case let .string(k) = i { return method(v, k).map { .callable($0) } ?? .undefined(k) }
                return .undefined("item")
            }
            let j = idx < 0 ? idx + a.count : idx
            return j >= 0 && j < a.count ? a[j] : .undefined("item")
        case let (.string(s), i):
            guard let idx = i.asInt else {
                if case let .string(k) = i { return method(v, k).map { .callable($0) } ?? .undefined(k) }
                return .undefined("item")
            }
            let scalars = Array(s.unicodeScalars)
            let j = idx < 0 ? idx + scalars.count : idx
            return j >= 0 && j < scalars.count ? .string(String(scalars[j])) : .undefined("item")
        case (.undefined, _):
            return .undefined("item")
        default:
            if case let .string(k) = key { return .undefined(k) }
            return .undefined("item")
        }
    }

    func slice(_ v: JinjaValue, _ a: JinjaValue?, _ b: JinjaValue?, _ c: JinjaValue?) throws -> JinjaValue {
        func bound(_ x: JinjaValue?) throws -> Int? {
            guard let x, !(x.isNone) else { return nil }
            guard let i = x.asInt else { throw ChatTemplateError(.runtime, "slice indices must be integers or None") }
            return i
        }
        let step = try bound(c) ?? 1
        if step == 0 { throw ChatTemplateError(.runtime, "slice step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            func clamp(_ i: Int?, _ def: Int, _ lo: Int, _ hi: Int) -> Int {
                guard var i else { return def }
                if i < 0 { i += n }
                return min(max(i, lo), hi)
            }
            var out: [Int] = []
            if step > 0 {
                var i = clamp(try bound(a), 0, 0, n)
                let end = clamp(try bound(b), n, 0, n)
                while i < end { out.append(i); i += step }
            } else {
                var i = clamp(try bound(a), n - 1, -1, n - 1)
                let end = clamp(try bound(b), -1, -1, n - 1)
                while i > end { out.append(i); i += step }
            }
            return out
        }
        switch v {
        case let .array(x): return .array(try indices(x.count).map { x[$0] })
        case let .tuple(x): return .tuple(try indices(x.count).map { x[$0] })
        case let .string(s):
            let scalars = Array(s.unicodeScalars)
            var view = String.UnicodeScalarView()
            for i in try indices(scalars.count) { view.append(scalars[i]) }
            return .string(String(view))
        case .undefined: return .undefined("slice")
        default: throw ChatTemplateError(.runtime, "'\(v.typeName)' object is not subscriptable")
        }
    }
}

extension JinjaValue {
    var isNone: Bool { if case .none = self { return true } else { return false } }
}
