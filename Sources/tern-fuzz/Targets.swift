// The fuzz targets: one function per parser that takes arbitrary bytes, runs the parser as Tern runs it, and
// checks the properties Tern relies on (with preconditions, so a violation is a crash libFuzzer records).
// Expected rejections (thrown errors) are fine; crashes, failed checks, hangs and runaway memory are findings.

import Foundation
import TernCore
import TernServer

struct FuzzTarget: Sendable {
    let name: String
    let summary: String
    let run: @Sendable ([UInt8]) -> Void
}

enum FuzzTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "http", summary: "HTTP/1.1 request parser (request line, headers, framing, chunked and gzip bodies)",
                   run: { ServerFuzzing.httpRequest($0) }),
        FuzzTarget(name: "api", summary: "JSON request bodies through CompletionJob.parse (completions, chat) and /tokenize's options",
                   run: { api($0) }),
        FuzzTarget(name: "gguf", summary: "GGUF reader, its metadata accessors, and the tokenizer built from its metadata",
                   run: { gguf($0) }),
        FuzzTarget(name: "safetensors", summary: "safetensors header reader",
                   run: { safetensors($0) }),
        FuzzTarget(name: "tokenizer", summary: "byte-level and SentencePiece tokenizers: text to ids to text, ids to text, streaming",
                   run: { tokenizer($0) }),
        FuzzTarget(name: "chat-template", summary: "chat-template lexer, parser and renderer",
                   run: { chatTemplate($0) }),
    ]

    static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }

    // MARK: - Resources, loaded once per process

    /// The repository root: TERN_ROOT, else two levels above this source file.
    static let root: String = ProcessInfo.processInfo.environment["TERN_ROOT"]
        ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path

    /// The default model: its tokenizer (byte-level BPE, 49 152 tokens) and chat template are what requests meet.
    static let model: LoadedModel = {
        let path = root + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        do { return try LoadedModel(path: path) } catch {
            fatalError("tern-fuzz needs the default model (run models/fetch): \(error)")
        }
    }()

    /// Bytes each tokenizer has no token for (SmolLM2 lacks some): encoding drops them, so the round trip expects
    /// the text without them.
    static let unencodable: [Set<UInt8>] = tokenizers.map { Set($0.tokenizer.bytesWithoutToken) }

    static let tokenizers: [(name: String, tokenizer: Tokenizer, roundTrips: Bool)] = {
        func hf(_ dir: String) -> Tokenizer {
            do {
                let loaded = try HuggingFaceTokenizerLoader.load(directory: URL(fileURLWithPath: root + "/Tests/Fixtures/" + dir))
                return try Tokenizer(spec: loaded.spec)
            } catch { fatalError("cannot load the tokenizer fixture \(dir): \(error)") }
        }
        // Byte-level BPE maps every byte sequence to tokens and back, so text must survive encode → decode;
        // SentencePiece may map text to <unk>, so only its other properties are checked.
        return [("smollm2", model.tokenizer, true), ("bytelevel", hf("tokenizer/bytelevel"), true),
                ("spm", hf("tokenizer/spm"), false)]
    }()

    // MARK: - Targets

    static func api(_ bytes: [UInt8]) {
        ServerFuzzing.apiRequest(bytes, model: model, contextLength: 2048, modelName: model.name)
    }

    static func gguf(_ bytes: [UInt8]) {
        let file = bytes.withUnsafeBytes { MappedFile(copying: $0, name: "fuzz.gguf") }
        guard let g = try? GGUFFile(mapped: file) else { return }
        for info in g.tensors {
            precondition(info.fileOffset >= 0 && info.byteCount >= 0 && info.fileOffset + info.byteCount <= file.size,
                         "tensor '\(info.name)' lies outside the file")
        }
        for key in g.metadataKeys {
            _ = try? g.stringArray(key)
            _ = try? g.intArray(key)
            _ = try? g.doubleArray(key)
            _ = g.int(key); _ = g.double(key); _ = g.string(key); _ = g.bool(key)
        }
        guard let spec = try? TokenizerSpec(gguf: g), let tok = try? Tokenizer(spec: spec) else { return }
        let ids = tok.encode("Hello, world! <|im_start|> 12345 \u{00e9}\u{4e2d}", parseSpecial: true)
        precondition(ids.allSatisfy { $0 >= 0 && Int($0) < tok.vocabularySize }, "token id out of the vocabulary")
        _ = tok.decode(ids)
    }

    static func safetensors(_ bytes: [UInt8]) {
        let file = bytes.withUnsafeBytes { MappedFile(copying: $0, name: "fuzz.safetensors") }
        guard let st = try? SafetensorsFile(mapped: file) else { return }
        for info in st.tensors.values {
            precondition(info.fileOffset >= 8 && info.byteCount >= 0 && info.fileOffset + info.byteCount <= file.size,
                         "tensor '\(info.name)' lies outside the file")
        }
    }

    /// First byte: which tokenizer (low two bits), whether to parse special tokens (bit 2), and whether the rest is
    /// text (bit 3 clear) or token ids (bit 3 set, little-endian UInt16s modulo the vocabulary).
    static func tokenizer(_ bytes: [UInt8]) {
        guard let mode = bytes.first else { return }
        let which = Int(mode & 3) % tokenizers.count
        let entry = tokenizers[which]
        let tok = entry.tokenizer
        let rest = Array(bytes.dropFirst())
        let ids: [Int32]
        if mode & 8 == 0 {
            let text = String(decoding: rest, as: UTF8.self)
            let parseSpecial = mode & 4 != 0
            ids = tok.encode(text, parseSpecial: parseSpecial)
            precondition(ids.allSatisfy { $0 >= 0 && Int($0) < tok.vocabularySize }, "\(entry.name): token id out of the vocabulary")
            if entry.roundTrips && !parseSpecial {
                let missing = unencodable[which]
                let expected = missing.isEmpty ? text : String(decoding: text.utf8.filter { !missing.contains($0) }, as: UTF8.self)
                precondition(tok.decode(ids) == expected, "\(entry.name): decode(encode(text)) != text")
            }
        } else {
            var v: [Int32] = []
            var i = 0
            while i + 1 < rest.count {
                v.append(Int32((Int(rest[i]) | Int(rest[i + 1]) << 8) % tok.vocabularySize))
                i += 2
            }
            ids = v
        }
        let whole = tok.decode(ids)
        var streaming = StreamingDetokenizer(tokenizer: tok)
        var pieces = ""
        for id in ids { pieces += streaming.append(id) }
        pieces += streaming.finish()
        precondition(pieces == whole, "\(entry.name): streamed text differs from decode(ids)")
    }

    static let messages = [
        ChatMessage(role: "system", content: "You are terse."),
        ChatMessage(role: "user", content: "Hi <|im_start|> {{ x }}"),
        ChatMessage(role: "assistant", content: "Hello."),
        ChatMessage(role: "user", content: "Again?"),
    ]

    static func chatTemplate(_ bytes: [UInt8]) {
        let source = String(decoding: bytes, as: UTF8.self)
        guard let template = try? ChatTemplate(source: source, now: { Date(timeIntervalSince1970: 1_700_000_000) }) else { return }
        _ = try? template.render(messages: messages, addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>")
    }
}
