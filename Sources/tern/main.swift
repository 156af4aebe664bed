// `tern`: the command-line face of Tern — generate, tokenize, inspect and perplexity (serve and bench follow
// in later issues). Results go to stdout; timings and diagnostics to stderr; any failure is one line on
// stderr and a non-zero exit.

import Foundation
import CKernels
import TernCore

let defaultModelPath = "models/SmolLM2-135M-Instruct.Q4_1.gguf"

func printError(_ message: String) {
    FileHandle.standardError.write(("tern: " + message + "\n").data(using: .utf8)!)
}

func info(_ message: String) {
    FileHandle.standardError.write((message + "\n").data(using: .utf8)!)
}

let usage = """
    usage: tern <command> [options]

    commands:
      generate    --model PATH --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
                  [--min-p P] [--seed S] [--repeat-penalty R] [--presence-penalty P] [--frequency-penalty F]
                  [--stop TEXT] [--chat] [--system TEXT] [--ctx-size N] [--threads N] [--ignore-eos]
      serve       --model PATH [--host 127.0.0.1] [--port 8080] [--api-key KEY]... [--tls-cert F --tls-key F]
                  [--max-queue N] [--ctx-size N] [--threads N] [--kv-cache-mib N] [--block-size 16]
                  [--kv-type f16|f32|q8_0] [--max-batch-tokens N] [--max-running N] [--cors-origin ORIGIN]
                  [--served-model-name NAME] [--no-prefix-caching] [--drain-timeout S]
      bench-serve [--url http://127.0.0.1:8080] [--concurrency N | --request-rate R] [--num-requests 64] [--prompt-tokens 128]
                  [--output-tokens 128] [--shared-prefix-tokens 0] [--duration-limit 300] [--model NAME] [--api-key KEY] [--seed 0] [--json]
      tokenize    --model PATH --text TEXT [--special]
      inspect     PATH
      bench       --model PATH [--threads N] [--prompt-tokens 128] [--gen-tokens 128] [--repetitions 3] [--json]
                  [--batch B] [--depth D]
      convert     --model IN --type T --output OUT.gguf   (T: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k)
      perplexity  --model PATH --file TEXT_FILE [--context 512] [--chunks N] [--threads N]

    Every option can also be set as an environment variable TERN_<NAME> (e.g. TERN_MODEL, TERN_THREADS).
    Without --model, the default model \(defaultModelPath) is used.
    """

func modelPath(_ o: Options) -> String { o.string("model") ?? defaultModelPath }

func threads(_ o: Options) throws -> Int {
    try o.int("threads", default: ProcessInfo.processInfo.activeProcessorCount, min: 1)!
}

func runGenerate(_ args: [String]) throws {
    let o = try Options(args, values: ["model", "prompt", "max-tokens", "temperature", "top-k", "top-p", "min-p", "seed",
                                       "repeat-penalty", "presence-penalty", "frequency-penalty", "stop", "system",
                                       "ctx-size", "threads"],
                        flags: ["chat", "ignore-eos"])
    guard let prompt = o.string("prompt") ?? o.positionals.first else { throw UsageError("generate needs --prompt TEXT") }
    let loaded = try LoadedModel(path: modelPath(o))
    var sampling = SamplingParameters(temperature: try o.float("temperature", default: 0.8)!)
    sampling.topK = try o.int("top-k", default: 40, min: 0)!
    sampling.topP = try o.float("top-p", default: 0.95)!
    sampling.minP = try o.float("min-p", default: 0.05)!
    sampling.repetitionPenalty = try o.float("repeat-penalty", default: 1)!
    sampling.presencePenalty = try o.float("presence-penalty", default: 0)!
    sampling.frequencyPenalty = try o.float("frequency-penalty", default: 0)!
    if let s = o.string("seed") {
        guard let v = UInt64(s) ?? Int64(s).map({ UInt64(bitPattern: $0) }) else { throw UsageError("--seed must be an integer, got '\(s)'") }
        sampling.seed = v
    }
    guard sampling.temperature >= 0 else { throw UsageError("--temperature must be ≥ 0") }
    guard sampling.topP > 0 && sampling.topP <= 1 else { throw UsageError("--top-p must be in (0, 1]") }
    let ctx = try o.int("ctx-size", default: min(loaded.model.trainedContextLength, 4096), min: 16)!
    let tokens: [Int32]
    if try o.flag("chat") {
        var messages: [ChatMessage] = []
        if let sys = o.string("system") { messages.append(ChatMessage(role: "system", content: sys)) }
        messages.append(ChatMessage(role: "user", content: prompt))
        tokens = try loaded.chatPromptTokens(messages: messages)
    } else {
        tokens = loaded.promptTokens(text: prompt)
    }
    let request = GenerationRequest(promptTokens: tokens, maxTokens: try o.int("max-tokens", default: 128, min: 0)!,
                                    sampling: sampling, stopStrings: o.string("stop").map { [$0] } ?? [],
                                    ignoreEOS: try o.flag("ignore-eos"))
    let generator = TextGenerator(loaded: loaded, contextLength: ctx, threads: try threads(o))
    let result = try generator.generate(request) { piece in
        FileHandle.standardOutput.write(Data(piece.utf8))
        return true
    }
    FileHandle.standardOutput.write(Data("\n".utf8))
    let gen = result.tokens.count
    info(String(format: "prompt: %d tokens in %.3f s (%.1f tokens/s); generated: %d tokens in %.3f s (%.1f tokens/s); finish: %@",
                result.promptTokenCount, result.promptSeconds, Double(result.promptTokenCount) / max(result.promptSeconds, 1e-9),
                gen, result.generationSeconds, Double(max(gen - 1, 0)) / max(result.generationSeconds, 1e-9),
                result.finishReason.rawValue))
}

