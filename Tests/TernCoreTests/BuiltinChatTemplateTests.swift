// The built-in templates of `--chat-template NAME` against jinja2's rendering of each family's published
// template (Tests/Fixtures/chat_templates/cases.json, scripts/make_chat_template_cases.py) on every plain
// conversation there, and the errors a bad `--chat-template` value gives.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class BuiltinChatTemplateTests: XCTestCase {
    func testBuiltinsRenderLikeThePublishedTemplates() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("chat_templates/cases.json")))
        let cases = (try JSONSerialization.jsonObject(with: data) as! [String: Any])["cases"] as! [[String: Any]]
        let published = ["chatml.jinja": "chatml", "gemma.jinja": "gemma", "llama3.jinja": "llama3"]
        var compared: [String: Int] = [:]
        for c in cases {
            guard let file = c["template"] as? String, let name = published[file],
                  let raw = c["messages"] as? [[String: Any]] else { continue }
            // Plain text messages only: the built-ins do not take content parts or tools.
            let messages = raw.compactMap { m -> ChatMessage? in
                guard m.count == 2, let role = m["role"] as? String, let content = m["content"] as? String else { return nil }
                return ChatMessage(role: role, content: content)
            }
            guard messages.count == raw.count, !messages.isEmpty, c["extra_context"] == nil else { continue }
            let template = try ChatTemplate.named(orFile: name)
            let render = {
                try template.render(messages: messages, addGenerationPrompt: c["add_generation_prompt"] as? Bool ?? false,
                                    bosToken: c["bos_token"] as? String ?? "", eosToken: c["eos_token"] as? String ?? "")
            }
            let label = "\(name): \(c["name"] as? String ?? "?")"
            if let expected = c["expected"] as? String {
                XCTAssertEqual(try render(), expected, label)
            } else {
                XCTAssertThrowsError(try render(), label)
            }
            compared[name, default: 0] += 1
        }
        for name in BuiltinChatTemplates.names { XCTAssertGreaterThan(compared[name] ?? 0, 5, name) }
    }

    func testTemplateOptionErrorsNameTheValue() throws {
        XCTAssertThrowsError(try ChatTemplate.named(orFile: "gema")) { e in
            XCTAssertTrue("\(e)".contains("'gema'") && "\(e)".contains("chatml, gemma, llama3"), "\(e)")
        }
        let dir = try TestPaths.temporaryDirectory()
        let bad = dir + "/bad.jinja"
        try "{% for m in messages %}".write(toFile: bad, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ChatTemplate.named(orFile: bad)) { e in XCTAssertTrue("\(e)".contains(bad), "\(e)") }
        let good = dir + "/good.jinja"
        try "{% for m in messages %}[{{ m['content'] }}]{% endfor %}".write(toFile: good, atomically: true, encoding: .utf8)
        let t = try ChatTemplate.named(orFile: good)
        XCTAssertEqual(try t.render(messages: [ChatMessage(role: "user", content: "hi")], addGenerationPrompt: true,
                                    bosToken: "", eosToken: ""), "[hi]")
    }

    /// The tiny Gemma checkpoint has a ChatML template of its own; `chatTemplate:` replaces it.
    func testOverrideReplacesTheCheckpointTemplate() throws {
        let path = TestPaths.fixture("gemma3/gemma3-f16.gguf")
        let plain = try LoadedModel(path: path)
        XCTAssertNil(plain.chatTemplate, "the fixture GGUF carries no template, like the real Gemma file")
        XCTAssertThrowsError(try plain.chatPromptTokens(messages: [ChatMessage(role: "user", content: "hi")]))
        let loaded = try LoadedModel(path: path, chatTemplate: try ChatTemplate.named(orFile: "chatml"))
        let ids = try loaded.chatPromptTokens(messages: [ChatMessage(role: "user", content: "hi")])
        let im = try XCTUnwrap(loaded.tokenizer.spec.tokens.firstIndex(of: "<|im_start|>"))
        XCTAssertTrue(ids.contains(Int32(im)), "the template's control tokens are parsed as special tokens")
    }
}
