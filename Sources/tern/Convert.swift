// `tern convert`: requantizes any checkpoint (GGUF or Hugging Face directory) into a GGUF file, optionally
// pruning the layers' projections into Tern's sparse layouts (docs/SPARSE_FORMATS.md).

import ArgumentParser
import Foundation
import TernCore

struct ConvertCommand: ParsableCommand, EnvironmentReadable {
    static let configuration = CommandConfiguration(commandName: "convert", abstract: "Requantize a checkpoint into a GGUF file.")

    static let environmentOptions: [EnvironmentOption] = [.value("model"), .value("type"), .value("output"), .value("sparsity"),
                                                          .value("sparse-pattern"), .value("prune"), .value("calibration"),
                                                          .value("group-rows"), .value("threads")]

    @Option(parsing: .unconditional, help: .tern("The checkpoint to read: GGUF file or Hugging Face directory.", env: "model", valueName: "path"))
    var model = defaultModelPath
    @Option(parsing: .unconditional, help: .tern("Tensor type to write: \(CheckpointConverter.writableTypes.map(\.description).joined(separator: " ")).",
                                                  env: "type", default: "none, required", valueName: "t"))
    var type: String?
    @Option(parsing: .unconditional, help: .tern("The GGUF file to write.", env: "output", default: "none, required", valueName: "out.gguf"))
    var output: String?
    @Option(parsing: .unconditional, help: .tern("Prune this fraction of each layer projection's weights (0 < S < 1) and store them sparse.",
                                                  env: "sparsity", default: "none: dense", valueName: "S"))
    var sparsity: Double?
    @Option(name: .customLong("sparse-pattern"), parsing: .unconditional,
            help: .tern("Which weights may go: unstructured (any; Q4_0 values), 2:4 (2 of every 4; Q4_0), group (whole 32-column chunks shared by --group-rows rows; Q4_0, Q4_1 or Q8_0).",
                        env: "sparse-pattern", default: "unstructured", valueName: "p"))
    var sparsePattern = "unstructured"
    @Option(parsing: .unconditional, help: .tern("Pruning score: magnitude (|w|) or wanda (|w| times the input column's norm over --calibration).",
                                                  env: "prune", default: "magnitude", valueName: "method"))
    var prune = "magnitude"
    @Option(parsing: .unconditional, help: .tern("Text file the model reads for Wanda's input statistics (its first 4096 tokens).",
                                                  env: "calibration", default: "none", valueName: "file"))
    var calibration: String?
    @Option(name: .customLong("group-rows"), parsing: .unconditional,
            help: .tern("Group sparsity: rows that keep the same chunks (8 feeds the fast kernel; 1 lets each row choose).",
                        env: "group-rows", default: "8", valueName: "n"))
    var groupRows = 8
    @Option(parsing: .unconditional, help: .tern("Threads for the calibration pass.", env: "threads", default: "all cores", valueName: "n"))
    var threads: Int?

    func run() throws {
        guard let typeName = type else { throw UsageError("convert needs --type T") }
        guard let type = GGMLType(name: typeName), CheckpointConverter.writableTypes.contains(type) else {
            throw UsageError("--type \(typeName) is not a type tern can write (\(CheckpointConverter.writableTypes.map(\.description).joined(separator: ", ")))")
        }
        guard let output else { throw UsageError("convert needs --output OUT.gguf") }
        let input = model
        guard (input as NSString).standardizingPath != (output as NSString).standardizingPath else {
            throw UsageError("--output must differ from the input")
        }
        var sparse: SparsityOptions?
        var statistics: ActivationStatistics?
        if let sparsity {
            let pattern: SparsityOptions.Pattern = try oneOf(sparsePattern, "sparse-pattern")
            let method: SparsityOptions.Method = try oneOf(prune, "prune")
            let options = SparsityOptions(sparsity: sparsity, pattern: pattern, method: method, groupRows: groupRows)
            if let why = options.problem(valueType: type) { throw UsageError(why) }
            if method == .wanda && calibration == nil { throw UsageError("--prune wanda needs --calibration TEXT_FILE") }
            if method == .magnitude && calibration != nil { throw UsageError("--calibration is for --prune wanda") }
            sparse = options
        } else if calibration != nil || prune != "magnitude" || sparsePattern != "unstructured" || groupRows != 8 {
            throw UsageError("--sparse-pattern, --prune, --calibration and --group-rows need --sparsity S")
        }
        if let threads { _ = try atLeast(threads, 1, "threads") }
        let ck = try Checkpoint.open(path: input)
        if let calibration {
            guard let text = try? String(contentsOfFile: calibration, encoding: .utf8) else {
                throw UsageError("cannot read --calibration \(calibration) as UTF-8 text")
            }
            let t0 = Date()
            statistics = try Calibration.collect(checkpoint: ck, text: text,
                                                 threads: threads ?? ProcessInfo.processInfo.activeProcessorCount)
            info(String(format: "calibration: %d tokens of %@ in %.1f s", statistics!.rowsSeen,
                        (calibration as NSString).lastPathComponent, Date().timeIntervalSince(t0)))
        }
        let start = Date()
        // The converter streams tensors into the output file and reports nothing, so the file's growth is shown.
        let progress = ProgressLine.onTerminal()
        let name = (output as NSString).lastPathComponent
        progress?.tick { p in
            let written = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? NSNumber)?.intValue ?? 0
            return String(format: "writing %@: %@, %.1f s", name, mebibytes(written), p.elapsed)
        }
        let summary: CheckpointConverter.Summary
        do {
            defer { progress?.finish() }
            summary = try CheckpointConverter.convert(ck, to: type, output: output, sparsity: sparse, statistics: statistics)
        }
        for f in summary.fallbacks { info("  \(f) (rows do not split into \(type) blocks)") }
        info(String(format: "wrote %@: %d tensors, %.1f MiB of tensor data, in %.1f s", output, summary.tensors,
                    Double(summary.bytes) / 1_048_576, Date().timeIntervalSince(start)))
    }
}
