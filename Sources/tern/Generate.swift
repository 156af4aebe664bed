// `tern generate`: one completion of a prompt (or a chat message) with the sampling settings of the API;
// the text streams to stdout, the timings go to stderr.

import ArgumentParser
import Foundation
import TernCore

struct GenerateCommand: ParsableCommand, EnvironmentReadable {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Generate text from a prompt.")

    static let environmentOptions: [EnvironmentOption] = [
        .value("model"), .value("prompt"), .value("max-tokens"), .value("temperature"), .value("top-k"), .value("top-p"),
        .value("min-p"), .value("seed"), .value("repeat-penalty"), .value("presence-penalty"), .value("frequency-penalty"),
        .value("stop"), .value("system"), .value("ctx-size"), .value("threads"), .flag("chat"), .flag("ignore-eos"),
        .value("chat-template"),
    ] + SpeculationOptions.environmentOptions

    @Option(parsing: .unconditional, help: .tern("GGUF file or Hugging Face directory.", env: "model", valueName: "path"))
    var model = defaultModelPath
    @Option(parsing: .unconditional, help: .tern("The prompt.", env: "prompt", default: "the argument, required", valueName: "text"))
    var prompt: String?
    @Argument(help: "The prompt, when --prompt is not given.")
    var promptArgument: String?
    @Option(parsing: .unconditional, help: .tern("Tokens to generate at most.", env: "max-tokens", valueName: "n"))
    var maxTokens = 128
    @Option(parsing: .unconditional, help: .tern("Sampling temperature; 0 is greedy.", env: "temperature", valueName: "t"))
    var temperature: Float = 0.8
    @Option(parsing: .unconditional, help: .tern("Keep the K most likely tokens; 0 keeps all.", env: "top-k", valueName: "k"))
    var topK = 40
    @Option(parsing: .unconditional, help: .tern("Nucleus sampling mass, in (0, 1].", env: "top-p", valueName: "p"))
    var topP: Float = 0.95
    @Option(parsing: .unconditional, help: .tern("Drop tokens below P × the top probability.", env: "min-p", valueName: "p"))
    var minP: Float = 0.05
    @Option(parsing: .unconditional, help: .tern("Random seed.", env: "seed", default: "random", valueName: "s"))
    var seed: String?
    @Option(parsing: .unconditional, help: .tern("Repetition penalty; 1 is none.", env: "repeat-penalty", valueName: "r"))
    var repeatPenalty: Float = 1
    @Option(parsing: .unconditional, help: .tern("Presence penalty.", env: "presence-penalty", valueName: "p"))
    var presencePenalty: Float = 0
    @Option(parsing: .unconditional, help: .tern("Frequency penalty.", env: "frequency-penalty", valueName: "f"))
    var frequencyPenalty: Float = 0
    @Option(parsing: .unconditional, help: .tern("Stop before this text.", env: "stop", default: "none", valueName: "text"))
    var stop: String?
    @Flag(help: .tern("Render the prompt as a user message with the checkpoint's chat template.", env: "chat", default: "off"))
    var chat = false
    @Option(parsing: .unconditional, help: .tern("System message (with --chat).", env: "system", default: "none", valueName: "text"))
    var system: String?
    @Option(parsing: .unconditional, help: .tern(
        "Chat template for --chat instead of the checkpoint's: a Jinja file, or a built-in name (chatml, gemma, llama3).",
        env: "chat-template", default: "the checkpoint's", valueName: "file|name"))
    var chatTemplate: String?
    @Option(parsing: .unconditional, help: .tern("Longest sequence, prompt and output.", env: "ctx-size",
                                                  default: "min(trained context, 4096)", valueName: "n"))
    var ctxSize: Int?
    @Option(parsing: .unconditional, help: .tern("Compute threads.", env: "threads", default: "the number of cores", valueName: "n"))
    var threads: Int?
    @Flag(help: .tern("Keep generating after the end-of-sequence token; --ignore-eos=false turns it off.",
                      env: "ignore-eos", default: "off"))
    var ignoreEos = false

    @OptionGroup var speculation: SpeculationOptions

    func run() throws {
        // The argument is always from the command line, --prompt may be from TERN_PROMPT: the argument wins.
        guard let prompt = promptArgument ?? prompt else { throw UsageError("generate needs --prompt TEXT") }
        let speculationConfig = try speculation.configuration()
        let template = try chatTemplate.map { try ChatTemplate.named(orFile: $0) }
        let (loaded, _) = try loadModel(model, chatTemplate: template)
        var sampling = SamplingParameters(temperature: temperature)
        sampling.topK = try atLeast(topK, 0, "top-k")
        sampling.topP = topP
        sampling.minP = minP
        sampling.repetitionPenalty = repeatPenalty
        sampling.presencePenalty = presencePenalty
        sampling.frequencyPenalty = frequencyPenalty
        if let seed { sampling.seed = try parseSeed(seed) }
        guard temperature.isFinite, sampling.temperature >= 0 else { throw UsageError("--temperature must be ≥ 0") }
        guard sampling.topP > 0 && sampling.topP <= 1 else { throw UsageError("--top-p must be in (0, 1]") }
        let ctx = try atLeast(ctxSize ?? min(loaded.model.trainedContextLength, 4096), 16, "ctx-size")
        let tokens: [Int32]
        if chat {
            var messages: [ChatMessage] = []
            if let system { messages.append(ChatMessage(role: "system", content: system)) }
            messages.append(ChatMessage(role: "user", content: prompt))
            tokens = try loaded.chatPromptTokens(messages: messages)
        } else {
            tokens = loaded.promptTokens(text: prompt)
        }
        let request = GenerationRequest(promptTokens: tokens, maxTokens: try atLeast(maxTokens, 0, "max-tokens"),
                                        sampling: sampling, stopStrings: stop.map { [$0] } ?? [], ignoreEOS: ignoreEos)
        let draft = try speculation.draftModel.map { try loadModel($0).0 }
        let generator = try TextGenerator(loaded: loaded, contextLength: ctx, threads: try threadCount(threads),
                                          speculation: speculationConfig, draft: draft)
        let result = try generator.generate(request) { piece in
            FileHandle.standardOutput.write(Data(piece.utf8))
            return true
        }
        FileHandle.standardOutput.write(Data("\n".utf8))
        let gen = result.tokens.count
        if result.draftedTokens > 0 {
            info(String(format: "speculation: %d tokens drafted, %d accepted (%.0f%%)", result.draftedTokens, result.acceptedDraftTokens,
                        100 * Double(result.acceptedDraftTokens) / Double(result.draftedTokens)))
        }
        info(String(format: "prompt: %d tokens in %.3f s (%.1f tokens/s); generated: %d tokens in %.3f s (%.1f tokens/s); finish: %@",
                    result.promptTokenCount, result.promptSeconds, Double(result.promptTokenCount) / max(result.promptSeconds, 1e-9),
                    gen, result.generationSeconds, Double(max(gen - 1, 0)) / max(result.generationSeconds, 1e-9),
                    result.finishReason.rawValue))

    }
}

/// Seeds are unsigned 64-bit; a negative number is taken as its two's-complement bits, as before.
func parseSeed(_ s: String) throws -> UInt64 {
    guard let v = UInt64(s) ?? Int64(s).map({ UInt64(bitPattern: $0) }) else {
        throw UsageError("--seed must be an integer, got '\(s)'")
    }
    return v
}

/// --threads, or every core.
func threadCount(_ option: Int?) throws -> Int {
    try atLeast(option ?? ProcessInfo.processInfo.activeProcessorCount, 1, "threads")
}
