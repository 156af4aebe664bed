// Builds a MambaModel from a checkpoint in either naming: llama.cpp's GGUF (`blk.N.ssm_*`, A stored as −exp(A_log),
// conv squeezed) or HF safetensors (`backbone.layers.N.mixer.*`, A_log, conv [channels, 1, d_conv]), which
// Checkpoint leaves under their HF names. Every tensor's shape and type is checked, and errors name the file and
// the tensor.

import CKernels
import Foundation

/// ModelLoader's entry point for the architectures "mamba" and "mamba2".
func loadMamba(_ checkpoint: Checkpoint) throws -> LanguageModel {
    try MambaModel(checkpoint: checkpoint)
}

/// Immutable floats owned by the model (norm weights, conv taps, A, D, biases), read by every worker thread.
final class ParameterVector: @unchecked Sendable {
    // Written once in init, read-only afterwards.
    let base: UnsafeMutablePointer<Float>
    let count: Int

    init(_ values: [Float]) {
        count = values.count
        base = .allocate(capacity: max(1, count))
        base.initialize(repeating: 0, count: max(1, count))
        values.withUnsafeBufferPointer { base.update(from: $0.baseAddress!, count: count) }
    }

    deinit { base.deallocate() }
}

extension MambaModel {
    struct Layer: Sendable {
        let norm: ParameterVector
        let inProj: WeightTensor
        let inBias: ParameterVector?
        /// Taps per conv channel, [channel][d_conv], oldest input first.
        let convWeight: ParameterVector
        let convBias: ParameterVector
        /// Mamba-1 only.
        let xProj: WeightTensor?
        let dtProj: WeightTensor?
        /// Mamba-1: per channel; Mamba-2: per head.
        let dtBias: ParameterVector
        /// A = −exp(A_log). Mamba-1: [channel][state]; Mamba-2: per head.
        let a: ParameterVector
        let d: ParameterVector
        /// Mamba-2 only: weight of the gated, grouped RMSNorm.
        let ssmNorm: ParameterVector?
        let outProj: WeightTensor
        let outBias: ParameterVector?
    }

    /// Tensors of one checkpoint, looked up by GGUF name first and HF name second.
    struct TensorResolver {
        let checkpoint: Checkpoint
        var path: String { checkpoint.path }

        func find(_ names: [String]) -> WeightTensor? {
            for n in names { if let t = checkpoint.tensors[n] { return t } }
            return nil
        }

        func require(_ names: [String]) throws -> WeightTensor {
            guard let t = find(names) else {
                throw CheckpointError(file: path, "missing tensor '\(names.joined(separator: "' or '"))'")
            }
            guard t.type.isComputable else {
                throw CheckpointError(file: path, "tensor '\(t.name)' has unsupported tensor type \(t.type)")
            }
            guard t.sparse == nil else {
                throw CheckpointError(file: path, "tensor '\(t.name)' is sparse; Tern's Mamba reads dense tensors only")
            }
            return t
        }

        /// `rowsReadLater`: an embedding, whose rows are looked up (see WeightTensor.packedForCompute).
        func matrix(_ names: [String], columns: Int, rows: Int, rowsReadLater: Bool = false) throws -> WeightTensor {
            let t = try require(names)
            guard t.shape.count == 2, t.columns == columns, t.rows == rows else {
                throw CheckpointError(file: path, "tensor '\(t.name)' has shape \(t.shape), expected [\(columns), \(rows)]")
            }
            guard t.type.isFloat || columns % 32 == 0 else {
                throw CheckpointError(file: path, "tensor '\(t.name)': quantized rows of \(columns) values are not a multiple of 32")
            }
            return t.packedForCompute(rowsReadLater: rowsReadLater)
        }

