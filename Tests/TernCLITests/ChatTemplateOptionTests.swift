// `--chat-template FILE|NAME` as a user meets it: a built-in name or a file makes `generate --chat` work on a
// checkpoint without a template (the tiny Gemma 3 fixture, like the real Gemma GGUF), TERN_CHAT_TEMPLATE sets it
// too, and a bad value is one line naming it with exit status 1 (a failure while running, as README says), also
// for `serve`, which checks it before it listens.

import Foundation
import TernTestSupport
import XCTest

final class ChatTemplateOptionTests: XCTestCase {
    private func tern(_ args: [String], env: [String: String] = [:]) throws -> ProcessResult {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("TERN_") }
        for (k, v) in env { environment[k] = v }
        return try runProcess(try TestPaths.ternBinary(), args, environment: environment)
    }

    let model = TestPaths.fixture("gemma3/gemma3-f16.gguf")

    func testGenerateChatNeedsAndTakesATemplate() throws {
        let chat = ["generate", "--model", model, "--chat", "--prompt", "hi", "--max-tokens", "3", "--temperature", "0"]
        let none = try tern(chat)
        XCTAssertEqual(none.status, 1)
        XCTAssertTrue(none.stderr.contains("no chat template"), none.stderr)

        let named = try tern(chat + ["--chat-template", "gemma"])
        XCTAssertEqual(named.status, 0, named.stderr)
        let fromEnv = try tern(chat, env: ["TERN_CHAT_TEMPLATE": "gemma"])
        XCTAssertEqual(fromEnv.status, 0, fromEnv.stderr)
        XCTAssertEqual(fromEnv.stdout, named.stdout)

        let dir = try TestPaths.temporaryDirectory()
        let file = dir + "/t.jinja"
        try "{% for m in messages %}{{ m['content'] }}{% endfor %}".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(try tern(chat + ["--chat-template", file]).status, 0)
    }

    func testBadTemplateIsOneLineNamingIt() throws {
        for command in [["generate", "--chat", "--prompt", "hi", "--max-tokens", "1"], ["serve", "--port", "0"]] {
            let r = try tern(command + ["--model", model, "--chat-template", "no-such-template"])
            XCTAssertEqual(r.status, 1, command[0] + r.stderr)
            XCTAssertTrue(r.stderr.hasPrefix("tern: chat template 'no-such-template'"), r.stderr)
            XCTAssertTrue(r.stderr.contains("chatml, gemma, llama3"), r.stderr)
        }
        let dir = try TestPaths.temporaryDirectory()
        let bad = dir + "/bad.jinja"
        try "{% if %}".write(toFile: bad, atomically: true, encoding: .utf8)
        let r = try tern(["generate", "--model", model, "--chat", "--prompt", "hi"], env: ["TERN_CHAT_TEMPLATE": bad])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains(bad), r.stderr)
    }
}
