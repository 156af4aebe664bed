// A checkpoint opened from disk, whatever its format: a GGUF file, or a Hugging Face directory
// (config.json, tokenizer.json, model.safetensors or shards named in model.safetensors.index.json).
// Tensors are exposed under GGUF's names so models see one naming; HF names are mapped at load time.

import Foundation

public final class Checkpoint: Sendable {
    public enum Format: String, Sendable { case gguf, safetensors }

    public let path: String
    public let format: Format
    public let architecture: String
    public let tensors: [String: WeightTensor]
    /// Present for GGUF checkpoints (metadata for the model config, tokenizer and `tern inspect`).
    public let gguf: GGUFFile?
    /// Present for HF directories: config.json as parsed JSON, re-encoded to stay Sendable.
    public let hfConfigJSON: Data?
    public let tokenizerSpec: TokenizerSpec
    public let chatTemplate: String?
    /// For HF directories saved by llm-compressor: the sparsity format decompressed at load (CompressedTensors.swift).
    public let compression: CompressedTensors.Settings?

    /// `backing`: how the weights are held (see MappedFile); a server reading them for hours wants `.privateCopy`.
    public static func open(path: String, backing: MappedFile.Backing = .mapped) throws -> Checkpoint {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw CheckpointError(file: path, "no such file or directory")
        }
        if isDir.boolValue { return try Checkpoint(huggingFaceDirectory: path, backing: backing) }
        if path.hasSuffix(".safetensors") || path.hasSuffix(".json") {
            return try Checkpoint(huggingFaceDirectory: (path as NSString).deletingLastPathComponent, backing: backing)
        }
        return try Checkpoint(ggufPath: path, backing: backing)
    }

    private init(ggufPath: String, backing: MappedFile.Backing) throws {
        let g = try GGUFFile(path: ggufPath, backing: backing)
        self.path = ggufPath
        self.format = .gguf
        self.gguf = g
        self.hfConfigJSON = nil
        self.compression = nil
        guard let arch = g.string("general.architecture") else {
            throw CheckpointError(file: ggufPath, "metadata lacks general.architecture")
        }
        self.architecture = arch
        var t: [String: WeightTensor] = [:]
        for info in g.tensors {
            let data = g.file.base + info.fileOffset
            // Tern's sparse matrices are I8 blobs under the dense tensor's name (docs/SPARSE_FORMATS.md).
            if info.type == .i8, info.shape.count == 1, SparseMatrix.looksLikeBlob(data, byteCount: info.byteCount) {
                let sparse = try SparseMatrix(blob: data, byteCount: info.byteCount, file: ggufPath, name: info.name)
                t[info.name] = WeightTensor(name: info.name, sparse: sparse, data: data, owner: g.file)
                continue
            }
            t[info.name] = WeightTensor(name: info.name, type: info.type, shape: info.shape,
                                        data: data, byteCount: info.byteCount, owner: g.file)
        }
        self.tensors = t
        self.tokenizerSpec = try TokenizerSpec(gguf: g)
        self.chatTemplate = g.string("tokenizer.chat_template")
        g.releaseHeaderPages()
    }

    private init(huggingFaceDirectory dir: String, backing: MappedFile.Backing) throws {
        let dirURL = URL(fileURLWithPath: dir)
        self.path = dir
        self.format = .safetensors
        self.gguf = nil
        let configURL = dirURL.appendingPathComponent("config.json")
        guard let configData = try? Data(contentsOf: configURL) else {
            throw CheckpointError(file: configURL.path, "cannot read config.json (a safetensors checkpoint is a directory with config.json, tokenizer.json and model.safetensors)")
        }
        guard let config = (try? JSONSerialization.jsonObject(with: configData)) as? [String: Any] else {
            throw CheckpointError(file: configURL.path, "not a JSON object")
        }
        self.hfConfigJSON = configData
        let archs = config["architectures"] as? [String] ?? []
        let modelType = config["model_type"] as? String ?? ""
        let architecture = Self.ggufArchitecture(hfModelType: modelType, architectures: archs)
        self.architecture = architecture

        // Shards: model.safetensors.index.json names a file per tensor; otherwise one model.safetensors.
        var files: [String] = []
        let indexURL = dirURL.appendingPathComponent("model.safetensors.index.json")
        if let indexData = try? Data(contentsOf: indexURL) {
            guard let index = (try? JSONSerialization.jsonObject(with: indexData)) as? [String: Any],
                  let map = index["weight_map"] as? [String: String] else {
                throw CheckpointError(file: indexURL.path, "lacks a weight_map object")
            }
            files = Array(Set(map.values)).sorted()
            for f in files where f.contains("/") || f.contains("..") {
                throw CheckpointError(file: indexURL.path, "shard name '\(f)' must be a plain file name")
            }
        } else {
            files = ["model.safetensors"]
        }
        var stored: [String: CompressedTensors.Stored] = [:]
        for f in files {
            let st = try SafetensorsFile(path: dirURL.appendingPathComponent(f).path, backing: backing)
            for (name, info) in st.tensors { stored[name] = CompressedTensors.Stored(info: info, file: st) }
        }
        var tensors: [String: WeightTensor] = [:]
        let compression = try CompressedTensors.Settings(config: config, configPath: configURL.path)
        self.compression = compression
        if let compression {
            // Consumes the compressed groups from `stored`; the rest (norms, embeddings) loads below as usual.
            for (name, t) in try CompressedTensors.decompress(&stored, settings: compression) {
                let ggufName = Self.ggufTensorName(hfName: name, architecture: architecture) ?? name
                tensors[ggufName] = WeightTensor(name: ggufName, type: t.type, shape: t.shape, data: t.data,
                                                 byteCount: t.byteCount, owner: t.owner)
            }
        }
        for (name, s) in stored {
            let ggufName = Self.ggufTensorName(hfName: name, architecture: architecture) ?? name
            tensors[ggufName] = try Self.weightTensor(s.info, name: ggufName, file: s.file)
        }
        self.tensors = tensors
        let loaded = try HuggingFaceTokenizerLoader.load(directory: dirURL)
        self.tokenizerSpec = loaded.spec
        self.chatTemplate = loaded.chatTemplate
    }

    private static func weightTensor(_ info: SafetensorsTensorInfo, name: String, file: SafetensorsFile) throws -> WeightTensor {
        let shape = info.shape.isEmpty ? [1] : Array(info.shape.reversed())
        let elements = shape.reduce(1, *)
        let src = file.file.base + info.fileOffset
        switch info.dtype {
        case "F32": return WeightTensor(name: name, type: .f32, shape: shape, data: src, byteCount: info.byteCount, owner: file.file)
        case "F16": return WeightTensor(name: name, type: .f16, shape: shape, data: src, byteCount: info.byteCount, owner: file.file)
        case "BF16": return WeightTensor(name: name, type: .bf16, shape: shape, data: src, byteCount: info.byteCount, owner: file.file)
        case "F64":
            // Rare in checkpoints; converted once to F32 so the kernels need no F64 path.
            let buf = OwnedBuffer(size: elements * 4)
            let out = buf.pointer.assumingMemoryBound(to: Float.self)
            for i in 0..<elements { out[i] = Float(src.loadUnaligned(fromByteOffset: i * 8, as: Double.self)) }
            return WeightTensor(name: name, type: .f32, shape: shape, data: UnsafeRawPointer(buf.pointer), byteCount: elements * 4, owner: buf)
        default:
            throw CheckpointError(file: file.path, "tensor '\(info.name)' has dtype \(info.dtype), which Tern cannot use as a weight")
        }
    }

    static func ggufArchitecture(hfModelType: String, architectures: [String]) -> String {
        switch hfModelType {
        case "llama": return "llama"
        case "mistral": return "llama"
        case "qwen2": return "qwen2"
        case "gemma3_text": return "gemma3"
        case "gemma3" where architectures == ["Gemma3ForCausalLM"]: return "gemma3"
        default: return hfModelType.isEmpty ? (architectures.first ?? "unknown") : hfModelType
        }
    }

    /// HF Llama-family tensor names → GGUF names. Gemma 3 names its norms differently: its
    /// post_attention_layernorm follows attention (GGUF post_attention_norm), and pre_feedforward_layernorm is the
    /// norm Llama calls post_attention_layernorm (GGUF ffn_norm).
    static func ggufTensorName(hfName: String, architecture: String = "llama") -> String? {
        switch hfName {
        case "model.embed_tokens.weight": return "token_embd.weight"
        case "model.norm.weight": return "output_norm.weight"
        case "lm_head.weight": return "output.weight"
        default: break
        }
        let prefix = "model.layers."
        guard hfName.hasPrefix(prefix) else { return nil }
        let rest = hfName.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return nil }
        let suffix = String(rest[rest.index(after: dot)...])
        if architecture == "gemma3", let g = gemma3Names[suffix] { return "blk.\(layer).\(g)" }
        let map: [String: String] = [
            "input_layernorm.weight": "attn_norm.weight",
            "post_attention_layernorm.weight": "ffn_norm.weight",
            "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
            "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
            "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
            "self_attn.o_proj.weight": "attn_output.weight",
            "mlp.gate_proj.weight": "ffn_gate.weight",
            "mlp.up_proj.weight": "ffn_up.weight",
            "mlp.down_proj.weight": "ffn_down.weight",
        ]
        guard let g = map[suffix] else { return nil }
        return "blk.\(layer).\(g)"
    }

    private static let gemma3Names: [String: String] = [
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
    ]

    /// config.json as a dictionary (HF checkpoints only).
    public func hfConfig() -> [String: Any]? {
        guard let d = hfConfigJSON else { return nil }
        return (try? JSONSerialization.jsonObject(with: d)) as? [String: Any]
    }
}
