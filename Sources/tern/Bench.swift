// `tern bench`: llama-bench-style throughput of the forward pass — prompt processing (one batch of
// --prompt-tokens) and generation (--gen-tokens single-token steps, from an empty context or after --depth
// tokens, for one sequence or --batch sequences decoding together) — plus the
// machine's measured memory read bandwidth, the weight bytes one token reads, and the share of the
// bandwidth ceiling (bandwidth / bytes per token) that generation reaches.

import ArgumentParser
import CKernels
import Foundation
import TernCore

struct BenchCommand: ParsableCommand, EnvironmentReadable {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "llama-bench-style throughput of the forward pass.")

    static let environmentOptions: [EnvironmentOption] = [
        .value("model"), .value("threads"), .value("prompt-tokens"), .value("gen-tokens"), .value("repetitions"),
        .value("seed"), .value("batch"), .value("depth"), .value("kv-type"), .flag("json"),
    ] + EvictionOptions.environmentOptions

    @Option(parsing: .unconditional, help: .tern("GGUF file or Hugging Face directory.", env: "model", valueName: "path"))
    var model = defaultModelPath
    @Option(parsing: .unconditional, help: .tern("Compute threads.", env: "threads", default: "the number of cores", valueName: "n"))
    var threads: Int?
    @Option(parsing: .unconditional, help: .tern("Prompt length of the prompt-processing test; 0 skips it.", env: "prompt-tokens", valueName: "n"))
    var promptTokens = 128
    @Option(parsing: .unconditional, help: .tern("Tokens of the generation test; 0 skips it.", env: "gen-tokens", valueName: "n"))
    var genTokens = 128
    @Option(parsing: .unconditional, help: .tern(
        "Prompt tokens per forward pass of the prompt-processing test (llama-bench's n_ubatch); 0: the whole prompt in one pass.",
        env: "ubatch", valueName: "n"))
    var ubatch = 512
    @Option(parsing: .unconditional, help: .tern("Measured runs of each test (after one warm-up).", env: "repetitions", valueName: "n"))
    var repetitions = 3
    @Option(parsing: .unconditional, help: .tern("Seed of the random token ids.", env: "seed", valueName: "s"))
    var seed = 42
    @Option(parsing: .unconditional, help: .tern("Sequences decoding together in the generation test.", env: "batch", valueName: "b"))
    var batch = 1
    @Option(parsing: .unconditional, help: .tern("Tokens of context before generation is measured.", env: "depth", valueName: "d"))
    var depth = 0
    @Option(parsing: .unconditional, help: .tern(
        "KV cache: contiguous (f32, one slab per sequence), or the server's paged blocks of 16 in f32, f16 or q8_0.",
        env: "kv-type", valueName: "contiguous|f32|f16|q8_0"))
    var kvType = "contiguous"
    @Flag(help: .tern("Also print the results as one JSON line.", env: "json", default: "off"))
    var json = false
    /// With a paged --kv-type: eviction during the depth fill (in chunks) and generation, as the server runs it.
    @OptionGroup var eviction: EvictionOptions

    func run() throws {
        try runBench(self)
    }
}

