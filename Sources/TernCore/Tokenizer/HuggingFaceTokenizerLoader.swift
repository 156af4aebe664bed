// Builds a TokenizerSpec from a Hugging Face checkpoint directory: tokenizer.json (BPE model, pre-tokenizer,
// normalizer, decoder, added tokens) and, when present, tokenizer_config.json (bos/eos tokens, add_bos_token,
// chat_template). JSONDecoder is used rather than JSONSerialization because the latter drops a leading U+FEFF
// from string values on Linux, which would corrupt vocabulary entries.

import Foundation

public enum HuggingFaceTokenizerLoader {
    public static func load(directory: URL) throws -> (spec: TokenizerSpec, chatTemplate: String?) {
        let path = directory.appendingPathComponent("tokenizer.json")
        var file: HFTokenizerFile
        do {
            let data = try Data(contentsOf: path)
            file = try JSONDecoder().decode(HFTokenizerFile.self, from: data)
            guard let pairs = HFVocabScanner.vocabPairs(data) else {
                throw TokenizerError.malformedTokenizerJSON(path: path.path, field: "model.vocab", reason: "not an object of ids")
            }
            file.model.vocabPairs = pairs
        } catch let e as TokenizerError {
            throw e
        } catch let e as DecodingError {
            throw TokenizerError.malformedTokenizerJSON(path: path.path, field: Self.describe(e), reason: "\(e)")
        } catch {
            throw TokenizerError.unreadableFile(path: path.path, reason: "\(error)")
        }
        var config: HFTokenizerConfig?
        let configPath = directory.appendingPathComponent("tokenizer_config.json")
        if FileManager.default.fileExists(atPath: configPath.path) {
            do {
                config = try JSONDecoder().decode(HFTokenizerConfig.self, from: Data(contentsOf: configPath))
            } catch {
                throw TokenizerError.malformedTokenizerJSON(path: configPath.path, field: "(file)", reason: "\(error)")
            }
        }
        return (try makeSpec(file, config: config, path: path.path), config?.chatTemplate)
    }

    static func makeSpec(_ file: HFTokenizerFile, config: HFTokenizerConfig?, path: String) throws -> TokenizerSpec {
        let m = file.model
        guard m.type == nil || m.type == "BPE" else {
            throw TokenizerError.unsupported("tokenizer.json model type \(m.type ?? "?") in \(path) (only BPE)")
        }
        // Vocabulary: model vocab plus added tokens, indexed by id; holes become unused placeholders.
        var maxID = -1
        let vocabPairs = m.vocabPairs ?? m.vocab.map { ($0.key, $0.value) }
        for (_, id) in vocabPairs { maxID = max(maxID, id) }
        for t in file.addedTokens ?? [] { maxID = max(maxID, t.id) }
        guard maxID >= 0 else { throw TokenizerError.emptyVocabulary }
        var tokens = [String?](repeating: nil, count: maxID + 1)
        for (t, id) in vocabPairs {
            guard id >= 0 else { throw TokenizerError.malformedTokenizerJSON(path: path, field: "model.vocab", reason: "negative id") }
            tokens[id] = t
        }
        var types = [Int32](repeating: TokenizerSpec.TokenType.normal, count: maxID + 1)
        for t in file.addedTokens ?? [] {
            guard t.id >= 0 else { throw TokenizerError.malformedTokenizerJSON(path: path, field: "added_tokens", reason: "negative id") }
            tokens[t.id] = t.content
            types[t.id] = t.special ? TokenizerSpec.TokenType.control : TokenizerSpec.TokenType.userDefined
        }
        var filled: [String] = []
        filled.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() {
            if let t { filled.append(t) } else {
                filled.append("<|tern-unused-\(i)|>")
                types[i] = TokenizerSpec.TokenType.unused
            }
        }
        let vocab = Dictionary(filled.enumerated().map { ($1, Int32($0)) }, uniquingKeysWith: { a, _ in a })

        let nodes = [file.preTokenizer, file.decoder, file.normalizer].compactMap { $0 }.flatMap { $0.flattened() }
        let byteLevel = nodes.contains { $0.type == "ByteLevel" }
        let byteFallback = m.byteFallback ?? false
        if !byteLevel && byteFallback {
            for (i, t) in filled.enumerated() where types[i] == TokenizerSpec.TokenType.normal
                && Tokenizer.parseByteToken(t) != nil {
                types[i] = TokenizerSpec.TokenType.byte
            }
        }
        var unknownID: Int32?
        if let unk = m.unkToken, let id = vocab[unk] {
            unknownID = id
            if types[Int(id)] == TokenizerSpec.TokenType.normal { types[Int(id)] = TokenizerSpec.TokenType.unknown }
        }

        // Pre-tokenizer name as in GGUF, from the split rules present.
        var pre = "gpt2"
        let preNodes = file.preTokenizer?.flattened() ?? []
        for n in preNodes {
            if n.type == "Split", let rx = n.pattern?.regex {
                if rx.contains("\\p{N}{1,3}") { pre = "llama-bpe" } else if rx.contains("(?i:") { pre = "qwen2" }
            }
            if n.type == "Digits", n.individualDigits == true, pre == "gpt2" { pre = "smollm" }
        }

        // SentencePiece space handling: Metaspace's prepend scheme, or a Prepend("▁") normalizer.
        var addSpacePrefix = false
        for n in nodes where n.type == "Metaspace" {
            if let scheme = n.prependScheme { addSpacePrefix = scheme != "never" } else if n.addPrefixSpace == true {
                addSpacePrefix = true
            }
        }
        for n in file.normalizer?.flattened() ?? [] where n.type == "Prepend" && n.prepend == "\u{2581}" {
            addSpacePrefix = true
        }

        func id(_ t: HFTokenRef?) -> Int32? { t.flatMap { vocab[$0.content] } }
        var bos = id(config?.bosToken)
        let eos = id(config?.eosToken)
        var addBOS = config?.addBOSToken ?? false
        // Llama 3 style: no add_bos_token, but the post-processor template starts with a special token.
        if config?.addBOSToken == nil, let first = file.postProcessor?.single?.first?.specialToken?.id,
           let fid = vocab[first] {
            addBOS = true
            if bos == nil { bos = fid }
        }
        let unk = id(config?.unkToken) ?? unknownID
        let pad = id(config?.padToken)
        return TokenizerSpec(
            model: byteLevel ? .byteLevelBPE : .sentencePiece,
            tokens: filled, scores: [], tokenTypes: types,
            merges: m.merges.map { $0.joined },
            preTokenizer: byteLevel ? pre : "default",
            bosID: bos, eosID: eos, unknownID: unk, paddingID: pad,
            addBOS: addBOS, addEOS: config?.addEOSToken ?? false, addSpacePrefix: byteLevel ? false : addSpacePrefix,
            endOfGenerationIDs: TokenizerSpec.defaultEndOfGenerationIDs(tokens: filled, tokenTypes: types, eosID: eos),
            ignoreMerges: byteLevel ? (m.ignoreMerges ?? false) : nil)
    }

