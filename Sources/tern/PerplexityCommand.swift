// `tern perplexity`: perplexity of a text file as llama.cpp's llama-perplexity computes it (non-overlapping
// windows, the second half of each scored). stdout: the running values `[i]x,` on one line, then `ppl: X` last.
// With --kv-policy the text goes through in chunks with eviction between them (Perplexity.swift).

import ArgumentParser
import Foundation
import TernCore

struct PerplexityCommand: ParsableCommand, EnvironmentReadable {
    static let configuration = CommandConfiguration(commandName: "perplexity", abstract: "Perplexity of a text file; the last line is `ppl: X`.")

    static let environmentOptions: [EnvironmentOption] = [
        .value("model"), .value("file"), .value("context"), .value("chunks"), .value("threads"),
    ] + EvictionOptions.environmentOptions

    @Option(parsing: .unconditional, help: .tern("GGUF file or Hugging Face directory.", env: "model", valueName: "path"))
    var model = defaultModelPath
    @Option(parsing: .unconditional, help: .tern("The text to score.", env: "file", default: "none, required", valueName: "text-file"))
    var file: String?
    @Option(parsing: .unconditional, help: .tern("Tokens per window.", env: "context", valueName: "n"))
    var context = 512
    @Option(parsing: .unconditional, help: .tern("Windows to score at most.", env: "chunks", default: "all", valueName: "n"))
    var chunks: Int?
    @Option(parsing: .unconditional, help: .tern("Compute threads.", env: "threads", default: "the number of cores", valueName: "n"))
    var threads: Int?
    @OptionGroup var eviction: EvictionOptions

    func run() throws {
        guard let file else { throw UsageError("perplexity needs --file TEXT_FILE") }
        guard let data = FileManager.default.contents(atPath: file) else { throw UsageError("\(file): cannot read the file") }
        let text = String(decoding: data, as: UTF8.self)
        let (loaded, _) = try loadModel(model)
        let context = try atLeast(self.context, 4, "context")
        let chunks = try self.chunks.map { try atLeast($0, 1, "chunks") }
        let eviction = try self.eviction.settings()
        let progress = ProgressLine.onTerminal()
        // The window count only serves the progress line, so the text is tokenized twice only on a terminal.
        let windows = progress.map { _ in
            let count = loaded.tokenizer.encode(text, parseSpecial: false).count + 1
            return min(count / context, chunks ?? Int.max)
        }
        defer { progress?.finish() }
        var line = ""
        let result = try Perplexity.evaluate(loaded: loaded, text: text, context: context, maxWindows: chunks,
                                             threads: try threadCount(threads), eviction: eviction) { i, ppl in
            line += String(format: "[%d]%.4f,", i, ppl)
            if let progress, let windows {
                let eta = progress.elapsed / Double(i) * Double(max(windows - i, 0))
                progress.update(String(format: "perplexity: window %d/%d, ppl %.4f, %.0f s, about %.0f s left",
                                       i, windows, ppl, progress.elapsed, eta))
            } else {
                info(String(format: "[%d] %.4f", i, ppl))
            }
        }
        progress?.finish()
        print(line)
        info(String(format: "%d tokens scored in %.2f s", result.tokensScored, result.seconds))
        print(String(format: "ppl: %.4f", result.perplexity))
    }
}
