// Tokenizer tests against fixtures made by scripts/make_tokenizer_cases.py with the HF `tokenizers` package:
// pre-tokenizer splits, SmolLM2's real vocabulary (from the GGUF, skipped when absent), a small byte-level and a
// small SentencePiece-style tokenizer.json, the GGUF-style (scores, no merges) SentencePiece path, special-token
// parsing, round trips and streaming detokenization.

import Foundation
import XCTest
import TernCore

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../Fixtures/tokenizer").standardized
private let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../..").standardized.path

private struct PreCase: Decodable {
    var text: String
    var gpt2: [String]
    var smollm: [String]
    var llama3: [String]
    var qwen2: [String]
}

private struct SmolCase: Decodable {
    var text: String
    var ids: [Int32]
    var ids_gpt2: [Int32]
    var ids_llama3: [Int32]
    var ids_qwen2: [Int32]
}

private struct SmolFile: Decodable {
    struct Special: Decodable { var text: String; var ids: [Int32] }
    var cases: [SmolCase]
    var special_cases: [Special]
}

private struct IDCase: Decodable {
    var text: String
    var ids: [Int32]
    var ids_special: [Int32]
    var decoded: String?
}

private struct GGUFStyleVocab: Decodable {
    var tokens: [String]
    var scores: [Float]
    var types: [Int32]
    var bos: Int32
    var eos: Int32
    var unk: Int32
}

// JSONDecoder, not JSONSerialization: the latter drops a leading U+FEFF from strings on Linux.
private func load<T: Decodable>(_ name: String, as: T.Type) throws -> T {
    try JSONDecoder().decode(T.self, from: Data(contentsOf: fixtures.appendingPathComponent(name)))
}

final class TokenizerTests: XCTestCase {

    // MARK: Pre-tokenization (vocabulary-independent)

    func testPreTokenizerSplitsMatchReference() throws {
        let cases = try load("pretokenizer_cases.json", as: [PreCase].self)
        XCTAssertGreaterThan(cases.count, 60)
        let kinds: [(String, KeyPath<PreCase, [String]>)] = [
            ("gpt2", \.gpt2), ("smollm", \.smollm), ("llama-bpe", \.llama3), ("qwen2", \.qwen2),
        ]
        for (name, path) in kinds {
            let tok = try Tokenizer(spec: TokenizerSpec(model: .byteLevelBPE, tokens: ["a"], preTokenizer: name))
            var matched = 0
            for c in cases {
                let got = tok.preTokenize(c.text)
                XCTAssertEqual(got, c[keyPath: path], "\(name): \(c.text.debugDescription)")
                if got == c[keyPath: path] { matched += 1 }
            }
            XCTAssertEqual(matched, cases.count, name)
        }
        // Unknown names fall back to GPT-2's rule without an error.
        let fallback = try Tokenizer(spec: TokenizerSpec(model: .byteLevelBPE, tokens: ["a"], preTokenizer: "no-such"))
        XCTAssertEqual(fallback.preTokenize(cases[3].text), cases[3].gpt2)
    }

    // MARK: SmolLM2 (real vocabulary from the GGUF)