        /// A tensor of `shape` (GGML order); size-1 dimensions are ignored, so [d_conv, 1, C] matches [d_conv, C].
        func values(_ names: [String], shape: [Int]) throws -> (tensor: WeightTensor, values: [Float]) {
            let t = try require(names)
            guard t.shape.filter({ $0 != 1 }) == shape.filter({ $0 != 1 }) else {
                throw CheckpointError(file: path, "tensor '\(t.name)' has shape \(t.shape), expected \(shape)")
            }
            guard t.elementCount % t.type.blockElements == 0, t.type.byteCount(elements: t.elementCount) == t.byteCount else {
                throw CheckpointError(file: path, "tensor '\(t.name)' has \(t.byteCount) bytes for \(t.elementCount) values of \(t.type)")
            }
            var out = [Float](repeating: 0, count: t.elementCount)
            out.withUnsafeMutableBufferPointer { buf in
                tern_dequantize_row(Int32(t.type.rawValue), t.data, buf.baseAddress!, Int64(t.elementCount))
            }
            return (t, out)
        }

        func vector(_ names: [String], shape: [Int]) throws -> ParameterVector {
            ParameterVector(try values(names, shape: shape).values)
        }

        func optionalVector(_ names: [String], count: Int) throws -> ParameterVector? {
            find(names) == nil ? nil : try vector(names, shape: [count])
        }
    }

    static func loadLayers(_ r: TensorResolver, config c: MambaConfig) throws -> [Layer] {
        let dim = c.embeddingLength, inner = c.innerSize, ds = c.stateSize, k = c.convKernel
        let channels = c.convChannels
        var layers: [Layer] = []
        for i in 0..<c.layerCount {
            let g = "blk.\(i).", h = "backbone.layers.\(i).", hm = "backbone.layers.\(i).mixer."
            let norm = try r.vector([g + "attn_norm.weight", h + "norm.weight"], shape: [dim])
            let inProj = try r.matrix([g + "ssm_in.weight", hm + "in_proj.weight"], columns: dim, rows: c.inProjRows)
            let inBias = try r.optionalVector([g + "ssm_in.bias", hm + "in_proj.bias"], count: c.inProjRows)
            let convWeight = try r.vector([g + "ssm_conv1d.weight", hm + "conv1d.weight"], shape: [k, channels])
            let convBias = try r.optionalVector([g + "ssm_conv1d.bias", hm + "conv1d.bias"], count: channels)
                ?? ParameterVector([Float](repeating: 0, count: channels))
            let outProj = try r.matrix([g + "ssm_out.weight", hm + "out_proj.weight"], columns: inner, rows: dim)
            let outBias = try r.optionalVector([g + "ssm_out.bias", hm + "out_proj.bias"], count: dim)
            let perA = c.version == .mamba1 ? [ds, inner] : [c.headCount]
            let perHeadOrChannel = c.version == .mamba1 ? inner : c.headCount
            let (aTensor, aValues) = try r.values([g + "ssm_a", hm + "A_log"], shape: perA)
            // GGUF already holds A = −exp(A_log); HF holds A_log.
            let a = aTensor.name.hasSuffix("A_log") ? aValues.map { -expf($0) } : aValues
            let d = try r.vector([g + "ssm_d", hm + "D"], shape: [perHeadOrChannel])
            let dtBias = try r.vector([g + "ssm_dt.bias", hm + "dt_proj.bias", hm + "dt_bias"], shape: [perHeadOrChannel])
            var xProj: WeightTensor?, dtProj: WeightTensor?, ssmNorm: ParameterVector?
            switch c.version {
            case .mamba1:
                xProj = try r.matrix([g + "ssm_x.weight", hm + "x_proj.weight"], columns: inner, rows: c.xProjRows)
                dtProj = try r.matrix([g + "ssm_dt.weight", hm + "dt_proj.weight"], columns: c.timeStepRank, rows: inner)
            case .mamba2:
                // llama.cpp reshapes the norm weight to [d_inner / groups, groups]; HF keeps it flat.
                let t = try r.require([g + "ssm_norm.weight", hm + "norm.weight"])
                let expected = t.shape.count == 2 ? [inner / c.groupCount, c.groupCount] : [inner]
                ssmNorm = try r.vector([t.name], shape: expected)
            }
            layers.append(Layer(norm: norm, inProj: inProj, inBias: inBias, convWeight: convWeight, convBias: convBias,
                                xProj: xProj, dtProj: dtProj, dtBias: dtBias, a: ParameterVector(a), d: d,
                                ssmNorm: ssmNorm, outProj: outProj, outBias: outBias))
        }
        return layers
    }
}
