// `tern convert`: rewrites any checkpoint Tern reads as a GGUF file of another weight type. Matrices get the
// target type; 1-D tensors (norms, biases, rope factors) stay F32 as llama.cpp keeps them; a matrix whose rows
// do not split into the target's blocks falls back to Q8_0 (or F16). HF checkpoints gain GGUF metadata and the
// Q/K row permutation that GGUF's interleaved RoPE expects.

import CKernels
import Foundation

public enum CheckpointConverter {
    public static let writableTypes: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q4_K, .q5_K, .q6_K]

    /// llama.cpp's `general.file_type` for a file mostly of `type`.
    static func fileType(_ type: GGMLType) -> UInt32 {
        switch type {
        case .f32: return 0
        case .f16: return 1
        case .q4_0: return 2
        case .q4_1: return 3
        case .q8_0: return 7
        case .q5_0: return 8
        case .q5_1: return 9
        case .q4_K: return 15
        case .q5_K: return 17
        case .q6_K: return 18
        case .bf16: return 32
        default: return 0
        }
    }

    public struct Summary: Sendable {
        public var tensors: Int
        public var bytes: Int
        public var fallbacks: [String]
    }

    /// `sparsity`: prune the layers' projections and store them in Tern's sparse layouts (values of `target`);
    /// `statistics`: input column norms for Wanda (required when the method is wanda).
    public static func convert(_ ck: Checkpoint, to target: GGMLType, output: String, sparsity: SparsityOptions? = nil,
                               statistics: ActivationStatistics? = nil) throws -> Summary {
        guard writableTypes.contains(target) else {
            throw CheckpointError(file: output, "cannot write tensor type \(target) (writable: \(writableTypes.map(\.description).joined(separator: ", ")))")
        }
        if let sp = sparsity {
            if let why = sp.problem(valueType: target) { throw CheckpointError(file: output, why) }
            if sp.method == .wanda && statistics == nil { throw CheckpointError(file: output, "Wanda pruning needs calibration statistics") }
        }
        var writer = GGUFWriter()
        var permuteHeads: [String: Int] = [:]
        switch ck.format {
        case .gguf:
            let g = ck.gguf!
            for k in g.metadataKeys where k != "general.alignment" { writer.set(k, g.metadata[k]!) }
            writer.alignment = g.alignment
        case .safetensors:
            let cfg = try LlamaConfig(checkpoint: ck)
            // Gemma's GGUF conventions (norm weights stored as 1 + w, its window and query-scale keys) are not
            // written yet; a GGUF made by llama.cpp's converter converts GGUF to GGUF.
            guard cfg.architecture != "gemma3" else {
                throw CheckpointError(file: ck.path, "converting a Gemma 3 safetensors checkpoint to GGUF is not supported (convert a Gemma 3 GGUF instead)")
            }
            try addMetadata(&writer, config: cfg, checkpoint: ck)
            if cfg.architecture == "llama" {
                // HF rotate-half rows → GGUF's interleaved pairs.
                for l in 0..<cfg.layerCount {
                    permuteHeads["blk.\(l).attn_q.weight"] = cfg.headCount
                    permuteHeads["blk.\(l).attn_k.weight"] = cfg.kvHeadCount
                }
            }
        }
        writer.set("general.file_type", .uint32(fileType(target)))
        if let sp = sparsity {
            writer.set("tern.sparsity.pattern", .string(sp.pattern.rawValue))
            writer.set("tern.sparsity.target", .float32(Float(sp.sparsity)))
            writer.set("tern.sparsity.method", .string(sp.method.rawValue))
            if sp.pattern == .group { writer.set("tern.sparsity.group_rows", .uint32(UInt32(sp.groupRows))) }
        }

        var fallbacks: [String] = []
        var total = 0
        let names = ck.tensors.keys.sorted { tensorOrder($0) < tensorOrder($1) }
        for name in names {
            let t = ck.tensors[name]!
            guard t.type.isComputable else {
                throw CheckpointError(file: ck.path, "tensor '\(name)' has unsupported tensor type \(t.type)")
            }
            if let sp = sparsity, SparsityOptions.prunes(tensor: name), t.shape.count == 2, t.columns % 32 == 0 {
                let blob = try sparseBlob(t, options: sp, valueType: target, heads: permuteHeads[name],
                                          norms: statistics?.columnNorms(tensor: name), output: output)
                total += blob.count
                writer.tensors.append(GGUFWriter.Tensor(name: name, type: .i8, shape: [blob.count], data: blob))
                continue
            }
            var type = target
            if t.shape.count < 2 || t.shape.dropFirst().allSatisfy({ $0 == 1 }) {
                type = .f32
            } else if t.columns % type.blockElements != 0 {
                type = t.columns % 32 == 0 ? .q8_0 : .f16
                fallbacks.append("\(name) → \(type)")
            }
            let outType = type
            let columns = t.columns, rows = t.rows
            let rowBytes = outType.byteCount(elements: columns)!
            let heads = permuteHeads[name]
            total += rowBytes * rows
            writer.tensors.append(GGUFWriter.Tensor(name: name, type: outType, shape: t.shape, byteCount: rowBytes * rows) { out in
                var src = [Float](repeating: 0, count: columns)
                let outBase = out.baseAddress!
                for r in 0..<rows {
                    src.withUnsafeMutableBufferPointer { buf in
                        t.dequantizeRow(sourceRow(r, rows: rows, heads: heads), into: buf.baseAddress!)
                    }
                    let rc = src.withUnsafeBufferPointer { buf in
                        tern_quantize_row(Int32(outType.rawValue), buf.baseAddress!, outBase + r * rowBytes, Int64(columns))
                    }
                    guard rc == 0 else { throw CheckpointError(file: output, "cannot quantize '\(name)' to \(outType)") }
                }
            })
        }
        try writer.write(to: output)
        return Summary(tensors: names.count, bytes: total, fallbacks: fallbacks)
    }

    /// A pruned matrix as a sparse blob. Held in memory whole: the file's header needs its size, which an
    /// unstructured matrix only knows once encoded.
    static func sparseBlob(_ t: WeightTensor, options sp: SparsityOptions, valueType: GGMLType, heads: Int?,
                           norms: [Float]?, output: String) throws -> Data {
        if sp.method == .wanda && norms == nil {
            throw CheckpointError(file: output, "no calibration statistics reached '\(t.name)'")
        }
        let rows = t.rows, columns = t.columns
        var writer = SparseMatrixWriter(layout: sp.pattern.layout, valueType: valueType, rows: rows, columns: columns,
                                        keptChunks: sp.pattern == .group ? sp.keptChunks(columns: columns) : 0)
        let step = sp.pattern == .group ? sp.groupRows : 1
        var block = [Float](repeating: 0, count: step * columns)
        for r0 in stride(from: 0, to: rows, by: step) {
            let n = min(step, rows - r0)
            try block.withUnsafeMutableBufferPointer { b in
                for i in 0..<n { t.dequantizeRow(sourceRow(r0 + i, rows: rows, heads: heads), into: b.baseAddress! + i * columns) }
                let keep = Pruner.keep(b.baseAddress!, rows: n, columns: columns, options: sp, norms: norms)
                try keep.withUnsafeBufferPointer { k in
                    for i in 0..<n where !writer.append(b.baseAddress! + i * columns, keep: k.baseAddress! + i * columns) {
                        throw CheckpointError(file: output, "'\(t.name)' row \(r0 + i) does not fit the \(sp.pattern.rawValue) layout")
                    }
                }
            }
        }
        return writer.blob()
    }

    /// Which HF row lands at GGUF row `r` when Q/K rows are permuted for interleaved RoPE: within each head,
    /// HF keeps the two rotated halves apart (i and i + d/2); GGUF interleaves them (2i and 2i + 1).
    static func sourceRow(_ r: Int, rows: Int, heads: Int?) -> Int {
        guard let heads, heads > 0, rows % heads == 0 else { return r }
        let hd = rows / heads
        let half = hd / 2
        let head = r / hd, within = r % hd
        return head * hd + (within % 2) * half + within / 2
    }

    static func tensorOrder(_ name: String) -> (Int, Int, String) {
        if name.hasPrefix("blk."), let n = Int(name.split(separator: ".")[1]) { return (1, n, name) }
        if name.hasPrefix("token_embd") || name.hasPrefix("rope") { return (0, 0, name) }
        return (2, 0, name)
    }

    private static func addMetadata(_ w: inout GGUFWriter, config c: LlamaConfig, checkpoint ck: Checkpoint) throws {
        let a = c.architecture
        w.set("general.architecture", .string(a))
        w.set("general.name", .string((ck.path as NSString).lastPathComponent))
        w.set("\(a).block_count", .uint32(UInt32(c.layerCount)))
        w.set("\(a).context_length", .uint32(UInt32(c.contextLength)))
        w.set("\(a).embedding_length", .uint32(UInt32(c.embeddingLength)))
        w.set("\(a).feed_forward_length", .uint32(UInt32(c.feedForwardLength)))
        w.set("\(a).attention.head_count", .uint32(UInt32(c.headCount)))
        w.set("\(a).attention.head_count_kv", .uint32(UInt32(c.kvHeadCount)))
        w.set("\(a).attention.key_length", .uint32(UInt32(c.headDim)))
        w.set("\(a).attention.value_length", .uint32(UInt32(c.headDim)))
        w.set("\(a).rope.freq_base", .float32(c.ropeBase))
        w.set("\(a).rope.dimension_count", .uint32(UInt32(c.ropeDimensions)))
        w.set("\(a).attention.layer_norm_rms_epsilon", .float32(c.rmsEpsilon))
        w.set("\(a).vocab_size", .uint32(UInt32(c.vocabularySize)))
        if c.ropePositionScale != 1 {
            w.set("\(a).rope.scaling.type", .string("linear"))
            w.set("\(a).rope.scaling.factor", .float32(c.ropePositionScale))
        }
        let s = ck.tokenizerSpec
        w.set("tokenizer.ggml.model", .string(s.model == .byteLevelBPE ? "gpt2" : "llama"))
        w.set("tokenizer.ggml.pre", .string(s.preTokenizer))
        w.set("tokenizer.ggml.tokens", .array(s.tokens.map { .string($0) }))
        if !s.scores.isEmpty { w.set("tokenizer.ggml.scores", .array(s.scores.map { .float32($0) })) }
        if !s.tokenTypes.isEmpty { w.set("tokenizer.ggml.token_type", .array(s.tokenTypes.map { .int32($0) })) }
        if !s.merges.isEmpty { w.set("tokenizer.ggml.merges", .array(s.merges.map { .string($0) })) }
        if let v = s.bosID { w.set("tokenizer.ggml.bos_token_id", .uint32(UInt32(v))) }
        if let v = s.eosID { w.set("tokenizer.ggml.eos_token_id", .uint32(UInt32(v))) }
        if let v = s.unknownID { w.set("tokenizer.ggml.unknown_token_id", .uint32(UInt32(v))) }
        if let v = s.paddingID { w.set("tokenizer.ggml.padding_token_id", .uint32(UInt32(v))) }
        w.set("tokenizer.ggml.add_bos_token", .bool(s.addBOS))
        w.set("tokenizer.ggml.add_eos_token", .bool(s.addEOS))
        w.set("tokenizer.ggml.add_space_prefix", .bool(s.addSpacePrefix))
        if let t = ck.chatTemplate { w.set("tokenizer.chat_template", .string(t)) }
        if let f = c.ropeFrequencyFactors {
            let data = f.withUnsafeBufferPointer { Data(buffer: $0) }
            w.tensors.append(GGUFWriter.Tensor(name: "rope_freqs.weight", type: .f32, shape: [f.count], data: data))
        }
    }
}
