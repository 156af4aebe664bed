// The `tern` command as users and scripts meet it: the built binary runs as a subprocess with a controlled
// environment. Help must document every option with its default and its TERN_* variable, the command line must
// beat the environment (the `--ignore-eos=false` against TERN_IGNORE_EOS=1 bug), and errors must name the option.

import Foundation
import TernTestSupport
import XCTest

final class CLITests: XCTestCase {
    static let commands = ["generate", "serve", "bench-serve", "tokenize", "inspect", "bench", "convert", "perplexity"]

    /// The environment without TERN_* settings, plus `extra`.
    private func environment(_ extra: [String: String] = [:]) -> [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("TERN_") }
        env["COLUMNS"] = "100"
        for (k, v) in extra { env[k] = v }
        return env
    }

    private func tern(_ args: [String], env: [String: String] = [:]) throws -> ProcessResult {
        try runProcess(try TestPaths.ternBinary(), args, environment: environment(env))
    }

    /// The option entries of a help text: each `--name` line with its wrapped continuation lines joined.
    private func optionEntries(_ help: String) -> [String: String] {
        var entries: [String: String] = [:]
        var current: String?
        for line in help.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("--") {
                let name = String(trimmed.dropFirst(2).prefix { $0.isLetter || $0.isNumber || $0 == "-" })
                current = name
                entries[name] = trimmed
            } else if let c = current, line.hasPrefix("     "), !trimmed.isEmpty {
                entries[c]! += " " + trimmed
            } else {
                current = nil
            }
        }
        return entries
    }

    func testHelpListsEveryOptionWithDefaultAndVariable() throws {
        for command in Self.commands {
            let r = try tern([command, "--help"])
            XCTAssertEqual(r.status, 0, command + r.stderr)
            let entries = optionEntries(r.stdout)
            XCTAssertFalse(entries.isEmpty, command + ":\n" + r.stdout)
            for (name, entry) in entries where name != "help" {
                let variable = "TERN_" + name.uppercased().replacingOccurrences(of: "-", with: "_")
                if !(command == "bench-serve" && name == "model") {
                    XCTAssertTrue(entry.contains("(env: \(variable))"), "\(command) --\(name): \(entry)")
                }
                XCTAssertTrue(entry.contains("default"), "\(command) --\(name) shows no default: \(entry)")
            }
        }
        let root = try tern(["--help"])
        XCTAssertEqual(root.status, 0)
        for command in Self.commands { XCTAssertTrue(root.stdout.contains(command), command) }
        XCTAssertTrue(root.stdout.contains("TERN_"), root.stdout)
    }

    /// Each option README documents for `tern serve` (and the sampling options of generate) is still there.
    func testExistingOptionNamesAreKept() throws {
        let expected: [String: [String]] = [
            "serve": ["model", "host", "port", "api-key", "tls-cert", "tls-key", "cors-origin", "ctx-size", "threads",
                      "kv-cache-mib", "kv-type", "block-size", "max-batch-tokens", "max-running", "max-queue",
                      "no-prefix-caching", "served-model-name", "drain-timeout", "max-body-mib", "kv-policy", "kv-budget",
                      "prefix-cache-mib", "kv-release-after", "decode-step-ms"],
            "generate": ["model", "prompt", "max-tokens", "temperature", "top-k", "top-p", "min-p", "seed",
                         "repeat-penalty", "presence-penalty", "frequency-penalty", "stop", "ignore-eos", "ctx-size",
                         "threads", "system", "chat"],
            "perplexity": ["model", "file", "context", "chunks", "threads", "kv-policy", "kv-budget"],
            "convert": ["model", "type", "output", "sparsity", "sparse-pattern", "prune", "calibration", "group-rows"],
            "bench": ["model", "threads", "prompt-tokens", "gen-tokens", "repetitions", "json", "batch", "depth", "seed",
                      "kv-policy", "kv-budget", "kv-type", "ubatch"],
            "tokenize": ["model", "text", "special"],
            "inspect": ["model"],
        ]
        for (command, names) in expected {
            let entries = optionEntries(try tern([command, "--help"]).stdout)
            for n in names { XCTAssertNotNil(entries[n], "\(command) lost --\(n)") }
        }
    }

    /// `tern bench --ubatch`: the prompt goes through in passes of that many tokens (reported in the JSON line), 0
    /// means one pass, and a negative value is a usage error naming the option.
    func testBenchPromptPasses() throws {
        let tiny = TestPaths.fixture("llama/llama-f32.gguf")
        for (ubatch, expected) in [("16", 16), ("0", 40), ("512", 40)] {
            let r = try tern(["bench", "--model", tiny, "--prompt-tokens", "40", "--gen-tokens", "0", "--repetitions", "1",
                              "--threads", "1", "--ubatch", ubatch, "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let line = try XCTUnwrap(r.stdout.split(separator: "\n").last)
            let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            XCTAssertEqual(object["ubatch"] as? Int, expected, String(line))
            XCTAssertGreaterThan(object["pp_tokens_per_s"] as? Double ?? 0, 0, String(line))
        }
        let bad = try tern(["bench", "--model", tiny, "--ubatch", "-1"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--ubatch"), bad.stderr)
    }

    /// `tern bench` on paged KV blocks for a model with sliding-window layers (two cache groups): f16 and f32
    /// run (policy none asked nothing of the layout, yet once stopped on an eviction precondition); q8_0 with
    /// this fixture's 48-wide heads and an eviction policy are refused naming their option.
    func testBenchPagedCacheOnSlidingWindowModel() throws {
        let gemma = TestPaths.fixture("gemma3/gemma3-q8_0.gguf")
        for kv in ["f16", "f32"] {
            let r = try tern(["bench", "--model", gemma, "--prompt-tokens", "8", "--gen-tokens", "4", "--batch", "2",
                              "--depth", "20", "--repetitions", "1", "--threads", "1", "--kv-type", kv, "--json"])
            XCTAssertEqual(r.status, 0, "\(kv): \(r.stderr)")
            let line = try XCTUnwrap(r.stdout.split(separator: "\n").last)
            let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            XCTAssertGreaterThan(object["tg_tokens_per_s"] as? Double ?? 0, 0, String(line))
        }
        let q8 = try tern(["bench", "--model", gemma, "--kv-type", "q8_0", "--repetitions", "1"])
        XCTAssertNotEqual(q8.status, 0, q8.stderr)
        XCTAssertTrue(q8.stderr.contains("--kv-type q8_0") && q8.stderr.contains("48"), q8.stderr)
        let evicting = try tern(["bench", "--model", gemma, "--kv-type", "f16", "--kv-policy", "alisa", "--repetitions", "1"])
        XCTAssertNotEqual(evicting.status, 0, evicting.stderr)
        XCTAssertTrue(evicting.stderr.contains("--kv-policy"), evicting.stderr)
    }

    /// Speculation flags: bad values name their option (or variable); a draft model with another vocabulary
    /// fails naming its file; greedy output is the same with and without speculation.
    func testSpeculationFlags() throws {
        let model = try TestPaths.requireDefaultModel()
        let tiny = TestPaths.fixture("llama/llama-f32.gguf")
        for (args, env, needle) in [(["--spec", "sometimes"], [String: String](), "--spec"), ([], ["TERN_SPEC": "maybe"], "--spec"),
                                    (["--spec", "draft"], [:], "--draft-model"), (["--spec-ngram-min", "0"], [:], "--spec-ngram-min"),
                                    (["--spec-adaptive", "perhaps"], [:], "--spec-adaptive")] {
            let r = try tern(["generate", "--model", tiny, "--prompt", "hi", "--max-tokens", "2"] + args, env: env)
            XCTAssertNotEqual(r.status, 0, "\(args) \(env)")
            XCTAssertTrue(r.stderr.contains(needle), r.stderr)
        }
        let mismatch = try tern(["generate", "--model", tiny, "--prompt", "hi", "--max-tokens", "2", "--draft-model", model])
        XCTAssertEqual(mismatch.status, 1, mismatch.stderr)
        XCTAssertTrue(mismatch.stderr.contains("SmolLM2") && mismatch.stderr.contains("vocabulary"), mismatch.stderr)
        let prompt = "Repeat exactly: the cat sat on the mat, the dog sat on the log, the cat sat on the mat."
        var outputs: [String] = []
        for spec in ["off", "ngram", "auto"] {
            let r = try tern(["generate", "--model", model, "--prompt", prompt, "--temperature", "0", "--max-tokens", "48", "--spec", spec])
            XCTAssertEqual(r.status, 0, r.stderr)
            outputs.append(r.stdout)
        }
        XCTAssertEqual(Set(outputs).count, 1, "\(outputs)")
    }

    func testUnknownOptionErrorNamesIt() throws {
        let r = try tern(["generate", "--no-such-option", "1"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--no-such-option"), r.stderr)
        let bad = try tern(["serve", "--port", "eighty"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--port"), bad.stderr)
        // A bad value that came from the environment names the variable too.
        let fromEnv = try tern(["serve"], env: ["TERN_PORT": "eighty"])
        XCTAssertNotEqual(fromEnv.status, 0)
        XCTAssertTrue(fromEnv.stderr.contains("--port") && fromEnv.stderr.contains("TERN_PORT=eighty"), fromEnv.stderr)
        let flag = try tern(["generate"], env: ["TERN_IGNORE_EOS": "maybe"])
        XCTAssertNotEqual(flag.status, 0)
        XCTAssertTrue(flag.stderr.contains("TERN_IGNORE_EOS"), flag.stderr)
        let unknownCommand = try tern(["frobnicate"])
        XCTAssertNotEqual(unknownCommand.status, 0)
        XCTAssertTrue(unknownCommand.stderr.contains("frobnicate"), unknownCommand.stderr)
    }

    func testCompletionScripts() throws {
        for shell in ["bash", "zsh", "fish"] {
            let r = try tern(["--generate-completion-script", shell])
            XCTAssertEqual(r.status, 0, shell + r.stderr)
            // fish spells options without their dashes (`-l max-tokens`).
            XCTAssertTrue(r.stdout.contains("max-tokens") && r.stdout.contains("kv-cache-mib"), shell)
        }
    }

    /// Command line > environment > default, for a value, with `tokenize` on the tiny fixture: the ids tell
    /// which text was tokenized.
    func testCommandLineBeatsEnvironmentBeatsDefault() throws {
        let model = TestPaths.fixture("llama/llama-f32.gguf")
        let hello = try tern(["tokenize", "--model", model, "--text", "hello"])
        let world = try tern(["tokenize", "--model", model, "--text", "world"])
        XCTAssertEqual(hello.status, 0, hello.stderr)
        XCTAssertNotEqual(hello.stdout, world.stdout)
        XCTAssertEqual(try tern(["tokenize", "--model", model], env: ["TERN_TEXT": "world"]).stdout, world.stdout)
        XCTAssertEqual(try tern(["tokenize", "--model", model, "--text", "hello"], env: ["TERN_TEXT": "world"]).stdout, hello.stdout)
        XCTAssertEqual(try tern(["tokenize", "--text=hello"], env: ["TERN_TEXT": "world", "TERN_MODEL": model]).stdout, hello.stdout)
        XCTAssertEqual(try tern(["tokenize", "--model", model, "hello"], env: ["TERN_TEXT": "world"]).stdout, hello.stdout)
        // A value that starts with dashes is still a value.
        let dashes = try tern(["tokenize", "--model", model, "--text", "--model"])
        XCTAssertEqual(dashes.status, 0, dashes.stderr)
        // The default model when neither names one: from the repository root, as README runs it.
        if FileManager.default.fileExists(atPath: TestPaths.defaultModel) {
            let r = try runProcess(try TestPaths.ternBinary(), ["tokenize", "--text", "hello"], environment: environment(),
                                   currentDirectory: TestPaths.repoRoot)
            XCTAssertEqual(r.status, 0, r.stderr)
        }
    }

    /// The bug: `--ignore-eos=false` lost to TERN_IGNORE_EOS=1. SmolLM2 answers a short chat question greedily
    /// and stops at its end-of-turn token, unless EOS is ignored: the finish reason tells which.
    func testIgnoreEOSFalseOnCommandLineBeatsEnvironment() throws {
        let model = try TestPaths.requireDefaultModel()
        func finish(_ args: [String], _ env: [String: String]) throws -> String {
            let r = try tern(["generate", "--model", model, "--chat", "--prompt", "What is 2+2? Answer with one number.",
                              "--temperature", "0", "--max-tokens", "40", "--threads", "1"] + args, env: env)
            XCTAssertEqual(r.status, 0, r.stderr)
            return r.stderr.components(separatedBy: "finish: ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? r.stderr
        }
        XCTAssertEqual(try finish([], [:]), "stop")
        XCTAssertEqual(try finish([], ["TERN_IGNORE_EOS": "1"]), "length")
        XCTAssertEqual(try finish(["--ignore-eos=false"], ["TERN_IGNORE_EOS": "1"]), "stop")
        XCTAssertEqual(try finish(["--ignore-eos"], ["TERN_IGNORE_EOS": "0"]), "length")
        XCTAssertEqual(try finish(["--ignore-eos=true"], [:]), "length")
    }

    /// `tern convert --sparsity`: bad combinations name the option at fault; a good one writes a file that
    /// inspect describes and generate runs.
    func testConvertSparsityFlags() throws {
        let tiny = TestPaths.fixture("llama/llama-f32.gguf")
        let out = try TestPaths.temporaryDirectory() + "/sparse.gguf"
        let base = ["convert", "--model", tiny, "--type", "q4_0", "--output", out]
        for (args, env, needle) in [(["--sparsity", "0.5", "--sparse-pattern", "diagonal"], [String: String](), "--sparse-pattern"),
                                    (["--sparsity", "0.5", "--prune", "wanda"], [:], "--calibration"),
                                    (["--sparse-pattern", "2:4"], [:], "--sparsity"),
                                    ([], ["TERN_SPARSITY": "0.3", "TERN_SPARSE_PATTERN": "2:4"], "--sparsity 0.5"),
                                    (["--sparsity", "1.5"], [:], "between 0 and 1"),
                                    (["--sparsity", "0.5", "--prune", "wanda", "--calibration", "/nonexistent/text"], [:], "/nonexistent/text")] {
            let r = try tern(base + args, env: env)
            XCTAssertNotEqual(r.status, 0, "\(args) \(env)")
            XCTAssertTrue(r.stderr.contains(needle), "\(args): \(r.stderr)")
        }
        let made = try tern(base + ["--sparsity", "0.5", "--sparse-pattern", "group"])
        XCTAssertEqual(made.status, 0, made.stderr)
        let info = try tern(["inspect", out])
        XCTAssertTrue(info.stdout.contains("tern.sparsity.pattern = group"), info.stdout)
        XCTAssertTrue(info.stdout.contains("sparse: 14 matrices, 50.0% of their weights stored"), info.stdout)
        XCTAssertTrue(info.stdout.contains("blk.0.ffn_up.weight") && info.stdout.contains("group Q4_0"), info.stdout)
        let run = try tern(["generate", "--model", out, "--prompt", "hi", "--max-tokens", "4", "--temperature", "0"])
        XCTAssertEqual(run.status, 0, run.stderr)
    }

    func testInspectTakesAPositionalPath() throws {
        let model = TestPaths.fixture("llama/llama-f32.gguf")
        let r = try tern(["inspect", model])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.hasPrefix("file: \(model)\n"), r.stdout)
        let viaEnv = try tern(["inspect"], env: ["TERN_MODEL": model])
        XCTAssertEqual(viaEnv.stdout, r.stdout)
    }

    /// Progress lines are for terminals only: through a pipe, perplexity's stderr is the per-window lines and
    /// the timing, nothing else, and stdout ends with `ppl: X`.
    func testPerplexityOutputThroughPipesIsUnchanged() throws {
        let model = TestPaths.fixture("llama/llama-f32.gguf")
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 40)
        try text.write(toFile: dir + "/t.txt", atomically: true, encoding: .utf8)
        let r = try tern(["perplexity", "--model", model, "--file", dir + "/t.txt", "--context", "32", "--chunks", "2",
                          "--threads", "1"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = r.stdout.split(separator: "\n")
        XCTAssertEqual(out.count, 2, r.stdout)
        XCTAssertTrue(out[0].hasPrefix("[1]") && out[0].hasSuffix(","), r.stdout)
        XCTAssertTrue(out[1].hasPrefix("ppl: "), r.stdout)
        let err = r.stderr.split(separator: "\n")
        XCTAssertEqual(err.count, 3, r.stderr)
        XCTAssertTrue(err[0].hasPrefix("[1] ") && err[1].hasPrefix("[2] ") && err[2].contains("tokens scored"), r.stderr)
        XCTAssertFalse(r.stderr.contains("\r"), r.stderr)
    }

    /// `tern perplexity --kv-policy P --kv-budget N` evaluates with eviction and still prints `ppl: X` last; a
    /// budget the context never reaches gives the plain value; a bad policy fails naming the option.
    func testPerplexityWithEviction() throws {
        let model = TestPaths.fixture("llama/llama-f32.gguf")
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 40)
        try text.write(toFile: dir + "/t.txt", atomically: true, encoding: .utf8)
        func ppl(_ extra: [String]) throws -> String {
            let r = try tern(["perplexity", "--model", model, "--file", dir + "/t.txt", "--context", "96", "--chunks", "2"] + extra)
            XCTAssertEqual(r.status, 0, r.stderr)
            let last = String(r.stdout.split(separator: "\n").last ?? "")
            XCTAssertTrue(last.hasPrefix("ppl: "), r.stdout)
            return last
        }
        let plain = try ppl([])
        XCTAssertEqual(try ppl(["--kv-policy", "alisa", "--kv-budget", "96"]), plain)
        for policy in ["window", "alisa", "dms"] {
            XCTAssertNotEqual(try ppl(["--kv-policy", policy, "--kv-budget", "16"]), plain, policy)
        }
        let bad = try tern(["perplexity", "--model", model, "--file", dir + "/t.txt", "--kv-policy", "lru"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("--kv-policy"), bad.stderr)
    }
}
