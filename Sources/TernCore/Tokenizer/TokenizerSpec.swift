// The plain description of a tokenizer (vocabulary, merges, special ids, flags) that every loader produces
// (GGUF metadata, HF tokenizer.json), plus the errors raised when such a description is inconsistent.

public struct TokenizerSpec: Sendable {
    public enum Model: Sendable {
        /// GPT-2 style: bytes mapped to printable code points, regex pre-split, merges by rank.
        case byteLevelBPE
        /// SentencePiece style: spaces become "▁", merges by score (or rank), byte fallback to <0xXX>.
        case sentencePiece
    }

    /// GGUF `tokenizer.ggml.token_type` codes.
    public enum TokenType {
        public static let normal: Int32 = 1
        public static let unknown: Int32 = 2
        public static let control: Int32 = 3
        public static let userDefined: Int32 = 4
        public static let unused: Int32 = 5
        public static let byte: Int32 = 6
    }

    public var model: Model
    public var tokens: [String]
    public var scores: [Float]
    public var tokenTypes: [Int32]
    public var merges: [String]
    public var preTokenizer: String
    public var bosID: Int32?
    public var eosID: Int32?
    public var unknownID: Int32?
    public var paddingID: Int32?
    public var addBOS: Bool
    public var addEOS: Bool
    public var addSpacePrefix: Bool
    public var endOfGenerationIDs: [Int32]
    /// Byte-level only: a pre-token that is itself a vocabulary entry is emitted whole, without running merges
    /// (HF `ignore_merges`, set by Llama 3's tokenizer.json). nil means "as llama.cpp does for this
    /// pre-tokenizer": on for "llama-bpe"/"llama3", off otherwise.
    public var ignoreMerges: Bool?

    public init(model: Model, tokens: [String], scores: [Float] = [], tokenTypes: [Int32] = [], merges: [String] = [],
                preTokenizer: String = "default", bosID: Int32? = nil, eosID: Int32? = nil, unknownID: Int32? = nil,
                paddingID: Int32? = nil, addBOS: Bool = false, addEOS: Bool = false, addSpacePrefix: Bool = false,
                endOfGenerationIDs: [Int32] = [], ignoreMerges: Bool? = nil) {
        self.model = model
        self.tokens = tokens
        self.scores = scores
        self.tokenTypes = tokenTypes
        self.merges = merges
        self.preTokenizer = preTokenizer
        self.bosID = bosID
        self.eosID = eosID
        self.unknownID = unknownID
        self.paddingID = paddingID
        self.addBOS = addBOS
        self.addEOS = addEOS
        self.addSpacePrefix = addSpacePrefix
        self.endOfGenerationIDs = endOfGenerationIDs
        self.ignoreMerges = ignoreMerges
    }

    /// Token texts that end a turn in the chat formats we know; checkpoints often list only one of them as eos.
    public static let knownEndOfGenerationTexts: [String] = [
        "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|endoftext|>", "<|end|>", "<|return|>",
        "</s>", "<|end_of_text|>", "<eos>",
    ]

    /// eos plus every control (or, when types are absent, any) token whose text is a known end-of-turn marker.
    /// Loaders use this when the checkpoint gives no explicit list.
    public static func defaultEndOfGenerationIDs(tokens: [String], tokenTypes: [Int32], eosID: Int32?) -> [Int32] {
        var ids: [Int32] = []
        if let eos = eosID { ids.append(eos) }
        let wanted = Set(knownEndOfGenerationTexts)
        for (i, text) in tokens.enumerated() where wanted.contains(text) {
            if !tokenTypes.isEmpty && i < tokenTypes.count
                && tokenTypes[i] != TokenType.control && tokenTypes[i] != TokenType.userDefined { continue }
            let id = Int32(i)
            if !ids.contains(id) { ids.append(id) }
        }
        return ids
    }
}

public enum TokenizerError: Error, CustomStringConvertible {
    case emptyVocabulary
    case lengthMismatch(field: String, count: Int, expected: Int)
    case idOutOfRange(field: String, id: Int32, vocabularySize: Int)
    case malformedMerge(index: Int, merge: String)
    case mergeReferencesUnknownToken(index: Int, merge: String, token: String)
    case unreadableFile(path: String, reason: String)
    case malformedTokenizerJSON(path: String, field: String, reason: String)
    case unsupported(String)

    public var description: String {
        switch self {
        case .emptyVocabulary:
            return "tokenizer: the vocabulary is empty"
        case let .lengthMismatch(field, count, expected):
            return "tokenizer: \(field) has \(count) entries but the vocabulary has \(expected)"
        case let .idOutOfRange(field, id, size):
            return "tokenizer: \(field) = \(id) is outside the vocabulary (size \(size))"
        case let .malformedMerge(index, merge):
            return "tokenizer: merge #\(index) \"\(merge)\" is not of the form \"left right\""
        case let .mergeReferencesUnknownToken(index, merge, token):
            return "tokenizer: merge #\(index) \"\(merge)\" uses \"\(token)\", which is not in the vocabulary"
        case let .unreadableFile(path, reason):
            return "tokenizer: cannot read \(path): \(reason)"
        case let .malformedTokenizerJSON(path, field, reason):
            return "tokenizer: \(path): field \(field): \(reason)"
        case let .unsupported(what):
            return "tokenizer: unsupported: \(what)"
        }
    }
}
