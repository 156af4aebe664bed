// Hyper-parameters of a Llama-family transformer (Llama 1–3, Mistral, SmolLM, Qwen2, Gemma 3), read from GGUF
// metadata or from an HF config.json, plus the RoPE convention the checkpoint's Q/K weights were laid out for.
// Gemma 3 is the same block with options switched on (see GemmaOptions in LlamaConfig+Gemma3.swift), so one
// forward pass serves both families.

import Foundation

public struct LlamaConfig: Sendable {
    public enum RopeStyle: String, Sendable {
        /// GGML "normal" RoPE: rotates adjacent pairs (x[2i], x[2i+1]); GGUF llama files permute Q/K rows for it.
        case interleaved
        /// GPT-NeoX / HF rotate-half: pairs (x[i], x[i + d/2]).
        case neox
    }

    public var architecture: String
    public var layerCount: Int
    public var embeddingLength: Int
    public var feedForwardLength: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var vocabularySize: Int
    public var contextLength: Int
    public var rmsEpsilon: Float
    public var ropeBase: Float
    public var ropeDimensions: Int
    public var ropeStyle: RopeStyle
    /// Linear position scaling (positions are divided by this), 1 when unused.
    public var ropePositionScale: Float
    /// Per-frequency divisors (Llama 3.1 "llama3" scaling), head_dim/2 entries, or nil.
    public var ropeFrequencyFactors: [Float]?

    public enum Activation: String, Sendable {
        /// SwiGLU: silu(gate) ⊙ up (Llama, Qwen2).
        case silu
        /// GeGLU with the tanh approximation of GELU (Gemma).
        case geluTanh
    }
    public var activation: Activation = .silu
    /// Multiplies the token embeddings (Gemma: √dim).
    public var embeddingScale: Float = 1
    /// Multiplies q·k before the softmax: 1/√headDim unless the checkpoint says otherwise (Gemma's
    /// query_pre_attn_scalar).
    public var queryScale: Float = 1
    /// The window of local (sliding-window) layers, nil when every layer attends fully.
    public var slidingWindow: Int?
    /// Per layer: whether it is a local layer (reads only the last `slidingWindow` positions).
    public var localLayers: [Bool] = []
    /// RoPE base of local layers (Gemma 3: 10 000, no scaling); global layers use `ropeBase` and any scaling.
    public var localRopeBase: Float?
    /// Logits become cap·tanh(logits/cap) when set (Gemma 2-style final soft-capping).
    public var finalLogitSoftcap: Float?
    /// Added to every RMSNorm weight at load: HF Gemma stores w for a norm that multiplies by (1 + w), while
    /// llama.cpp's converter already stored 1 + w in the GGUF.
    public var normWeightOffset: Float = 0
    /// Gemma's extra norms: RMSNorm of each query and key head, and norms after attention and after the FFN.
    public var hasQKNorm = false
    public var hasPostNorms = false

    static let supportedArchitectures: Set<String> = ["llama", "mistral", "qwen2", "gemma3"]

    public init(checkpoint c: Checkpoint) throws {
        switch c.format {
        case .gguf: try self.init(gguf: c.gguf!, tensors: c.tensors)
        case .safetensors: try self.init(hf: c.hfConfig() ?? [:], path: c.path, tensors: c.tensors)
        }
    }

