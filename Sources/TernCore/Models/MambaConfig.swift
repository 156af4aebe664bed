// Hyper-parameters of a Mamba-1 or Mamba-2 state-space model, read from GGUF metadata (llama.cpp's `mamba.ssm.*`
// keys) or from an HF config.json (MambaConfig / Mamba2Config field names), and checked for consistency before
// any tensor is looked at.

import Foundation

public struct MambaConfig: Sendable, Equatable {
    public enum Version: Sendable { case mamba1, mamba2 }

    public var architecture: String
    public var version: Version
    public var embeddingLength: Int
    public var layerCount: Int
    /// d_inner: width of the SSM (x and z each have this many channels).
    public var innerSize: Int
    /// d_state: N, the state length per channel.
    public var stateSize: Int
    /// d_conv: taps of the causal depthwise convolution.
    public var convKernel: Int
    /// Mamba-1 only: rank of the dt projection.
    public var timeStepRank: Int
    /// Mamba-2 only: heads (one scalar A, D, dt per head), head width, and B/C groups shared by heads.
    public var headCount: Int
    public var headDim: Int
    public var groupCount: Int
    public var rmsEpsilon: Float

    /// Channels that go through the convolution: x (Mamba-1), or x|B|C (Mamba-2).
    public var convChannels: Int {
        version == .mamba1 ? innerSize : innerSize + 2 * groupCount * stateSize
    }
    /// Outputs of in_proj: [x, z] (Mamba-1) or [z, xBC, dt] (Mamba-2).
    public var inProjRows: Int {
        version == .mamba1 ? 2 * innerSize : innerSize + convChannels + headCount
    }
    /// Outputs of x_proj (Mamba-1): [dt_raw, B, C].
    public var xProjRows: Int { timeStepRank + 2 * stateSize }
    /// Floats of SSM state per layer: d_inner × d_state in both versions (Mamba-2: heads × head_dim × d_state).
    public var ssmStateSize: Int { innerSize * stateSize }
    /// Floats of convolution state per layer: the last d_conv − 1 inputs of every conv channel.
    public var convStateSize: Int { convChannels * max(0, convKernel - 1) }

    init(gguf g: GGUFFile) throws {
        let arch = g.string("general.architecture") ?? ""
        func req(_ key: String) throws -> Int {
            guard let v = g.int("\(arch).\(key)") else { throw CheckpointError(file: g.path, "metadata lacks \(arch).\(key)") }
            return v
        }
        architecture = arch
        version = arch == "mamba2" ? .mamba2 : .mamba1
        embeddingLength = try req("embedding_length")
        layerCount = try req("block_count")
        innerSize = try req("ssm.inner_size")
        stateSize = try req("ssm.state_size")
        convKernel = try req("ssm.conv_kernel")
        rmsEpsilon = Float(g.double("\(arch).attention.layer_norm_rms_epsilon") ?? 1e-5)
        if g.bool("\(arch).ssm.dt_b_c_rms") == true {
            throw CheckpointError(file: g.path, "\(arch).ssm.dt_b_c_rms (Falcon-Mamba's dt/B/C norms) is not supported")
        }
        if version == .mamba1 {
            timeStepRank = try req("ssm.time_step_rank")
            headCount = 0
            headDim = 0
            groupCount = 0
        } else {
            // llama.cpp stores the head count as the time-step rank of Mamba-2 (one dt per head).
            headCount = try req("ssm.time_step_rank")
            groupCount = g.int("\(arch).ssm.group_count") ?? 1
            timeStepRank = headCount
            headDim = headCount > 0 ? innerSize / headCount : 0
        }
        try validate(file: g.path)
    }

    init(hf: [String: Any], architecture arch: String, path: String) throws {
        let file = path + "/config.json"
        func int(_ keys: String...) -> Int? {
            for k in keys { if let v = (hf[k] as? NSNumber)?.intValue { return v } }
            return nil
        }
        func req(_ keys: String...) throws -> Int {
            for k in keys { if let v = (hf[k] as? NSNumber)?.intValue { return v } }
            throw CheckpointError(file: file, "lacks \(keys.joined(separator: " / "))")
        }
        architecture = arch
        version = arch == "mamba2" ? .mamba2 : .mamba1
        embeddingLength = try req("hidden_size", "d_model")
        layerCount = try req("num_hidden_layers", "n_layer")
        let expand = (hf["expand"] as? NSNumber)?.doubleValue ?? 2
        innerSize = int("intermediate_size", "d_inner") ?? Int(expand * Double(embeddingLength))
        stateSize = int("state_size", "d_state") ?? (version == .mamba1 ? 16 : 128)
        convKernel = int("conv_kernel", "d_conv") ?? 4
        rmsEpsilon = Float((hf["layer_norm_epsilon"] as? NSNumber)?.doubleValue
                           ?? (hf["rms_norm_eps"] as? NSNumber)?.doubleValue ?? 1e-5)
        if version == .mamba1 {
            // "auto" (a string) in some configs means ceil(d_model / 16), as in the reference implementation.
            timeStepRank = int("time_step_rank", "dt_rank") ?? (embeddingLength + 15) / 16
            headCount = 0
            headDim = 0
            groupCount = 0
        } else {
            headDim = int("head_dim", "mamba_d_head") ?? 64
            headCount = int("num_heads") ?? (headDim > 0 ? innerSize / headDim : 0)
            groupCount = int("n_groups", "ngroups") ?? 1
            timeStepRank = headCount
        }
        try validate(file: file)
    }

    private func validate(file: String) throws {
        func fail(_ m: String) -> CheckpointError { CheckpointError(file: file, m) }
        for (name, v) in [("embedding length", embeddingLength), ("layer count", layerCount), ("inner size", innerSize),
                          ("state size", stateSize), ("conv kernel", convKernel)] where v <= 0 || v > 1 << 20 {
            throw fail("\(name) \(v) is out of range")
        }
        switch version {
        case .mamba1:
            guard timeStepRank > 0, timeStepRank <= innerSize else { throw fail("time-step rank \(timeStepRank) is out of range") }
        case .mamba2:
            guard headCount > 0, headDim > 0, headCount * headDim == innerSize else {
                throw fail("\(headCount) heads of \(headDim) do not make the inner size \(innerSize)")
            }
            guard groupCount > 0, headCount % groupCount == 0 else {
                throw fail("\(headCount) heads cannot be split into \(groupCount) groups")
            }
            guard innerSize % groupCount == 0 else { throw fail("inner size \(innerSize) is not divisible by \(groupCount) groups") }
        }
    }
}
