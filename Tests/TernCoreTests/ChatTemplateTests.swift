// Checks the chat-template renderer against outputs of the jinja2 package (configured as Hugging Face's
// apply_chat_template does), committed in Tests/Fixtures/chat_templates/cases.json by
// scripts/make_chat_template_cases.py.

import Foundation
import XCTest
@testable import TernCore

final class ChatTemplateTests: XCTestCase {
    private static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../Fixtures/chat_templates")

    /// The wall-clock time the reference script pins strftime_now to (local time).
    private static let fixedNow: Date = {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = TimeZone.current
        return cal.date(from: DateComponents(year: 2024, month: 7, day: 26, hour: 13, minute: 5, second: 9))!
    }()

    private func loadCases() throws -> [TemplateValue] {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("cases.json"))
        var parser = OrderedJSON(bytes: Array(data))
        let root = try parser.parse()
        guard case let .array(cases)? = root["cases"] else { throw OrderedJSON.Failure(message: "no cases array") }
        return cases
    }

    private func string(_ v: TemplateValue?) -> String? {
        if case let .string(s)? = v { return s }
        return nil
    }

    /// Plain role/content messages go through the ChatMessage API; richer ones through render(context:).
    private func plainMessages(_ v: TemplateValue?) -> [ChatMessage]? {
        guard case let .array(items)? = v else { return nil }
        var out: [ChatMessage] = []
        for m in items {
            guard case let .dictionary(pairs) = m, pairs.count == 2,
                  let role = string(m["role"]), let content = string(m["content"]) else { return nil }
            out.append(ChatMessage(role: role, content: content))
        }
        return out
    }

    private func check(_ c: TemplateValue, render: () throws -> String) {
        let name = string(c["name"]) ?? "?"
        if let expected = string(c["expected"]) {
            do {
                let got = try render()
                XCTAssertEqual(got, expected, "case \(name)")
            } catch {
                XCTFail("case \(name): unexpected error \(error)")
            }
        } else if let expectedError = string(c["expected_error"]) {
            do {
                let got = try render()
                XCTFail("case \(name): expected error '\(expectedError)', rendered \(got.debugDescription)")
            } catch let e as ChatTemplateError {
                XCTAssertEqual(e.kind, .raised, "case \(name)")
                XCTAssertEqual(e.description, expectedError, "case \(name)")
            } catch {
                XCTFail("case \(name): wrong error type \(error)")
            }
        } else {
            XCTFail("case \(name) has neither expected nor expected_error")
        }
    }

    func testConversationsMatchJinja2() throws {
        var templates: [String: ChatTemplate] = [:]
        var count = 0
        for c in try loadCases() {
            guard let file = string(c["template"]) else { continue }
            if templates[file] == nil {
                let source = try String(contentsOf: Self.fixtures.appendingPathComponent(file), encoding: .utf8)
                templates[file] = try ChatTemplate(source: source, now: { Self.fixedNow })
            }
            let template = templates[file]!
            let agp = c["add_generation_prompt"] == .bool(true)
            let bos = string(c["bos_token"]) ?? "", eos = string(c["eos_token"]) ?? ""
            var extra: [String: TemplateValue] = [:]
            if case let .dictionary(pairs)? = c["extra_context"] { for (k, v) in pairs { extra[k] = v } }
            if let messages = plainMessages(c["messages"]) {
                check(c) {
                    try template.render(messages: messages, addGenerationPrompt: agp, bosToken: bos, eosToken: eos,
                                        extraContext: extra)
                }
            } else {
                var context = extra
                context["messages"] = c["messages"] ?? .array([])
                context["add_generation_prompt"] = .bool(agp)
                context["bos_token"] = .string(bos)
                context["eos_token"] = .string(eos)
                check(c) { try template.render(context: context) }
            }
            count += 1
        }
        XCTAssertGreaterThan(count, 150)
    }

    func testExpressionFeaturesMatchJinja2() throws {
        var count = 0
        for c in try loadCases() {
            guard let source = string(c["source"]) else { continue }
            var context: [String: TemplateValue] = [:]
            if case let .dictionary(pairs)? = c["context"] { for (k, v) in pairs { context[k] = v } }
            check(c) { try ChatTemplate(source: source, now: { Self.fixedNow }).render(context: context) }
            count += 1
        }
        XCTAssertGreaterThan(count, 40)
    }

    func testSyntaxErrorsReportPosition() {
        let bad: [(String, Int)] = [
            ("{% for x in xs %}no end", 1),
            ("line one\n{{ 1 + }}", 2),
            ("a\nb\n{% if x %}{% endfor %}", 3),
            ("{{ 'unterminated }}", 1),
            ("{% frobnicate %}", 1),
            ("{# never closed", 1),
        ]
        for (source, line) in bad {
            XCTAssertThrowsError(try ChatTemplate(source: source), source) { error in
                guard let e = error as? ChatTemplateError else { return XCTFail("wrong error type for \(source)") }
                XCTAssertEqual(e.kind, .syntax, source)
                XCTAssertEqual(e.line, line, source)
                XCTAssertTrue(e.description.contains("line \(line)"), e.description)
            }
        }
    }

    func testRaiseExceptionSurfacesMessage() throws {
        let t = try ChatTemplate(source: "{% if messages|length > 1 %}{{ raise_exception('Only one message, please') }}{% endif %}ok")
        XCTAssertEqual(try t.render(messages: [ChatMessage(role: "user", content: "a")], addGenerationPrompt: false,
                                    bosToken: "", eosToken: ""), "ok")
        let two = [ChatMessage(role: "user", content: "a"), ChatMessage(role: "user", content: "b")]
        XCTAssertThrowsError(try t.render(messages: two, addGenerationPrompt: false, bosToken: "", eosToken: "")) { error in
            XCTAssertEqual((error as? ChatTemplateError)?.description, "Only one message, please")
        }
    }

    func testRuntimeErrorIsThrownNotCrash() throws {
        let t = try ChatTemplate(source: "{{ 1 + 'a' }}")
        XCTAssertThrowsError(try t.render(context: [:])) { error in
            XCTAssertEqual((error as? ChatTemplateError)?.kind, .runtime)
        }
    }

    /// Found by fuzzing (tern-fuzz chat-template, LeakSanitizer): a macro's callable holds the scope it was defined
    /// in and that scope holds the callable, so every render of a template with a macro leaked its scopes. The
    /// interpreter breaks the cycle when the render ends, and macros still work up to then (also when called
    /// from a loop's scope and from another macro).
    func testScopesWithMacrosAreReleasedAfterRendering() throws {
        let source = "{% macro inner(x) %}[{{ x }}]{% endmacro %}{% macro outer(x) %}{{ inner(x) }}{% endmacro %}"
            + "{% for i in range(2) %}{{ outer(i) }}{% endfor %}"
        var lexer = TemplateLexer(source: source)
        try lexer.tokenize()
        var parser = TemplateParser(lexer: lexer)
        let nodes = try parser.parseTemplate()
        weak var released: JinjaScope?
        try {
            let globals = JinjaScope(parent: nil)
            TemplateGlobals.install(into: globals)
            let scope = JinjaScope(parent: globals)
            released = scope
            let interpreter = JinjaInterpreter(now: { Date() })
            XCTAssertEqual(try interpreter.render(nodes, scope: scope), "[0][1]")
            interpreter.releaseScopes()
        }()
        XCTAssertNil(released, "the template's scope outlived the render")
        // Through the public entry point, which releases by itself: the same output, render after render.
        let template = try ChatTemplate(source: source)
        XCTAssertEqual(try template.render(context: [:]), "[0][1]")
        XCTAssertEqual(try template.render(context: [:]), "[0][1]")
    }
}