    private func smolLM2() throws -> Tokenizer {
        let path = repoRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("no model at \(path)") }
        let gguf = try GGUFFile(path: path)
        return try Tokenizer(spec: TokenizerSpec(gguf: gguf))
    }

    func testSmolLM2MatchesReference() throws {
        let tok = try smolLM2()
        let file = try load("smollm2_cases.json", as: SmolFile.self)
        XCTAssertEqual(tok.vocabularySize, 49152)
        var matched = 0
        for c in file.cases {
            XCTAssertEqual(tok.encode(c.text), c.ids, c.text.debugDescription)
            if tok.encode(c.text) == c.ids { matched += 1 }
            XCTAssertEqual(tok.decode(c.ids), c.text, c.text.debugDescription)
        }
        XCTAssertEqual(matched, file.cases.count)
        // The same vocabulary under the other split rules (llama-bpe also ignores merges for whole-word tokens).
        let variants: [(String, KeyPath<SmolCase, [Int32]>)] = [
            ("gpt2", \.ids_gpt2), ("llama-bpe", \.ids_llama3), ("qwen2", \.ids_qwen2),
        ]
        for (pre, path) in variants {
            var spec = tok.spec
            spec.preTokenizer = pre
            let t = try Tokenizer(spec: spec)
            for c in file.cases { XCTAssertEqual(t.encode(c.text), c[keyPath: path], "\(pre): \(c.text.debugDescription)") }
        }
    }

    func testSmolLM2SpecialTokens() throws {
        let tok = try smolLM2()
        let file = try load("smollm2_cases.json", as: SmolFile.self)
        for c in file.special_cases {
            XCTAssertEqual(tok.encode(c.text, parseSpecial: true), c.ids, c.text.debugDescription)
        }
        let chat = "<|im_start|>user\nhi<|im_end|>"
        let start = try XCTUnwrap(tok.tokenID(forText: "<|im_start|>"))
        let end = try XCTUnwrap(tok.tokenID(forText: "<|im_end|>"))
        let parsed = tok.encode(chat, parseSpecial: true)
        XCTAssertEqual(parsed.first, start)
        XCTAssertEqual(parsed.last, end)
        let raw = tok.encode(chat)
        XCTAssertFalse(raw.contains(start))
        XCTAssertFalse(raw.contains(end))
        XCTAssertEqual(tok.decode(raw), chat)
        XCTAssertEqual(tok.decode(parsed), "user\nhi")  // control tokens decode to nothing
        XCTAssertTrue(tok.isEndOfGeneration(end))
        XCTAssertFalse(tok.isEndOfGeneration(start))
    }

    func testSmolLM2StreamingAndSpeed() throws {
        let tok = try smolLM2()
        let file = try load("smollm2_cases.json", as: SmolFile.self)
        var big = file.cases.map(\.text).joined(separator: " ")
        while big.utf8.count < 10_000 { big += big }
        let start = Date()
        let ids = tok.encode(big)
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5, "encoding 10 KB should take milliseconds")
        XCTAssertEqual(tok.decode(ids), big)
        var stream = StreamingDetokenizer(tokenizer: tok)
        var text = ""
        for id in ids { text += stream.append(id) }
        text += stream.finish()
        XCTAssertEqual(text, big)
    }

    // MARK: Small byte-level tokenizer.json

    func testByteLevelTokenizerJSON() throws {
        let (spec, _) = try HuggingFaceTokenizerLoader.load(directory: fixtures.appendingPathComponent("bytelevel"))
        XCTAssertEqual(spec.model, .byteLevelBPE)
        XCTAssertEqual(spec.preTokenizer, "smollm")
        let tok = try Tokenizer(spec: spec)
        let cases = try load("bytelevel_cases.json", as: [IDCase].self)
        var matched = 0
        for c in cases {
            let got = tok.encode(c.text)
            XCTAssertEqual(got, c.ids, c.text.debugDescription)
            XCTAssertEqual(tok.encode(c.text, parseSpecial: true), c.ids_special, c.text.debugDescription)
            XCTAssertEqual(tok.decode(got), c.text, c.text.debugDescription)
            if got == c.ids { matched += 1 }
        }
        XCTAssertEqual(matched, cases.count)
        let start = try XCTUnwrap(tok.tokenID(forText: "<|im_start|>"))
        XCTAssertEqual(tok.encode("<|im_start|>user\nhi", parseSpecial: true).first, start)
        XCTAssertFalse(tok.encode("<|im_start|>user\nhi").contains(start))
    }

    func testStreamingHoldsBackSplitCharacters() throws {
        let (spec, _) = try HuggingFaceTokenizerLoader.load(directory: fixtures.appendingPathComponent("bytelevel"))
        let tok = try Tokenizer(spec: spec)
        let texts = ["family 👨\u{200D}👩\u{200D}👧\u{200D}👦 flag 🏳️\u{200D}🌈", "你好，世界！这是一个测试。", "🤖🤖🤖 é ☃"]
        for text in texts {
            let ids = tok.encode(text)
            // The small vocabulary spells these characters byte by byte, so some tokens are not valid UTF-8 alone.
            XCTAssertTrue(ids.contains { String(validating: tok.tokenBytes($0), as: UTF8.self) == nil })
            var stream = StreamingDetokenizer(tokenizer: tok)
            var out = ""
            for id in ids {
                let piece = stream.append(id)
                XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}"))
                out += piece
            }
            out += stream.finish()
            XCTAssertEqual(out, tok.decode(ids))
            XCTAssertEqual(out, text)
        }
        // An unfinished character at the end becomes U+FFFD on finish.
        var stream = StreamingDetokenizer(tokenizer: tok)
        let first = try XCTUnwrap(tok.tokenID(forText: "\u{00E4}"))  // byte 0xE4 alone, a 3-byte lead
        XCTAssertEqual(stream.append(first), "")
        XCTAssertEqual(stream.finish(), "\u{FFFD}")
    }

    // MARK: SentencePiece-style BPE

    private func checkSentencePiece(_ tok: Tokenizer, _ label: String) throws {
        let cases = try load("spm_cases.json", as: [IDCase].self)
        var matched = 0
        for c in cases {
            let got = tok.encode(c.text)
            XCTAssertEqual(got, c.ids, "\(label): \(c.text.debugDescription)")
            XCTAssertEqual(tok.encode(c.text, parseSpecial: true), c.ids_special, "\(label) special: \(c.text.debugDescription)")
            if let d = c.decoded { XCTAssertEqual(tok.decode(c.ids), d, "\(label) decode: \(c.text.debugDescription)") }
            XCTAssertEqual(tok.decode(got), c.text, "\(label) round trip")
            if got == c.ids { matched += 1 }
            var stream = StreamingDetokenizer(tokenizer: tok)
            var out = ""
            for id in c.ids_special { out += stream.append(id) }
            out += stream.finish()
            XCTAssertEqual(out, tok.decode(c.ids_special), "\(label) stream")
        }
        XCTAssertEqual(matched, cases.count, label)
        // Byte fallback really happens: the snowman is not in the vocabulary.
        let snow = tok.encode("☃")
        XCTAssertTrue(snow.contains(try XCTUnwrap(tok.tokenID(forText: "<0xE2>"))))
    }

    func testSentencePieceTokenizerJSON() throws {
        let (spec, template) = try HuggingFaceTokenizerLoader.load(directory: fixtures.appendingPathComponent("spm"))
        XCTAssertEqual(spec.model, .sentencePiece)
        XCTAssertTrue(spec.addSpacePrefix)
        XCTAssertTrue(spec.addBOS)
        XCTAssertEqual(spec.bosID, 1)
        XCTAssertEqual(spec.eosID, 2)
        XCTAssertNotNil(template)
        let tok = try Tokenizer(spec: spec)
        try checkSentencePiece(tok, "tokenizer.json")
        XCTAssertTrue(tok.isEndOfGeneration(try XCTUnwrap(tok.tokenID(forText: "<end_of_turn>"))))
    }

    func testSentencePieceGGUFStyle() throws {
        let v = try load("spm_gguf_vocab.json", as: GGUFStyleVocab.self)
        let spec = TokenizerSpec(model: .sentencePiece, tokens: v.tokens, scores: v.scores, tokenTypes: v.types,
                                 preTokenizer: "default", bosID: v.bos, eosID: v.eos, unknownID: v.unk,
                                 addBOS: true, addSpacePrefix: true)
        let tok = try Tokenizer(spec: spec)
        try checkSentencePiece(tok, "gguf-style")
        XCTAssertEqual(tok.decode([v.bos, v.eos]), "")
    }

    /// "é" (U+00E9) and "e" + U+0301 are equal as Swift Strings; the loader and the tokenizer must keep them apart.
    func testCanonicallyEquivalentTokensStayDistinct() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tern-tok-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let json = #"{"model": {"type": "BPE", "vocab": {"<unk>": 0, "e": 1, "\u0301": 2, "\u00e9": 3, "e\u0301": 4},"#
            + #" "merges": [["e", "\u0301"]], "unk_token": "<unk>"}, "added_tokens": [],"#
            + #" "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}}"#
        try Data(json.utf8).write(to: dir.appendingPathComponent("tokenizer.json"))
        let (spec, _) = try HuggingFaceTokenizerLoader.load(directory: dir)
        XCTAssertEqual(spec.tokens.count, 5)
        let tok = try Tokenizer(spec: spec)
        XCTAssertEqual(tok.encode("e\u{301}"), [4])
        XCTAssertEqual(tok.encode("\u{E9}"), [3])
        XCTAssertEqual(tok.tokenID(forText: "e\u{301}"), 4)
        XCTAssertEqual(tok.tokenID(forText: "\u{E9}"), 3)
        // GGUF style (scores, no merges) looks pairs up by text: the same must hold.
        let gguf = try Tokenizer(spec: TokenizerSpec(model: .sentencePiece, tokens: spec.tokens, scores: [0, 0, 0, -3, -4],
                                                     tokenTypes: [2, 1, 1, 1, 1], unknownID: 0))
        XCTAssertEqual(gguf.encode("e\u{301}"), [4])
        XCTAssertEqual(gguf.encode("\u{E9}"), [3])
    }

    // MARK: Validation

    /// Found by fuzzing (tern-fuzz tokenizer): SmolLM2 has no token for some control bytes, and its GGUF names
    /// <|endoftext|> as the unknown token, so "a\u{04}b" became a, <|endoftext|>, b: plain text (a chat message)
    /// turned into a control token. Such bytes are dropped now, as Hugging Face and llama.cpp drop them.
    func testBytesWithoutATokenNeverBecomeControlTokens() throws {
        let tok = try smolLM2()
        XCTAssertTrue(tok.bytesWithoutToken.contains(0x04))
        let endOfText = try XCTUnwrap(tok.tokenID(forText: "<|endoftext|>"))
        let ids = tok.encode("a\u{04}b")
        XCTAssertFalse(ids.contains(endOfText), "\(ids)")
        XCTAssertEqual(tok.decode(ids), "ab")
        XCTAssertEqual(tok.encode("a\u{04}b", parseSpecial: true), ids)

        // The rule itself, on small vocabularies: a byte-level vocabulary without "c" (and so without byte 0x63)
        // drops it when its unknown token is a control token, and keeps an unknown token that is only unknown.
        let control = TokenizerSpec.TokenType.control, normal = TokenizerSpec.TokenType.normal
        let dropping = try Tokenizer(spec: TokenizerSpec(model: .byteLevelBPE, tokens: ["<|end|>", "a", "b"],
                                                         tokenTypes: [control, normal, normal], unknownID: 0))
        XCTAssertEqual(dropping.encode("acb"), [1, 2])
        XCTAssertTrue(dropping.bytesWithoutToken.contains(UInt8(ascii: "c")))
        let keeping = try Tokenizer(spec: TokenizerSpec(model: .byteLevelBPE, tokens: ["<unk>", "a", "b"],
                                                        tokenTypes: [TokenizerSpec.TokenType.unknown, normal, normal], unknownID: 0))
        XCTAssertEqual(keeping.encode("acb"), [1, 0, 2])
    }

    func testInvalidSpecsAreRejected() {
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(model: .byteLevelBPE, tokens: [])))
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(model: .byteLevelBPE, tokens: ["a", "b"], bosID: 5)))
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(model: .byteLevelBPE, tokens: ["a", "b"], merges: ["a c"])))
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(model: .byteLevelBPE, tokens: ["a", "b"], merges: ["a b"]))) {
            XCTAssertTrue("\($0)".contains("ab"))
        }
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(model: .sentencePiece, tokens: ["a", "b"], scores: [0])))
    }
}