    init(gguf g: GGUFFile, tensors: [String: WeightTensor]) throws {
        let arch = g.string("general.architecture") ?? ""
        guard Self.supportedArchitectures.contains(arch) else {
            throw CheckpointError(file: g.path, "unsupported architecture '\(arch)' (Tern runs: \(Self.supportedArchitectures.sorted().joined(separator: ", ")))")
        }
        func req(_ key: String) throws -> Int {
            guard let v = g.int("\(arch).\(key)") else { throw CheckpointError(file: g.path, "metadata lacks \(arch).\(key)") }
            return v
        }
        architecture = arch
        layerCount = try req("block_count")
        embeddingLength = try req("embedding_length")
        feedForwardLength = try req("feed_forward_length")
        headCount = try req("attention.head_count")
        kvHeadCount = g.int("\(arch).attention.head_count_kv") ?? headCount
        contextLength = g.int("\(arch).context_length") ?? 2048
        rmsEpsilon = Float(g.double("\(arch).attention.layer_norm_rms_epsilon") ?? 1e-5)
        ropeBase = Float(g.double("\(arch).rope.freq_base") ?? 10000)
        guard headCount > 0 else { throw CheckpointError(file: g.path, "\(arch).attention.head_count must be positive") }
        headDim = g.int("\(arch).attention.key_length") ?? (embeddingLength / headCount)
        ropeDimensions = g.int("\(arch).rope.dimension_count") ?? headDim
        let vocabFromTokens = (try? g.stringArray("tokenizer.ggml.tokens"))??.count
        vocabularySize = g.int("\(arch).vocab_size") ?? vocabFromTokens ?? tensors["token_embd.weight"]?.rows ?? 0
        // llama.cpp uses NEOX rotation for qwen2 and gemma3 and keeps HF's Q/K layout; llama/mistral files are permuted.
        ropeStyle = arch == "qwen2" || arch == "gemma3" ? .neox : .interleaved
        ropePositionScale = 1
        if g.string("\(arch).rope.scaling.type") == "linear", let f = g.double("\(arch).rope.scaling.factor"), f > 0 {
            ropePositionScale = Float(f)
        }
        if let rf = tensors["rope_freqs.weight"] {
            guard rf.type == .f32, rf.elementCount == headDim / 2 else {
                throw CheckpointError(file: g.path, "rope_freqs.weight should be F32 with \(headDim / 2) values")
            }
            let p = rf.data.assumingMemoryBound(to: Float.self)
            ropeFrequencyFactors = Array(UnsafeBufferPointer(start: p, count: rf.elementCount))
        }
        queryScale = 1 / Float(headDim).squareRoot()
        localLayers = Array(repeating: false, count: max(0, layerCount))
        if arch == "gemma3" { try applyGemma3(gguf: g) }
        try validate(path: g.path)
    }

    init(hf: [String: Any], path: String, tensors: [String: WeightTensor]) throws {
        func int(_ k: String) -> Int? { (hf[k] as? NSNumber)?.intValue }
        func dbl(_ k: String) -> Double? { (hf[k] as? NSNumber)?.doubleValue }
        let modelType = hf["model_type"] as? String ?? ""
        let arch = Checkpoint.ggufArchitecture(hfModelType: modelType, architectures: hf["architectures"] as? [String] ?? [])
        guard Self.supportedArchitectures.contains(arch) else {
            throw CheckpointError(file: path, "unsupported architecture '\(modelType)' in config.json (Tern runs llama, mistral, qwen2, gemma3)")
        }
        func req(_ k: String) throws -> Int {
            guard let v = int(k) else { throw CheckpointError(file: path + "/config.json", "lacks \(k)") }
            return v
        }
        architecture = arch
        layerCount = try req("num_hidden_layers")
        embeddingLength = try req("hidden_size")
        feedForwardLength = try req("intermediate_size")
        headCount = try req("num_attention_heads")
        guard headCount > 0 else { throw CheckpointError(file: path + "/config.json", "num_attention_heads must be positive") }
        kvHeadCount = int("num_key_value_heads") ?? headCount
        headDim = int("head_dim") ?? embeddingLength / headCount
        vocabularySize = int("vocab_size") ?? tensors["token_embd.weight"]?.rows ?? 0
        contextLength = int("max_position_embeddings") ?? 2048
        rmsEpsilon = Float(dbl("rms_norm_eps") ?? 1e-6)
        ropeBase = Float(dbl("rope_theta") ?? 10000)
        ropeDimensions = headDim
        ropeStyle = .neox
        ropePositionScale = 1
        queryScale = 1 / Float(headDim).squareRoot()
        localLayers = Array(repeating: false, count: max(0, layerCount))
        if let scaling = hf["rope_scaling"] as? [String: Any] {
            let kind = (scaling["rope_type"] as? String) ?? (scaling["type"] as? String) ?? ""
            let factor = (scaling["factor"] as? NSNumber)?.doubleValue ?? 1
            switch kind {
            case "linear": ropePositionScale = Float(factor)
            case "llama3":
                let low = (scaling["low_freq_factor"] as? NSNumber)?.doubleValue ?? 1
                let high = (scaling["high_freq_factor"] as? NSNumber)?.doubleValue ?? 4
                let original = (scaling["original_max_position_embeddings"] as? NSNumber)?.doubleValue ?? 8192
                ropeFrequencyFactors = Self.llama3FrequencyFactors(headDim: headDim, base: Double(ropeBase), factor: factor,
                                                                   lowFreqFactor: low, highFreqFactor: high, originalContext: original)
            case "", "default": break
            default:
                throw CheckpointError(file: path + "/config.json", "unsupported rope_scaling type '\(kind)'")
            }
        }
        if arch == "gemma3" { try applyGemma3(hf: hf, path: path) }
        try validate(path: path)
    }