    private static func describe(_ e: DecodingError) -> String {
        switch e {
        case .keyNotFound(let k, let c): return (c.codingPath + [k]).map(\.stringValue).joined(separator: ".")
        case .typeMismatch(_, let c), .valueNotFound(_, let c), .dataCorrupted(let c):
            return c.codingPath.map(\.stringValue).joined(separator: ".")
        @unknown default: return "?"
        }
    }
}

// MARK: - tokenizer.json shapes (only the fields we use)

struct HFTokenizerFile: Decodable {
    var model: HFModel
    var addedTokens: [HFAddedToken]?
    var normalizer: HFNode?
    var preTokenizer: HFNode?
    var decoder: HFNode?
    var postProcessor: HFPostProcessor?

    enum CodingKeys: String, CodingKey {
        case model, normalizer, decoder
        case addedTokens = "added_tokens", preTokenizer = "pre_tokenizer", postProcessor = "post_processor"
    }
}

struct HFModel: Decodable {
    var type: String?
    var vocab: [String: Int]   // may have lost canonically equivalent keys; vocabPairs is the faithful copy
    var vocabPairs: [(String, Int)]?
    var merges: [HFMerge]
    var unkToken: String?
    var byteFallback: Bool?
    var ignoreMerges: Bool?

    enum CodingKeys: String, CodingKey {
        case type, vocab, merges
        case unkToken = "unk_token", byteFallback = "byte_fallback", ignoreMerges = "ignore_merges"
    }

    init(from d: Decoder) throws {
        let c = try d.container(keyedBy: CodingKeys.self)
        type = try c.decodeIfPresent(String.self, forKey: .type)
        vocab = try c.decode([String: Int].self, forKey: .vocab)
        merges = try c.decodeIfPresent([HFMerge].self, forKey: .merges) ?? []
        unkToken = try c.decodeIfPresent(String.self, forKey: .unkToken)
        byteFallback = try c.decodeIfPresent(Bool.self, forKey: .byteFallback)
        ignoreMerges = try c.decodeIfPresent(Bool.self, forKey: .ignoreMerges)
    }
}

