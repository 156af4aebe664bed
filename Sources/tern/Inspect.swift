// `tern inspect`: architecture, hyper-parameters, tokenizer, metadata and the tensor table of a checkpoint.

import ArgumentParser
import Foundation
import TernCore

struct InspectCommand: ParsableCommand, EnvironmentReadable {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Describe a checkpoint: architecture, metadata, tensors.")

    static let environmentOptions: [EnvironmentOption] = [.value("model")]

    @Argument(help: "GGUF file or Hugging Face directory.")
    var path: String?
    @Option(parsing: .unconditional, help: .tern("The checkpoint, when PATH is not given.", env: "model", default: "none", valueName: "path"))
    var model: String?

    func run() throws {
        guard let path = path ?? model else { throw UsageError("inspect needs a checkpoint PATH") }
        let ck = try Checkpoint.open(path: path)
        print("file: \(path)")
        print("format: \(ck.format.rawValue)\(ck.gguf.map { " v\($0.version)" } ?? "")")
        print("architecture: \(ck.architecture)")
        if let c = ck.compression { print("compression: \(c.summary), decompressed at load") }
        if let cfg = try? LlamaConfig(checkpoint: ck) {
            print("hyper-parameters:")
            print("  layers: \(cfg.layerCount)")
            print("  embedding: \(cfg.embeddingLength)")
            print("  feed-forward: \(cfg.feedForwardLength)")
            print("  heads: \(cfg.headCount) (KV heads: \(cfg.kvHeadCount), head dim: \(cfg.headDim))")
            print("  vocabulary: \(cfg.vocabularySize)")
            print("  context: \(cfg.contextLength)")
            print("  rope: base \(cfg.ropeBase), \(cfg.ropeDimensions) dims, \(cfg.ropeStyle.rawValue)\(cfg.ropeFrequencyFactors != nil ? ", frequency factors" : "")")
            print("  rms epsilon: \(cfg.rmsEpsilon)")
        }
        let spec = ck.tokenizerSpec
        print("tokenizer: \(spec.model == .byteLevelBPE ? "byte-level BPE" : "SentencePiece BPE") (pre: \(spec.preTokenizer)), \(spec.tokens.count) tokens, \(spec.merges.count) merges, bos \(spec.bosID.map(String.init) ?? "none"), eos \(spec.eosID.map(String.init) ?? "none"), add bos: \(spec.addBOS)")
        print("chat template: \(ck.chatTemplate == nil ? "none" : "\(ck.chatTemplate!.count) characters")")
        if let g = ck.gguf {
            print("metadata:")
            for key in g.metadataKeys where !key.hasPrefix("tokenizer.ggml.") || !(g.metadata[key]?.isArray ?? false) {
                if key == "tokenizer.chat_template" { continue }
                var v = g.metadata[key]!.description
                if v.count > 120 { v = String(v.prefix(117)) + "..." }
                print("  \(key) = \(v.replacingOccurrences(of: "\n", with: "\\n"))")
            }
        }
        print("tensors: \(ck.tensors.count)")
        let rows = ck.tensors.values.sorted { a, b in
            tensorOrder(a.name) < tensorOrder(b.name)
        }
        var total = 0, sparseCount = 0, stored = 0, weights = 0
        for t in rows {
            total += t.byteCount
            let shape = "[" + t.shape.map(String.init).joined(separator: ", ") + "]"
            // Density: the share of weights that have a stored value; bytes per weight include indices and scales.
            let density = t.sparse?.density ?? 1
            if let sp = t.sparse { sparseCount += 1; stored += sp.storedWeights; weights += sp.rows * sp.columns }
            let layout = t.sparse.map { "\($0.layout.name) \($0.valueType)" } ?? t.type.description
            print("  " + t.name.padding(toLength: max(32, t.name.count), withPad: " ", startingAt: 0) + " "
                  + layout.padding(toLength: 18, withPad: " ", startingAt: 0) + " "
                  + shape.padding(toLength: 16, withPad: " ", startingAt: 0)
                  + String(format: " %6.1f%% %6.3f B/w ", density * 100, Double(t.byteCount) / Double(max(1, t.elementCount)))
                  + "\(t.byteCount) bytes")
        }
        if sparseCount > 0 {
            print(String(format: "sparse: %d matrices, %.1f%% of their weights stored", sparseCount, 100 * Double(stored) / Double(weights)))
        }
        print(String(format: "total: %.1f MiB", Double(total) / 1_048_576))
    }
}

/// Sorts tensors as a reader expects: embeddings, blocks in numeric order, then output.
func tensorOrder(_ name: String) -> (Int, Int, String) {
    if name.hasPrefix("blk."), let n = Int(name.split(separator: ".")[1]) { return (1, n, name) }
    if name.hasPrefix("token_embd") || name.hasPrefix("rope") { return (0, 0, name) }
    return (2, 0, name)
}