func runBench(_ o: BenchCommand) throws {
    let path = o.model
    let threadCount = try threadCount(o.threads)
    let promptTokens = try atLeast(o.promptTokens, 0, "prompt-tokens")
    let genTokens = try atLeast(o.genTokens, 0, "gen-tokens")
    let reps = try atLeast(o.repetitions, 1, "repetitions")
    // The prompt goes through in passes of `ubatch` tokens, as llama-bench's n_ubatch (512) and the server's chunked
    // prefill do: a 4096-row pass keeps activations far larger than the caches and ran its matrix products 1.5x
    // slower per token.
    let ubatch = try atLeast(o.ubatch, 0, "ubatch")
    let passTokens = ubatch == 0 ? promptTokens : min(ubatch, promptTokens)
    let json = o.json
    // Generation measured with `batch` sequences decoding together, each after `depth` tokens of context.
    let batch = try atLeast(o.batch, 1, "batch")
    let depth = try atLeast(o.depth, 0, "depth")
    var rng = RandomStream(seed: UInt64(try atLeast(o.seed, 0, "seed")))

    let (loaded, _) = try loadModel(path)
    let model = loaded.model
    let pool = WorkerPool(threads: threadCount)
    let context = max(promptTokens, depth) + genTokens + 1
    let workspace = model.makeWorkspace(maxTokens: max(passTokens, batch, min(depth, 512), 1), maxContext: context, pool: pool)
    let vocab = model.vocabularySize
    func randomTokens(_ n: Int) -> [Int32] { (0..<n).map { _ in Int32(rng.next() % UInt64(vocab)) } }
    // The memory each measured sequence gets: the contiguous cache, or paged blocks as `tern serve` uses them.
    var makeMemory: () -> SequenceMemory = { model.makeMemory(capacity: context) }
    let eviction = try o.eviction.settings()
    if eviction.isActive && o.kvType == "contiguous" { throw UsageError("--kv-policy needs a paged --kv-type (f32, f16 or q8_0)") }
    if o.kvType != "contiguous" {
        guard let storage = KVStorage(rawValue: o.kvType) else {
            throw UsageError("--kv-type must be contiguous, f32, f16 or q8_0, got '\(o.kvType)'")
        }
        guard let llama = loaded.llama else { throw UsageError("--kv-type \(o.kvType) needs a transformer (this model keeps a recurrent state)") }
        if storage == .q8_0 && llama.config.headDim % 32 != 0 {
            throw UsageError("--kv-type q8_0 needs a head dimension that is a multiple of 32 (this model's is \(llama.config.headDim))")
        }
        let layout = llama.cacheLayout
        let blockBytes = 16 * layout.layersPerBlock * 2 * storage.rowBytes(llama.kvDim) * layout.groups.count
        let blocks = ((context + 15) / 16 + 2) * (batch + 1)
        let kvPool = try KVBlockPool(layers: layout.layersPerBlock, rowWidth: llama.kvDim, blockSize: 16, storage: storage,
                                     bytes: blocks * blockBytes, kvHeads: llama.config.kvHeadCount)
        if eviction.isActive && !Engine.canEvict(loaded) { throw UsageError("--kv-policy: \(model.architecture) cannot evict (fixed state or sliding-window layers)") }
        let heads = llama.config.kvHeadCount, headDim = llama.config.headDim
        makeMemory = {
            let memory = PagedKVMemory(pool: kvPool, capacity: context, layout: layout)
            memory.enableEviction(eviction, kvHeads: heads, headDim: headDim)
            return memory
        }
    }
    // One forward pass as the engine runs it: with the eviction policy's score sinks, then its eviction.
    func forward(_ items: [ForwardItem]) throws -> UnsafeMutablePointer<Float> {
        var items = items
        for i in items.indices {
            items[i].scoreSink = (items[i].memory as? PagedKVMemory)?.scoreSink(forPass: items[i].tokens.count)
        }
        let logits = try model.forward(items, workspace: workspace)
        for item in items { (item.memory as? PagedKVMemory)?.applyEviction() }
        return logits
    }

    // Prompt processing: forward passes of `passTokens` over the prompt, logits for its last token.
    var pp: [Double] = []
    if promptTokens > 0 {
        for rep in 0...reps {
            let memory = makeMemory()
            let tokens = randomTokens(promptTokens)
            let t0 = DispatchTime.now().uptimeNanoseconds
            var done = 0
            while done < promptTokens {
                let n = min(passTokens, promptTokens - done)
                let last = done + n == promptTokens
                _ = try model.forward(tokens: Array(tokens[done..<(done + n)]), memory: memory, workspace: workspace,
                                      logitRows: last ? (n - 1)..<n : 0..<0)
                done += n
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            if rep > 0 { pp.append(Double(promptTokens) / dt) }   // the first run warms caches and page tables
        }
    }
    // Generation: token by token (each of `batch` sequences one token per step), greedy, after `depth`
    // tokens of context; tokens/s counts every sequence's tokens.
    var tg: [Double] = []
    if genTokens > 0 {
        for rep in 0...reps {
            let memories = (0..<batch).map { _ in makeMemory() }
            for m in memories where depth > 0 {
                var filled = 0
                while filled < depth {
                    let n = min(depth - filled, workspace.maxTokens)
                    _ = try forward([ForwardItem(tokens: randomTokens(n), memory: m, logitRows: 0..<0)])
                    filled += n
                }
            }
            var tokens = randomTokens(batch)
            let t0 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<genTokens {
                let items = (0..<batch).map { ForwardItem(tokens: [tokens[$0]], memory: memories[$0], logitRows: 0..<1) }
                let logits = try forward(items)
                for b in 0..<batch { tokens[b] = Sampler.argmax(logits + b * vocab, vocab) }
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            if rep > 0 { tg.append(Double(genTokens * batch) / dt) }
        }
    }
    let bandwidth = measureReadBandwidth(pool: pool)
    let bytesPerToken = Double(model.weightBytesPerToken)
    let ceiling = bandwidth / bytesPerToken
    let (ppMean, ppStd) = meanStd(pp)
    let (tgMean, tgStd) = meanStd(tg)
    let resolved = (loaded.checkpoint.path as NSString).resolvingSymlinksInPath
    let fileSize = ((try? FileManager.default.attributesOfItem(atPath: resolved))?[.size] as? NSNumber)?.doubleValue ?? 0

    do {
        print("model: \(path) (\(model.architecture), \(String(format: "%.1f", fileSize / 1_048_576)) MiB)")
        print("threads: \(threadCount), kernels: \(String(cString: tern_path_name(tern_active_path())))")
        print(String(format: "pp%-5d %10.1f ± %.1f tokens/s", promptTokens, ppMean, ppStd)
              + (passTokens < promptTokens ? " (passes of \(passTokens) tokens)" : ""))
        let shape = (batch > 1 ? " × \(batch) sequences" : "") + (depth > 0 ? " at depth \(depth)" : "")
            + (eviction.isActive ? ", kv \(eviction.policy.rawValue) budget \(eviction.budget)" : "")
        print(String(format: "tg%-5d %10.1f ± %.1f tokens/s", genTokens, tgMean, tgStd) + shape)
        print(String(format: "weights read per token: %.1f MiB", bytesPerToken / 1_048_576))
        print(String(format: "measured read bandwidth: %.1f GB/s (%d threads)", bandwidth / 1e9, threadCount))
        print(String(format: "bandwidth ceiling: %.1f tokens/s; generation reaches %.1f%% of it", ceiling, tgMean / ceiling * 100))
    }
    if json {
        let fields: [(String, String)] = [
            ("model", "\"\(path.replacingOccurrences(of: "\"", with: "\\\""))\""),
            ("threads", "\(threadCount)"),
            ("prompt_tokens", "\(promptTokens)"), ("ubatch", "\(passTokens)"), ("gen_tokens", "\(genTokens)"),
            ("repetitions", "\(reps)"),
            ("batch", "\(batch)"), ("depth", "\(depth)"), ("kv_type", "\"\(o.kvType)\""),
            ("kv_policy", "\"\(eviction.policy.rawValue)\""), ("kv_budget", "\(eviction.budget)"),
            ("pp_tokens_per_s", String(format: "%.2f", ppMean)), ("pp_stddev", String(format: "%.2f", ppStd)),
            ("tg_tokens_per_s", String(format: "%.2f", tgMean)), ("tg_stddev", String(format: "%.2f", tgStd)),
            ("weight_bytes_per_token", "\(Int(bytesPerToken))"),
            ("read_bandwidth_gb_per_s", String(format: "%.2f", bandwidth / 1e9)),
            ("bandwidth_ceiling_tokens_per_s", String(format: "%.2f", ceiling)),
            ("ceiling_fraction", String(format: "%.4f", tgMean / ceiling)),
            ("kernels", "\"\(String(cString: tern_path_name(tern_active_path())))\""),
        ]
        print("{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}")
    }
}