    /// Llama 3.1 frequency scaling expressed, as GGUF does, as a divisor per frequency.
    static func llama3FrequencyFactors(headDim: Int, base: Double, factor: Double, lowFreqFactor: Double,
                                       highFreqFactor: Double, originalContext: Double) -> [Float] {
        let lowWavelen = originalContext / lowFreqFactor
        let highWavelen = originalContext / highFreqFactor
        return (0..<headDim / 2).map { i in
            let freq = 1 / pow(base, Double(2 * i) / Double(headDim))
            let wavelen = 2 * Double.pi / freq
            if wavelen < highWavelen { return 1 }
            if wavelen > lowWavelen { return Float(factor) }
            let smooth = (originalContext / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor)
            // Scaled frequency = (1 - smooth) * freq / factor + smooth * freq; as a divisor of freq:
            return Float(1 / ((1 - smooth) / factor + smooth))
        }
    }

    private func validate(path: String) throws {
        func fail(_ m: String) -> CheckpointError { CheckpointError(file: path, m) }
        guard layerCount > 0 && layerCount <= 1024 else { throw fail("layer count \(layerCount) is out of range") }
        guard embeddingLength > 0 && feedForwardLength > 0 else { throw fail("embedding and feed-forward lengths must be positive") }
        guard kvHeadCount > 0 && headCount % kvHeadCount == 0 else { throw fail("head count \(headCount) is not a multiple of KV head count \(kvHeadCount)") }
        guard headDim > 0 && headDim % 2 == 0 && headDim <= 1024 else { throw fail("head dimension \(headDim) must be even and positive") }
        guard ropeDimensions > 0 && ropeDimensions <= headDim && ropeDimensions % 2 == 0 else { throw fail("rope dimension count \(ropeDimensions) is invalid") }
        guard vocabularySize > 0 else { throw fail("vocabulary size is unknown") }
        guard rmsEpsilon.isFinite && rmsEpsilon > 0 && ropeBase.isFinite && ropeBase > 0 else { throw fail("rms epsilon and rope base must be positive") }
        guard queryScale.isFinite && queryScale > 0 else { throw fail("the query scale must be positive") }
        guard localLayers.count == layerCount else { throw fail("the layer pattern names \(localLayers.count) layers, the model has \(layerCount)") }
        if localLayers.contains(true) {
            guard let w = slidingWindow, w > 0 else { throw fail("local layers need a positive sliding window") }
            guard let b = localRopeBase, b.isFinite && b > 0 else { throw fail("the local RoPE base must be positive") }
        }
        if let c = finalLogitSoftcap { guard c.isFinite && c > 0 else { throw fail("final logit soft-capping must be positive") } }
    }
}
