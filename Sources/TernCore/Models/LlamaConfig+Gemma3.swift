// Gemma 3's options on the Llama-family block, read from GGUF metadata (as llama.cpp's loader reads them) or from
// an HF Gemma3ForCausalLM config.json (as transformers' modeling_gemma3 uses them). Where the two conventions
// differ, the comments say which one a value follows.

import Foundation

extension LlamaConfig {
    /// Gemma 3 repeats five local layers and one global layer; llama.cpp hard-codes this period for GGUF files.
    static let gemma3DefaultPattern = 6
    /// llama.cpp and transformers both fix the local layers' RoPE base at 10 000, without scaling.
    static let gemma3LocalRopeBase: Float = 10000

    mutating func applyGemma3Common() {
        activation = .geluTanh
        embeddingScale = Float(embeddingLength).squareRoot()
        hasQKNorm = true
        hasPostNorms = true
        localRopeBase = Self.gemma3LocalRopeBase
    }

    /// Layer i is global iff (i + 1) is a multiple of `period`.
    static func gemma3Pattern(layers: Int, period: Int) -> [Bool] {
        (0..<layers).map { period <= 0 || ($0 + 1) % period != 0 }
    }

    mutating func applyGemma3(gguf g: GGUFFile) throws {
        applyGemma3Common()
        let arch = architecture
        // llama.cpp's converter stores RMSNorm weights as 1 + w already: no offset here.
        normWeightOffset = 0
        // llama.cpp: 1/√(n_embd/n_head) for the 27B model (62 layers), 1/√head_dim otherwise; GGUF has no key for
        // HF's query_pre_attn_scalar.
        let scalar = layerCount == 62 ? Float(embeddingLength / headCount) : Float(headDim)
        queryScale = 1 / scalar.squareRoot()
        if let cap = g.double("\(arch).final_logit_softcapping"), cap > 0 { finalLogitSoftcap = Float(cap) }
        guard let window = g.int("\(arch).attention.sliding_window"), window > 0 else {
            // Without a window every layer is global (llama.cpp: LLAMA_SWA_TYPE_NONE).
            localLayers = Array(repeating: false, count: layerCount)
            return
        }
        slidingWindow = window
        if let flags = try? g.intArray("\(arch).attention.sliding_window_pattern"), flags.count == layerCount {
            localLayers = flags.map { $0 != 0 }
        } else if let period = g.int("\(arch).attention.sliding_window_pattern") {
            localLayers = Self.gemma3Pattern(layers: layerCount, period: period)
        } else {
            localLayers = Self.gemma3Pattern(layers: layerCount, period: Self.gemma3DefaultPattern)
        }
    }

    mutating func applyGemma3(hf: [String: Any], path: String) throws {
        let file = path + "/config.json"
        func fail(_ m: String) -> CheckpointError { CheckpointError(file: file, m) }
        func number(_ k: String) -> Double? { (hf[k] as? NSNumber)?.doubleValue }
        if hf["text_config"] != nil {
            throw fail("multimodal Gemma 3 (text_config) is not supported: use a text-only Gemma3ForCausalLM checkpoint")
        }
        if let act = (hf["hidden_activation"] as? String) ?? (hf["hidden_act"] as? String),
           !["gelu_pytorch_tanh", "gelu_tanh", "gelu_new"].contains(act) {
            throw fail("hidden_activation '\(act)' is not supported for Gemma 3 (Tern runs gelu_pytorch_tanh)")
        }
        if let cap = number("attn_logit_softcapping"), cap > 0 {
            throw fail("attn_logit_softcapping is not supported")
        }
        if (hf["use_bidirectional_attention"] as? Bool) == true {
            throw fail("bidirectional attention (an embedding model) is not supported")
        }
        applyGemma3Common()
        // transformers' Gemma3RMSNorm multiplies by (1 + w) and the checkpoint stores w.
        normWeightOffset = 1
        if hf["head_dim"] == nil { headDim = 256 }
        ropeDimensions = headDim
        if hf["rms_norm_eps"] == nil { rmsEpsilon = 1e-6 }
        if hf["rope_theta"] == nil { ropeBase = 1_000_000 }
        localRopeBase = number("rope_local_base_freq").map { Float($0) } ?? Self.gemma3LocalRopeBase
        let scalar = number("query_pre_attn_scalar") ?? Double(headDim)
        guard scalar > 0 else { throw fail("query_pre_attn_scalar must be positive") }
        queryScale = Float(1 / scalar.squareRoot())
        if let cap = number("final_logit_softcapping"), cap > 0 { finalLogitSoftcap = Float(cap) }
        let window = (hf["sliding_window"] as? NSNumber)?.intValue ?? 4096
        if let types = hf["layer_types"] as? [String] {
            guard types.count == layerCount else { throw fail("layer_types has \(types.count) entries for \(layerCount) layers") }
            localLayers = try types.map { t in
                switch t {
                case "sliding_attention": return true
                case "full_attention": return false
                default: throw fail("unknown layer type '\(t)' in layer_types")
                }
            }
        } else {
            let period = (hf["sliding_window_pattern"] as? NSNumber)?.intValue ?? Self.gemma3DefaultPattern
            localLayers = Self.gemma3Pattern(layers: layerCount, period: period)
        }
        if localLayers.contains(true) {
            guard window > 0 else { throw fail("sliding_window must be positive") }
            slidingWindow = window
        }
    }

    /// Whether layer `l` reads only the last `slidingWindow` positions.
    public func isLocal(_ l: Int) -> Bool { l < localLayers.count && localLayers[l] }
}