func meanStd(_ xs: [Double]) -> (Double, Double) {
    guard !xs.isEmpty else { return (0, 0) }
    let mean = xs.reduce(0, +) / Double(xs.count)
    let variance = xs.count > 1 ? xs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(xs.count - 1) : 0
    return (mean, variance.squareRoot())
}

/// Read bandwidth with the pool's threads streaming disjoint halves of a 512 MiB buffer; best of 5.
func measureReadBandwidth(pool: WorkerPool) -> Double {
    let count = 128 << 20   // floats
    let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
    defer { buffer.deallocate() }
    pool.parallelFor(count, granule: 1 << 16) { r in (buffer + r.lowerBound).initialize(repeating: 1, count: r.count) }
    var best = 0.0
    let sink = UnsafeMutablePointer<Float>.allocate(capacity: pool.threadCount)
    defer { sink.deallocate() }
    for _ in 0..<5 {
        let t0 = DispatchTime.now().uptimeNanoseconds
        pool.run { t in
            let lo = count * t / pool.threadCount, hi = count * (t + 1) / pool.threadCount
            var acc: Float = 0
            var i = lo
            while i < hi {
                let n = min(1 << 16, hi - i)
                acc += tern_dot_f32(buffer + i, buffer + i, Int64(n))
                i += n
            }
            sink[t] = acc
        }
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        best = max(best, Double(count * 4) / dt)
    }
    return best
}