/// A merge is "left right" in older files and ["left", "right"] in newer ones.
struct HFMerge: Decodable {
    var joined: String
    init(from d: Decoder) throws {
        let c = try d.singleValueContainer()
        if let s = try? c.decode(String.self) {
            joined = s
        } else {
            let pair = try c.decode([String].self)
            guard pair.count == 2 else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "merge pair with \(pair.count) parts")
            }
            joined = pair[0] + " " + pair[1]
        }
    }
}

struct HFAddedToken: Decodable {
    var id: Int
    var content: String
    var special: Bool
}

/// A normalizer / pre-tokenizer / decoder node; Sequence nodes nest.
struct HFNode: Decodable {
    var type: String?
    var children: [HFNode]
    var pattern: HFPattern?
    var individualDigits: Bool?
    var prependScheme: String?
    var addPrefixSpace: Bool?
    var prepend: String?

    enum CodingKeys: String, CodingKey {
        case type, pattern, prepend
        case pretokenizers, normalizers, decoders
        case individualDigits = "individual_digits", prependScheme = "prepend_scheme", addPrefixSpace = "add_prefix_space"
    }

    init(from d: Decoder) throws {
        let c = try d.container(keyedBy: CodingKeys.self)
        type = try c.decodeIfPresent(String.self, forKey: .type)
        children = (try c.decodeIfPresent([HFNode].self, forKey: .pretokenizers) ?? [])
            + (try c.decodeIfPresent([HFNode].self, forKey: .normalizers) ?? [])
            + (try c.decodeIfPresent([HFNode].self, forKey: .decoders) ?? [])
        pattern = try? c.decodeIfPresent(HFPattern.self, forKey: .pattern)
        individualDigits = try? c.decodeIfPresent(Bool.self, forKey: .individualDigits)
        prependScheme = try? c.decodeIfPresent(String.self, forKey: .prependScheme)
        addPrefixSpace = try? c.decodeIfPresent(Bool.self, forKey: .addPrefixSpace)
        prepend = try? c.decodeIfPresent(String.self, forKey: .prepend)
    }

    func flattened() -> [HFNode] { [self] + children.flatMap { $0.flattened() } }
}

struct HFPattern: Decodable {
    var regex: String?
    var string: String?
    enum CodingKeys: String, CodingKey { case regex = "Regex", string = "String" }
}

struct HFPostProcessor: Decodable {
    var single: [HFTemplateItem]?
}

struct HFTemplateItem: Decodable {
    struct Special: Decodable { var id: String }
    var specialToken: Special?
    enum CodingKeys: String, CodingKey { case specialToken = "SpecialToken" }
}

/// A token named in tokenizer_config.json: a plain string or {"content": ...}.
struct HFTokenRef: Decodable {
    var content: String
    private enum K: String, CodingKey { case content }
    init(from d: Decoder) throws {
        if let s = try? d.singleValueContainer().decode(String.self) {
            content = s
        } else {
            content = try d.container(keyedBy: K.self).decode(String.self, forKey: .content)
        }
    }
}

struct HFTokenizerConfig: Decodable {
    var bosToken: HFTokenRef?
    var eosToken: HFTokenRef?
    var unkToken: HFTokenRef?
    var padToken: HFTokenRef?
    var addBOSToken: Bool?
    var addEOSToken: Bool?
    var chatTemplate: String?

    enum CodingKeys: String, CodingKey {
        case bosToken = "bos_token", eosToken = "eos_token", unkToken = "unk_token", padToken = "pad_token"
        case addBOSToken = "add_bos_token", addEOSToken = "add_eos_token", chatTemplate = "chat_template"
    }

    private struct NamedTemplate: Decodable { var name: String; var template: String }

    init(from d: Decoder) throws {
        let c = try d.container(keyedBy: CodingKeys.self)
        // null values and odd shapes are treated as absent rather than failing the whole load.
        bosToken = try? c.decodeIfPresent(HFTokenRef.self, forKey: .bosToken)
        eosToken = try? c.decodeIfPresent(HFTokenRef.self, forKey: .eosToken)
        unkToken = try? c.decodeIfPresent(HFTokenRef.self, forKey: .unkToken)
        padToken = try? c.decodeIfPresent(HFTokenRef.self, forKey: .padToken)
        addBOSToken = try? c.decodeIfPresent(Bool.self, forKey: .addBOSToken)
        addEOSToken = try? c.decodeIfPresent(Bool.self, forKey: .addEOSToken)
        if let s = try? c.decodeIfPresent(String.self, forKey: .chatTemplate) {
            chatTemplate = s
        } else if let list = try? c.decodeIfPresent([NamedTemplate].self, forKey: .chatTemplate) {
            chatTemplate = (list.first { $0.name == "default" } ?? list.first)?.template
        }
    }
}

