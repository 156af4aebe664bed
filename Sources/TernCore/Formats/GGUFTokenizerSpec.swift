// Maps GGUF's tokenizer.ggml.* metadata onto a TokenizerSpec.

extension TokenizerSpec {
    public init(gguf g: GGUFFile) throws {
        let modelName = g.string("tokenizer.ggml.model") ?? ""
        let model: TokenizerSpec.Model
        switch modelName {
        case "gpt2": model = .byteLevelBPE
        case "llama": model = .sentencePiece
        case "": throw CheckpointError(file: g.path, "metadata lacks tokenizer.ggml.model (no tokenizer in this file)")
        default: throw CheckpointError(file: g.path, "unsupported tokenizer model '\(modelName)' (Tern reads 'gpt2' and 'llama')")
        }
        guard let tokens = try g.stringArray("tokenizer.ggml.tokens"), !tokens.isEmpty else {
            throw CheckpointError(file: g.path, "metadata lacks tokenizer.ggml.tokens")
        }
        let scores = try g.doubleArray("tokenizer.ggml.scores")?.map { Float($0) } ?? []
        let types = try g.intArray("tokenizer.ggml.token_type")?.map { Int32(truncatingIfNeeded: $0) } ?? []
        let merges = try g.stringArray("tokenizer.ggml.merges") ?? []
        guard scores.isEmpty || scores.count == tokens.count else {
            throw CheckpointError(file: g.path, "tokenizer.ggml.scores has \(scores.count) entries for \(tokens.count) tokens")
        }
        guard types.isEmpty || types.count == tokens.count else {
            throw CheckpointError(file: g.path, "tokenizer.ggml.token_type has \(types.count) entries for \(tokens.count) tokens")
        }
        func id(_ key: String) throws -> Int32? {
            guard let v = g.int(key) else { return nil }
            guard v >= 0 && v < tokens.count else { throw CheckpointError(file: g.path, "\(key) = \(v) is outside the vocabulary (\(tokens.count) tokens)") }
            return Int32(v)
        }
        let bos = try id("tokenizer.ggml.bos_token_id")
        let eos = try id("tokenizer.ggml.eos_token_id")
        var eog: [Int32] = []
        if let eos { eog.append(eos) }
        if let eot = try id("tokenizer.ggml.eot_token_id") { eog.append(eot) }
        if let eom = try id("tokenizer.ggml.eom_token_id") { eog.append(eom) }
        // Chat models end turns with a control token that the metadata does not always name as EOS.
        for name in ["<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>", "<|end|>", "</s>"] {
            if let i = tokens.firstIndex(of: name), types.isEmpty || types[i] == 3 || types[i] == 4 {
                if !eog.contains(Int32(i)) { eog.append(Int32(i)) }
            }
        }
        self.init(
            model: model, tokens: tokens, scores: scores, tokenTypes: types, merges: merges,
            preTokenizer: g.string("tokenizer.ggml.pre") ?? "default",
            bosID: bos, eosID: eos,
            unknownID: try id("tokenizer.ggml.unknown_token_id"),
            paddingID: try id("tokenizer.ggml.padding_token_id"),
            addBOS: g.bool("tokenizer.ggml.add_bos_token") ?? (model == .sentencePiece),
            addEOS: g.bool("tokenizer.ggml.add_eos_token") ?? false,
            addSpacePrefix: g.bool("tokenizer.ggml.add_space_prefix") ?? (model == .sentencePiece),
            endOfGenerationIDs: eog)
    }
}
