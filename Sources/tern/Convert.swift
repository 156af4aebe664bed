// `tern convert`: requantizes any checkpoint (GGUF or Hugging Face directory) into a GGUF file.

import ArgumentParser
import Foundation
import TernCore

struct ConvertCommand: ParsableCommand, EnvironmentReadable {
    static let configuration = CommandConfiguration(commandName: "convert", abstract: "Requantize a checkpoint into a GGUF file.")

    static let environmentOptions: [EnvironmentOption] = [.value("model"), .value("type"), .value("output")]

    @Option(parsing: .unconditional, help: .tern("The checkpoint to read: GGUF file or Hugging Face directory.", env: "model", valueName: "path"))
    var model = defaultModelPath
    @Option(parsing: .unconditional, help: .tern("Tensor type to write: \(CheckpointConverter.writableTypes.map(\.description).joined(separator: " ")).",
                                                  env: "type", default: "none, required", valueName: "t"))
    var type: String?
    @Option(parsing: .unconditional, help: .tern("The GGUF file to write.", env: "output", default: "none, required", valueName: "out.gguf"))
    var output: String?

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
        let ck = try Checkpoint.open(path: input)
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
            summary = try CheckpointConverter.convert(ck, to: type, output: output)
        }
        for f in summary.fallbacks { info("  \(f) (rows do not split into \(type) blocks)") }
        info(String(format: "wrote %@: %d tensors, %.1f MiB of tensor data, in %.1f s", output, summary.tensors,
                    Double(summary.bytes) / 1_048_576, Date().timeIntervalSince(start)))
    }
}