/// Minimal JSON reader that keeps object key order (JSONSerialization does not), for the fixtures.
private struct OrderedJSON {
    struct Failure: Error { let message: String }
    let bytes: [UInt8]
    var i = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    mutating func parse() throws -> TemplateValue {
        let v = try value()
        skip()
        guard i == bytes.count else { throw Failure(message: "trailing data at \(i)") }
        return v
    }

    private mutating func skip() {
        while i < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[i]) { i += 1 }
    }

    private mutating func literal(_ word: String, _ v: TemplateValue) throws -> TemplateValue {
        let w = Array(word.utf8)
        guard i + w.count <= bytes.count, Array(bytes[i..<(i + w.count)]) == w else { throw Failure(message: "bad literal at \(i)") }
        i += w.count
        return v
    }

    private mutating func value() throws -> TemplateValue {
        skip()
        guard i < bytes.count else { throw Failure(message: "unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var pairs: [(key: String, value: TemplateValue)] = []
            skip()
            if bytes[i] == UInt8(ascii: "}") { i += 1; return .dictionary(pairs) }
            while true {
                skip()
                let k = try string()
                skip()
                guard bytes[i] == UInt8(ascii: ":") else { throw Failure(message: "expected ':' at \(i)") }
                i += 1
                pairs.append((key: k, value: try value()))
                skip()
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                guard bytes[i] == UInt8(ascii: "}") else { throw Failure(message: "expected '}' at \(i)") }
                i += 1
                return .dictionary(pairs)
            }
        case UInt8(ascii: "["):
            i += 1
            var items: [TemplateValue] = []
            skip()
            if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            while true {
                items.append(try value())
                skip()
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                guard bytes[i] == UInt8(ascii: "]") else { throw Failure(message: "expected ']' at \(i)") }
                i += 1
                return .array(items)
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .none)
        default:
            let start = i
            var isDouble = false
            while i < bytes.count, "+-0123456789.eE".utf8.contains(bytes[i]) {
                if "eE.".utf8.contains(bytes[i]) { isDouble = true }
                i += 1
            }
            let text = String(decoding: bytes[start..<i], as: UTF8.self)
            if !isDouble, let n = Int(text) { return .int(n) }
            guard let d = Double(text) else { throw Failure(message: "bad number at \(start)") }
            return .double(d)
        }
    }

    private mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<(i + 4)], as: UTF8.self), radix: 16) else {
            throw Failure(message: "bad \\u escape at \(i)")
        }
        i += 4
        return v
    }

    private mutating func string() throws -> String {
        guard bytes[i] == UInt8(ascii: "\"") else { throw Failure(message: "expected string at \(i)") }
        i += 1
        var raw: [UInt8] = []
        while true {
            guard i < bytes.count else { throw Failure(message: "unterminated string") }
            let b = bytes[i]
            i += 1
            if b == UInt8(ascii: "\"") { break }
            if b != UInt8(ascii: "\\") { raw.append(b); continue }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "n"): raw.append(0x0A)
            case UInt8(ascii: "t"): raw.append(0x09)
            case UInt8(ascii: "r"): raw.append(0x0D)
            case UInt8(ascii: "b"): raw.append(0x08)
            case UInt8(ascii: "f"): raw.append(0x0C)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if code >= 0xD800, code < 0xDC00, i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") {
                    i += 2
                    let low = try hex4()
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                }
                raw.append(contentsOf: Array(String(Unicode.Scalar(code).map(Character.init) ?? "\u{FFFD}").utf8))
            default: raw.append(e)
            }
        }
        return String(decoding: raw, as: UTF8.self)
    }
}