func runTokenize(_ args: [String]) throws {
    let o = try Options(args, values: ["model", "text"], flags: ["special"])
    guard let text = o.string("text") ?? o.positionals.first else { throw UsageError("tokenize needs --text TEXT") }
    let ck = try Checkpoint.open(path: modelPath(o))
    let tokenizer = try Tokenizer(spec: ck.tokenizerSpec)
    let ids = tokenizer.encode(text, parseSpecial: try o.flag("special"))
    print("[" + ids.map(String.init).joined(separator: ", ") + "]")
}

func runInspect(_ args: [String]) throws {
    let o = try Options(args, values: ["model"], flags: [])
    guard let path = o.positionals.first ?? o.string("model") else { throw UsageError("inspect needs a checkpoint PATH") }
    let ck = try Checkpoint.open(path: path)
    print("file: \(path)")
    print("format: \(ck.format.rawValue)\(ck.gguf.map { " v\($0.version)" } ?? "")")
    print("architecture: \(ck.architecture)")
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
        for key in g.metadataKeys where !key.hasPrefix("tokenizer.ggml.") || !(g.metadata[key]?.arrayValue != nil) {
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
    var total = 0
    for t in rows {
        total += t.byteCount
        let shape = "[" + t.shape.map(String.init).joined(separator: ", ") + "]"
        print("  " + t.name.padding(toLength: max(32, t.name.count), withPad: " ", startingAt: 0) + " "
              + t.type.description.padding(toLength: 6, withPad: " ", startingAt: 0) + " "
              + shape.padding(toLength: 16, withPad: " ", startingAt: 0) + " \(t.byteCount) bytes")
    }
    print(String(format: "total: %.1f MiB", Double(total) / 1_048_576))
}

/// Sorts tensors as a reader expects: embeddings, blocks in numeric order, then output.
func tensorOrder(_ name: String) -> (Int, Int, String) {
    if name.hasPrefix("blk."), let n = Int(name.split(separator: ".")[1]) { return (1, n, name) }
    if name.hasPrefix("token_embd") || name.hasPrefix("rope") { return (0, 0, name) }
    return (2, 0, name)
}

func runPerplexity(_ args: [String]) throws {
    let o = try Options(args, values: ["model", "file", "context", "chunks", "threads"], flags: [])
    guard let file = o.string("file") else { throw UsageError("perplexity needs --file TEXT_FILE") }
    guard let data = FileManager.default.contents(atPath: file) else { throw UsageError("\(file): cannot read the file") }
    let text = String(decoding: data, as: UTF8.self)
    let loaded = try LoadedModel(path: modelPath(o))
    let context = try o.int("context", default: 512, min: 4)!
    let chunks = try o.int("chunks", default: nil, min: 1)
    var line = ""
    let result = try Perplexity.evaluate(loaded: loaded, text: text, context: context, maxWindows: chunks,
                                         threads: try threads(o)) { i, ppl in
        line += String(format: "[%d]%.4f,", i, ppl)
        info(String(format: "[%d] %.4f", i, ppl))
    }
    print(line)
    info(String(format: "%d tokens scored in %.2f s", result.tokensScored, result.seconds))
    print(String(format: "ppl: %.4f", result.perplexity))
}

func runConvert(_ args: [String]) throws {
    let o = try Options(args, values: ["model", "type", "output"], flags: [])
    guard let typeName = o.string("type") else { throw UsageError("convert needs --type T") }
    guard let type = GGMLType(name: typeName), CheckpointConverter.writableTypes.contains(type) else {
        throw UsageError("--type \(typeName) is not a type tern can write (\(CheckpointConverter.writableTypes.map(\.description).joined(separator: ", ")))")
    }
    guard let output = o.string("output") else { throw UsageError("convert needs --output OUT.gguf") }
    let input = modelPath(o)
    guard (input as NSString).standardizingPath != (output as NSString).standardizingPath else {
        throw UsageError("--output must differ from the input")
    }
    let ck = try Checkpoint.open(path: input)
    let start = Date()
    let summary = try CheckpointConverter.convert(ck, to: type, output: output)
    for f in summary.fallbacks { info("  \(f) (rows do not split into \(type) blocks)") }
    info(String(format: "wrote %@: %d tensors, %.1f MiB of tensor data, in %.1f s", output, summary.tensors,
                Double(summary.bytes) / 1_048_576, Date().timeIntervalSince(start)))
}

// TERN_KERNELS=scalar|avx2|avx512 pins the kernel path (for comparisons; the default is the best the CPU has).
if let pin = ProcessInfo.processInfo.environment["TERN_KERNELS"] {
    let paths = ["scalar": 0, "avx2": 1, "avx512": 2]
    guard let p = paths[pin] else {
        printError("TERN_KERNELS must be scalar, avx2 or avx512, got '\(pin)'")
        exit(2)
    }
    tern_force_path(Int32(p))
}

let arguments = Array(CommandLine.arguments.dropFirst())
guard let command = arguments.first else {
    print(usage)
    exit(2)
}
let rest = Array(arguments.dropFirst())
do {
    switch command {
    case "generate": try runGenerate(rest)
    case "tokenize": try runTokenize(rest)
    case "inspect": try runInspect(rest)
    case "perplexity": try runPerplexity(rest)
    case "convert": try runConvert(rest)
    case "serve": try runServe(rest)
    case "bench-serve": try runBenchServe(rest)
    case "bench": try runBench(rest)
    case "help", "--help", "-h": print(usage)
    default: throw UsageError("unknown command '\(command)'\n\(usage)")
    }
    fflush(nil)
} catch {
    fflush(nil)
    printError("\(error)")
    exit(1)
}
