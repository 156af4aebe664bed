// What Wanda pruning needs to know about a model's inputs: for every matrix, the L2 norm of each input
// column over a calibration text (Sun et al., "A Simple and Effective Pruning Approach for LLMs", 2023: a
// weight's importance is |W_ij| · ‖X_j‖₂). The Llama-family forward pass adds each matrix input here when a
// workspace carries an instance; collecting costs nothing otherwise.

import Foundation

public final class ActivationStatistics {
    // Filled by the thread running the forward pass; read after it.
    /// The inputs of a layer, each read by the matrices named in `tensorSuffixes`.
    public enum Input: Int, CaseIterable, Sendable {
        case attention, attentionOutput, feedForward, feedForwardDown

        var tensorSuffixes: [String] {
            switch self {
            case .attention: return ["attn_q.weight", "attn_k.weight", "attn_v.weight"]
            case .attentionOutput: return ["attn_output.weight"]
            case .feedForward: return ["ffn_gate.weight", "ffn_up.weight"]
            case .feedForwardDown: return ["ffn_down.weight"]
            }
        }
    }

    private var sums: [Int: [Double]] = [:]
    public private(set) var rowsSeen = 0

    public init() {}

    private func key(_ layer: Int, _ input: Input) -> Int { layer * Input.allCases.count + input.rawValue }

    /// Adds the squares of `rows` × `columns` inputs of `layer`.
    func add(_ x: UnsafePointer<Float>, rows: Int, columns: Int, layer: Int, input: Input) {
        // Mutated in place in the dictionary: no copy of the sums per call.
        sums[key(layer, input), default: [Double](repeating: 0, count: columns)].withUnsafeMutableBufferPointer { acc in
            precondition(acc.count == columns)
            for r in 0..<rows {
                let row = x + r * columns
                for j in 0..<columns { acc[j] += Double(row[j]) * Double(row[j]) }
            }
        }
        if layer == 0 && input == .attention { rowsSeen += rows }
    }

    /// ‖X_j‖₂ for each input column of the GGUF tensor `name` (blk.N.…), or nil if nothing was seen for it.
    public func columnNorms(tensor name: String) -> [Float]? {
        let parts = name.split(separator: ".", maxSplits: 2)
        guard parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]) else { return nil }
        guard let input = Input.allCases.first(where: { $0.tensorSuffixes.contains(String(parts[2])) }) else { return nil }
        return sums[key(layer, input)]?.map { Float($0.squareRoot()) }
    }
}

/// Runs a checkpoint over a calibration text and returns its input statistics.
public enum Calibration {
    public static func collect(checkpoint: Checkpoint, text: String, maxTokens: Int = 4096, window: Int = 512,
                               threads: Int) throws -> ActivationStatistics {
        let model = try LlamaModel(checkpoint: checkpoint)
        let tokenizer = try Tokenizer(spec: checkpoint.tokenizerSpec)
        var tokens = tokenizer.encode(text, parseSpecial: false)
        guard tokens.count >= 16 else {
            throw CheckpointError(file: checkpoint.path, "the calibration text has \(tokens.count) tokens; Wanda needs at least 16")
        }
        if tokens.count > maxTokens { tokens = Array(tokens[..<maxTokens]) }
        let window = min(window, model.config.contextLength)
        let workspace = LlamaWorkspace(model: model, maxTokens: window, maxContext: window, pool: WorkerPool(threads: threads))
        let stats = ActivationStatistics()
        workspace.activationStatistics = stats
        // Windows start from an empty cache, with BOS first when the tokenizer adds one (as in serving).
        let bos = tokenizer.spec.addBOS ? tokenizer.spec.bosID : nil
        let step = window - (bos == nil ? 0 : 1)
        var start = 0
        while start < tokens.count {
            let end = min(start + step, tokens.count)
            let piece = (bos.map { [$0] } ?? []) + tokens[start..<end]
            _ = try model.forward(tokens: piece, memory: model.makeMemory(capacity: window), workspace: workspace, logitRows: 0..<0)
            start = end
        }
        return stats
    }
}