// MARK: - model.vocab, read without Dictionary<String, _>

/// Reads tokenizer.json's `model.vocab` as (token, id) pairs straight from the bytes. JSONDecoder cannot be used
/// for this object: it keys objects by Swift String, which compares by canonical equivalence, so a vocabulary
/// holding both "é" (U+00E9) and "e\u{301}" (as SentencePiece vocabularies do) would silently lose one entry.
struct HFVocabScanner {
    private let b: [UInt8]
    private var i = 0

    init(_ data: Data) { b = [UInt8](data) }

    /// nil when the file has no model.vocab object or is malformed there.
    static func vocabPairs(_ data: Data) -> [(String, Int)]? {
        var s = HFVocabScanner(data)
        return s.findVocab()
    }

    private mutating func ws() { while i < b.count && (b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09) { i += 1 } }

    private mutating func expect(_ c: UInt8) -> Bool {
        ws()
        guard i < b.count && b[i] == c else { return false }
        i += 1
        return true
    }

    private mutating func findVocab() -> [(String, Int)]? {
        guard expect(0x7B) else { return nil }  // top-level {
        while true {
            ws()
            if i < b.count && b[i] == 0x7D { return nil }
            guard let key = string(), expect(0x3A) else { return nil }
            if key == "model" {
                guard expect(0x7B) else { return nil }
                while true {
                    ws()
                    if i < b.count && b[i] == 0x7D { return nil }
                    guard let k = string(), expect(0x3A) else { return nil }
                    if k == "vocab" { return pairs() }
                    guard skip() else { return nil }
                    ws()
                    if i < b.count && b[i] == 0x2C { i += 1 }
                }
            }
            guard skip() else { return nil }
            ws()
            if i < b.count && b[i] == 0x2C { i += 1 }
        }
    }

    private mutating func pairs() -> [(String, Int)]? {
        guard expect(0x7B) else { return nil }
        var out: [(String, Int)] = []
        while true {
            ws()
            if i < b.count && b[i] == 0x7D { i += 1; return out }
            guard let k = string(), expect(0x3A) else { return nil }
            ws()
            var v = 0
            let start = i
            while i < b.count && b[i] >= 0x30 && b[i] <= 0x39 { v = v * 10 + Int(b[i] - 0x30); i += 1 }
            guard i > start else { return nil }
            out.append((k, v))
            ws()
            if i < b.count && b[i] == 0x2C { i += 1 }
        }
    }

    private mutating func hex4() -> UInt32? {
        guard i + 4 <= b.count else { return nil }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: return nil
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    private mutating func string() -> String? {
        ws()
        guard i < b.count && b[i] == 0x22 else { return nil }
        i += 1
        var out: [UInt8] = []
        while i < b.count {
            let c = b[i]
            i += 1
            if c == 0x22 { return String(decoding: out, as: UTF8.self) }
            if c != 0x5C { out.append(c); continue }
            guard i < b.count else { return nil }
            let e = b[i]
            i += 1
            switch e {
            case 0x6E: out.append(0x0A)
            case 0x74: out.append(0x09)
            case 0x72: out.append(0x0D)
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0C)
            case 0x75:
                guard var u = hex4() else { return nil }
                if u >= 0xD800 && u < 0xDC00, i + 1 < b.count, b[i] == 0x5C, b[i + 1] == 0x75 {
                    i += 2
                    guard let lo = hex4() else { return nil }
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo &- 0xDC00)
                }
                let s = Unicode.Scalar(u) ?? "\u{FFFD}"
                UTF8.encode(s) { out.append($0) }
            default: out.append(e)  // \" \\ \/
            }
        }
        return nil
    }

    /// Skips one JSON value of any kind.
    private mutating func skip() -> Bool {
        ws()
        guard i < b.count else { return false }
        switch b[i] {
        case 0x22: return string() != nil
        case 0x7B, 0x5B:
            var depth = 0
            while i < b.count {
                let c = b[i]
                if c == 0x22 { if string() == nil { return false }; continue }
                i += 1
                if c == 0x7B || c == 0x5B { depth += 1 }
                if c == 0x7D || c == 0x5D { depth -= 1; if depth == 0 { return true } }
            }
            return false
        default:
            while i < b.count && ![0x2C, 0x7D, 0x5D].contains(b[i]) { i += 1 }
            return true
        }
    }
}
