// `tern bench-serve`: a load generator for a running Tern (or any OpenAI-compatible) server. It streams
// /v1/completions requests in a closed loop (N clients) or an open loop (Poisson arrivals), measures time to
// first token, inter-token latency and end-to-end latency per request, and reports throughput and
// percentiles. Its HTTP/1.1 client is its own, on blocking sockets in dedicated threads, so that a slow server
// cannot starve the Dispatch pool and skew the timings. Loopback only: a benchmark is not a traffic generator
// for other people's machines.

import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Command

struct BenchServeCommand: ParsableCommand, EnvironmentReadable {
    static let configuration = CommandConfiguration(commandName: "bench-serve", abstract: "Load generator for a running server (loopback only).")

    // TERN_MODEL is not here: for `tern serve` it names a checkpoint file, not a served model (see run()).
    static let environmentOptions: [EnvironmentOption] = [
        .value("url"), .value("concurrency"), .value("request-rate"), .value("num-requests"), .value("prompt-tokens"),
        .value("output-tokens"), .value("shared-prefix-tokens"), .value("duration-limit"), .value("api-key"),
        .value("seed"), .value("request-timeout"), .value("temperature"), .value("max-concurrency"), .flag("json"),
    ]

    @Option(parsing: .unconditional, help: .tern("The server, on a loopback address.", env: "url", valueName: "url"))
    var url = "http://127.0.0.1:8080"
    @Option(parsing: .unconditional, help: ArgumentHelp(
        "Served model name (default: the server's first; env: TERN_MODEL, used only when the server serves it).", valueName: "name"))
    var model: String?
    @Option(parsing: .unconditional, help: .tern("Clients in a closed loop.", env: "concurrency", default: "1", valueName: "n"))
    var concurrency: Int?
    @Option(parsing: .unconditional, help: .tern("Poisson arrivals per second instead of --concurrency.", env: "request-rate", default: "off", valueName: "r"))
    var requestRate: Float?
    @Option(parsing: .unconditional, help: .tern("With --request-rate, requests in flight at most.", env: "max-concurrency", default: "unbounded", valueName: "n"))
    var maxConcurrency: Int?
    @Option(parsing: .unconditional, help: .tern("Requests to send.", env: "num-requests", valueName: "n"))
    var numRequests = 64
    @Option(parsing: .unconditional, help: .tern("Prompt length in tokens.", env: "prompt-tokens", valueName: "n"))
    var promptTokens = 128
    @Option(parsing: .unconditional, help: .tern("Output tokens per request (ignore_eos).", env: "output-tokens", valueName: "n"))
    var outputTokens = 128
    @Option(parsing: .unconditional, help: .tern("Leading prompt tokens all requests share.", env: "shared-prefix-tokens", valueName: "n"))
    var sharedPrefixTokens = 0
    @Option(parsing: .unconditional, help: .tern("Stop sending after this many seconds.", env: "duration-limit", valueName: "s"))
    var durationLimit = 300
    @Option(parsing: .unconditional, help: .tern("Give up on one request after this many seconds.", env: "request-timeout", valueName: "s"))
    var requestTimeout = 300
    @Option(parsing: .unconditional, help: .tern("Sampling temperature.", env: "temperature", valueName: "t"))
    var temperature: Float = 0
    @Option(parsing: .unconditional, help: .tern("Sent as `Authorization: Bearer KEY`.", env: "api-key", default: "none", valueName: "key"))
    var apiKey: String?
    @Option(parsing: .unconditional, help: .tern("Seed of the prompts.", env: "seed", default: "random, printed", valueName: "s"))
    var seed: String?
    @Flag(help: .tern("Also print the report as one JSON line.", env: "json", default: "off"))
    var json = false

    func run() throws {
        try runBenchServe(self)
    }
}

func runBenchServe(_ o: BenchServeCommand) throws {
    let target = try BenchTarget(url: o.url)
    var plan = BenchPlan()
    plan.numRequests = try atLeast(o.numRequests, 1, "num-requests")
    plan.promptTokens = try atLeast(o.promptTokens, 1, "prompt-tokens")
    plan.outputTokens = try atLeast(o.outputTokens, 1, "output-tokens")
    plan.sharedPrefixTokens = try atLeast(o.sharedPrefixTokens, 0, "shared-prefix-tokens")
    guard plan.sharedPrefixTokens <= plan.promptTokens else {
        throw UsageError("--shared-prefix-tokens (\(plan.sharedPrefixTokens)) must not exceed --prompt-tokens (\(plan.promptTokens))")
    }
    plan.durationLimit = Double(try atLeast(o.durationLimit, 1, "duration-limit"))
    plan.requestTimeout = Double(try atLeast(o.requestTimeout, 1, "request-timeout"))
    plan.temperature = Double(o.temperature)
    guard plan.temperature >= 0 else { throw UsageError("--temperature must be ≥ 0") }
    if let s = o.seed {
        plan.seed = try parseSeed(s)
    } else {
        // Without --seed every run draws fresh prompts: a second run with the same prompts would be served from
        // the prefix cache the first one filled and report flattering TTFTs. The seed is printed for repeats.
        plan.seed = UInt64.random(in: 0..<1_000_000)
    }
    let concurrency = try o.concurrency.map { try atLeast($0, 1, "concurrency") }
    let rate = o.requestRate
    switch (concurrency, rate) {
    case (.some, .some): throw UsageError("give either --concurrency N or --request-rate R, not both")
    case (_, .some(let r)):
        guard r > 0 else { throw UsageError("--request-rate must be positive, got \(r)") }
        plan.load = .rate(Double(r), maxInFlight: try o.maxConcurrency.map { try atLeast($0, 1, "max-concurrency") })
    case (let c, nil):
        plan.load = .concurrency(c ?? 1)
    }
    plan.apiKey = o.apiKey
    let json = o.json
    // TERN_MODEL usually names a checkpoint file for `tern serve`; only a --model on this command line is a
    // served-model name we must insist on.
    let explicitModel = o.model != nil
    let requestedModel = o.model ?? ProcessInfo.processInfo.environment["TERN_MODEL"].flatMap { $0.isEmpty ? nil : $0 }

    let client = BenchHTTPClient(target: target, apiKey: plan.apiKey)
    let served = try waitForServer(client)
    if let m = requestedModel {
        if served.isEmpty || served.contains(m) {
            plan.model = m
        } else if explicitModel {
            throw UsageError("the server does not serve model '\(m)' (it serves: \(served.joined(separator: ", ")))")
        } else {
            plan.model = served.first
        }
    } else {
        plan.model = served.first
    }

    let pool = tokenPool(client)
    if pool.fromServer == false {
        info("bench-serve: /tokenize unavailable; prompts use random token ids in [100, 10000)")
    }
    let prompts = BenchPrompts.make(count: plan.numRequests, length: plan.promptTokens, shared: plan.sharedPrefixTokens,
                                    pool: pool.ids, seed: plan.seed)
    let loadText: String
    switch plan.load {
    case .concurrency(let c): loadText = "concurrency \(c)"
    case .rate(let r, let cap): loadText = String(format: "Poisson rate %.3g req/s", r) + (cap.map { ", at most \($0) in flight" } ?? "")
    }
    info("bench-serve: \(plan.numRequests) requests to \(target.display), \(loadText), prompt \(plan.promptTokens) tokens "
         + "(shared prefix \(plan.sharedPrefixTokens)), output \(plan.outputTokens) tokens, model \(plan.model ?? "(server default)"), seed \(plan.seed)")

    let runner = BenchRunner(client: client, plan: plan, prompts: prompts)
    let report = runner.run()
    print(report.table(plan: plan))
    if json { print(report.json(plan: plan)) }
    fflush(nil)
    if report.completed == 0 && report.failed > 0 {
        throw BenchError("every request failed (first error: \(report.errors.first?.0 ?? "unknown"))")
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Checks that a server answers before any load is generated; waits while it reports 503 (still loading).
/// Returns the served model ids (empty when the server does not list them).
private func waitForServer(_ client: BenchHTTPClient) throws -> [String] {
    let giveUp = monotonicSeconds() + 60
    var noted = false
    while true {
        let r: BenchHTTPClient.Response
        do {
            r = try client.request(method: "GET", path: "/v1/models", body: nil, timeout: 10)
        } catch {
            throw BenchError("cannot reach \(client.target.display): \(error) (is the server running?)")
        }
        if r.status == 503 && monotonicSeconds() < giveUp {
            if !noted { info("bench-serve: the server is loading; waiting for it (up to 60 s)"); noted = true }
            usleep(500_000)
            continue
        }
        if r.status == 401 || r.status == 403 {
            throw BenchError("\(client.target.display) refused the API key (HTTP \(r.status)); pass --api-key KEY")
        }
        guard r.status == 200 else { return [] }
        guard let obj = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any],
              let data = obj["data"] as? [[String: Any]] else { return [] }
        return data.compactMap { $0["id"] as? String }
    }
}

/// Token ids to build prompts from: the distinct ids of an ordinary English text as the server tokenizes it
/// (so they are valid for any vocabulary size), else a range valid for any real vocabulary.
private func tokenPool(_ client: BenchHTTPClient) -> (ids: [Int], fromServer: Bool) {
    let text = """
        The river bends twice before it reaches the old mill, where the water slows and turns green under the \
        willows. Farmers once brought grain here from every village in the valley; today the wheel is still, and \
        children throw pebbles from the bridge to count the rings. In spring the meadows flood, herons stand in the \
        shallows, and the path along the bank becomes a ribbon of mud that hikers curse and photograph in equal \
        measure. Seventy-three steps lead up to the chapel, whose bell was recast in 1894 after a storm cracked it.
        """
    let body = try! JSONSerialization.data(withJSONObject: ["prompt": text, "content": text, "add_special_tokens": false])
    if let r = try? client.request(method: "POST", path: "/tokenize", body: Array(body), timeout: 10), r.status == 200,
       let obj = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any],
       let tokens = obj["tokens"] as? [Any] {
        var seen = Set<Int>()
        var ids: [Int] = []
        for t in tokens {
            // llama-server may answer objects with "id" when asked for pieces; plain ids are the norm.
            let id = (t as? Int) ?? ((t as? [String: Any])?["id"] as? Int)
            if let id, seen.insert(id).inserted { ids.append(id) }
        }
        if ids.count >= 8 { return (ids, true) }
    }
    return (Array(100..<10000), false)
}

// MARK: - Plan and prompts

struct BenchPlan: Sendable {
    enum Load: Sendable {
        case concurrency(Int)
        case rate(Double, maxInFlight: Int?)
    }
    var load: Load = .concurrency(1)
    var numRequests = 64
    var promptTokens = 128
    var outputTokens = 128
    var sharedPrefixTokens = 0
    var durationLimit = 300.0
    var requestTimeout = 300.0
    var temperature = 0.0
    var seed: UInt64 = 0
    var model: String?
    var apiKey: String?
}

/// SplitMix64: a small seeded generator, so a seed reproduces prompts and arrival times on any platform.
struct BenchRNG: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    mutating func unit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

enum BenchPrompts {
    /// Token-id prompts of exactly `length` tokens whose first `shared` tokens are the same for all requests.
    /// The first two tokens after the prefix encode the request index, so no two prompts share more than the
    /// prefix (random tails from a small pool would otherwise collide now and then and flatter a prefix cache).
    static func make(count: Int, length: Int, shared: Int, pool: [Int], seed: UInt64) -> [[Int]] {
        var rng = BenchRNG(seed: seed ^ 0x5EED_0F_9F1E_F1C5)
        let prefix = (0..<shared).map { _ in pool[Int(rng.next() % UInt64(pool.count))] }
        let p = pool.count
        return (0..<count).map { i in
            var r = BenchRNG(seed: seed &+ UInt64(i + 1) &* 0xD1B5_4A32_D192_ED03)
            var ids = prefix
            ids.reserveCapacity(length)
            if ids.count < length { ids.append(pool[i % p]) }
            if ids.count < length { ids.append(pool[(i / p) % p]) }
            while ids.count < length { ids.append(pool[Int(r.next() % UInt64(p))]) }
            return ids
        }
    }

    /// Exponential inter-arrival times (a Poisson process of `rate` per second), as offsets from the start.
    static func arrivals(count: Int, rate: Double, seed: UInt64) -> [Double] {
        var rng = BenchRNG(seed: seed ^ 0xA881_7A1E_0000_0001)
        var t = 0.0
        return (0..<count).map { i in
            if i > 0 { t += -log(1 - rng.unit()) / rate }
            return t
        }
    }
}

// MARK: - Statistics

enum BenchStats {
    /// The q-quantile (0...1) with linear interpolation between closest ranks (numpy's default), so that p50 of
    /// an even-sized sample is the mean of the middle two.
    static func percentile(_ sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let pos = q * Double(sorted.count - 1)
        let lo = Int(pos.rounded(.down))
        let hi = min(lo + 1, sorted.count - 1)
        let frac = pos - Double(lo)
        return sorted[lo] + (sorted[hi] - sorted[lo]) * frac
    }

    struct Summary {
        var count = 0
        var mean = Double.nan
        var p50 = Double.nan
        var p90 = Double.nan
        var p99 = Double.nan
    }

    static func summarize(_ values: [Double]) -> Summary {
        guard !values.isEmpty else { return Summary() }
        let s = values.sorted()
        return Summary(count: s.count, mean: s.reduce(0, +) / Double(s.count), p50: percentile(s, 0.5),
                       p90: percentile(s, 0.9), p99: percentile(s, 0.99))
    }
}

// MARK: - Running

struct BenchResult: Sendable {
    enum Outcome: Sendable { case ok, failed(String), aborted }
    var outcome: Outcome = .failed("not run")
    var start = 0.0
    var end = 0.0
    var ttft: Double?
    var itls: [Double] = []
    var outputTokens = 0
    var promptTokens = 0
    var cachedTokens: Int?
}

/// Results of all requests; written from the request threads.
final class BenchCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [BenchResult] = []
    private var nextIndex = 0

    func add(_ r: BenchResult) { lock.lock(); results.append(r); lock.unlock() }
    var all: [BenchResult] { lock.lock(); defer { lock.unlock() }; return results }

    /// Closed loop: the next request index to send, or nil when all are taken.
    func take(limit: Int) -> Int? {
        lock.lock(); defer { lock.unlock() }
        guard nextIndex < limit else { return nil }
        nextIndex += 1
        return nextIndex - 1
    }
}

/// A counting gate for the open loop's optional cap on requests in flight.
final class BenchGate: @unchecked Sendable {
    private let cond = NSCondition()
    private var free: Int
    init(_ n: Int) { free = n }
    func enter() { cond.lock(); while free == 0 { cond.wait() }; free -= 1; cond.unlock() }
    func leave() { cond.lock(); free += 1; cond.signal(); cond.unlock() }
}

/// Waits for a set of threads without parking any work on the Dispatch pool.
final class BenchLatch: @unchecked Sendable {
    private let cond = NSCondition()
    private var pending = 0
    func enter() { cond.lock(); pending += 1; cond.unlock() }
    func leave() { cond.lock(); pending -= 1; cond.broadcast(); cond.unlock() }
    func wait() { cond.lock(); while pending > 0 { cond.wait() }; cond.unlock() }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

private func sleepUntil(_ t: Double) {
    let d = t - monotonicSeconds()
    if d > 0 { usleep(useconds_t(min(d, 3600) * 1e6)) }
}

private func startThread(_ body: @escaping @Sendable () -> Void) {
    let t = Thread(block: body)
    t.stackSize = 1 << 20
    t.start()
}

struct BenchRunner: Sendable {
    let client: BenchHTTPClient
    let plan: BenchPlan
    let prompts: [[Int]]

    func run() -> BenchReport {
        let collector = BenchCollector()
        let latch = BenchLatch()
        let start = monotonicSeconds()
        let stopAt = start + plan.durationLimit
        let n = prompts.count
        switch plan.load {
        case .concurrency(let c):
            for _ in 0..<min(c, n) {
                latch.enter()
                startThread {
                    while monotonicSeconds() < stopAt, let i = collector.take(limit: n) {
                        collector.add(self.send(i, stopAt: stopAt))
                    }
                    latch.leave()
                }
            }
        case .rate(let r, let cap):
            let times = BenchPrompts.arrivals(count: n, rate: r, seed: plan.seed)
            let gate = cap.map(BenchGate.init)
            for i in 0..<n {
                sleepUntil(start + times[i])
                gate?.enter()
                if monotonicSeconds() >= stopAt { gate?.leave(); break }
                latch.enter()
                startThread {
                    collector.add(self.send(i, stopAt: stopAt))
                    gate?.leave()
                    latch.leave()
                }
            }
        }
        latch.wait()
        let results = collector.all
        // The run lasts until the last request ends (or the limit cut it), not until the last one started.
        let end = results.map(\.end).max() ?? monotonicSeconds()
        return BenchReport(results: results, duration: max(end - start, 1e-9), planned: n)
    }

    private func requestBody(_ i: Int) -> [UInt8] {
        var body = "{"
        if let m = plan.model { body += "\"model\":" + jsonString(m) + "," }
        // A batch of one token-id array rather than a flat array: some servers cap the number of prompts per
        // request before telling a flat id array from a list of prompts.
        body += "\"prompt\":[[" + prompts[i].map(String.init).joined(separator: ",") + "]]"
        body += ",\"max_tokens\":\(plan.outputTokens),\"ignore_eos\":true"
        body += ",\"stream\":true,\"stream_options\":{\"include_usage\":true}"
        if plan.temperature == 0 {
            body += ",\"temperature\":0"
        } else {
            body += ",\"temperature\":\(plan.temperature),\"seed\":\((plan.seed &+ UInt64(i)) & 0x7FFF_FFFF)"
        }
        body += "}"
        return Array(body.utf8)
    }

    /// One streamed completion, timed. Never throws: every failure becomes the result's outcome.
    func send(_ i: Int, stopAt: Double) -> BenchResult {
        var result = BenchResult()
        result.promptTokens = prompts[i].count
        let body = requestBody(i)
        let t0 = monotonicSeconds()
        result.start = t0
        let deadline = min(t0 + plan.requestTimeout, stopAt)
        var lastToken: Double?
        var tokenChunks = 0
        var usageTokens: Int?
        var sawDone = false
        var streamError: String?
        do {
            let status = try client.stream(path: "/v1/completions", body: body, deadline: deadline) { payload, t in
                if payload == "[DONE]" { sawDone = true; return false }
                guard let obj = (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) as? [String: Any] else {
                    streamError = "malformed SSE event: \(payload.prefix(80))"
                    return false
                }
                if let err = obj["error"] {
                    let msg = ((err as? [String: Any])?["message"] as? String) ?? "\(err)"
                    streamError = "error event: \(msg)"
                    return false
                }
                if let u = obj["usage"] as? [String: Any], let c = u["completion_tokens"] as? Int {
                    usageTokens = c
                    if let p = u["prompt_tokens"] as? Int { result.promptTokens = p }
                    if let d = u["prompt_tokens_details"] as? [String: Any], let c = d["cached_tokens"] as? Int {
                        result.cachedTokens = c
                    }
                }
                if let choices = obj["choices"] as? [[String: Any]], let c = choices.first {
                    let text = (c["text"] as? String) ?? ((c["delta"] as? [String: Any])?["content"] as? String) ?? ""
                    if !text.isEmpty {
                        if let last = lastToken { result.itls.append(t - last) } else { result.ttft = t - t0 }
                        lastToken = t
                        tokenChunks += 1
                    }
                }
                return true
            }
            result.end = monotonicSeconds()
            if case .failedStatus(let code, let message) = status {
                result.outcome = .failed("HTTP \(code)" + (message.isEmpty ? "" : ": \(message)"))
            } else if let streamError {
                result.outcome = .failed(streamError)
            } else if !sawDone {
                result.outcome = .failed("stream ended without [DONE]")
            } else {
                result.outcome = .ok
            }
        } catch BenchHTTPError.timedOut {
            result.end = monotonicSeconds()
            result.outcome = result.end >= stopAt - 0.001 && deadline == stopAt ? .aborted : .failed("timed out after \(Int(plan.requestTimeout)) s")
        } catch {
            result.end = monotonicSeconds()
            result.outcome = .failed("\(error)")
        }
        result.outputTokens = usageTokens ?? tokenChunks
        return result
    }
}

private func jsonString(_ s: String) -> String {
    let data = try! JSONSerialization.data(withJSONObject: [s], options: [.fragmentsAllowed])
    // ["..."] → "..."
    return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
}

// MARK: - Report

struct BenchReport {
    let results: [BenchResult]
    let duration: Double
    let planned: Int

    var ok: [BenchResult] { results.filter { if case .ok = $0.outcome { return true } else { return false } } }
    var completed: Int { ok.count }
    var failed: Int { results.filter { if case .failed = $0.outcome { return true } else { return false } }.count }
    var aborted: Int { results.filter { if case .aborted = $0.outcome { return true } else { return false } }.count }

    /// Distinct failure messages with their counts, most frequent first.
    var errors: [(String, Int)] {
        var counts: [String: Int] = [:]
        for r in results { if case .failed(let m) = r.outcome { counts[m, default: 0] += 1 } }
        return counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
    }

    var outputTokens: Int { ok.reduce(0) { $0 + $1.outputTokens } }
    var inputTokens: Int { ok.reduce(0) { $0 + $1.promptTokens } }
    var cachedTokens: Int? {
        let c = ok.compactMap(\.cachedTokens)
        return c.isEmpty ? nil : c.reduce(0, +)
    }
    var ttft: BenchStats.Summary { BenchStats.summarize(ok.compactMap(\.ttft).map { $0 * 1000 }) }
    var itl: BenchStats.Summary { BenchStats.summarize(ok.flatMap(\.itls).map { $0 * 1000 }) }
    var e2e: BenchStats.Summary { BenchStats.summarize(ok.map { ($0.end - $0.start) * 1000 }) }
    /// Time per output token after the first, per request: ITL weighted per request rather than per chunk, and
    /// right even when a chunk carries several tokens.
    var tpot: BenchStats.Summary {
        BenchStats.summarize(ok.compactMap { r in
            guard let t = r.ttft, r.outputTokens > 1 else { return nil }
            return (r.end - r.start - t) / Double(r.outputTokens - 1) * 1000
        })
    }

    func table(plan: BenchPlan) -> String {
        func f(_ v: Double, _ digits: Int = 2) -> String { v.isNaN ? "-" : String(format: "%.\(digits)f", v) }
        var lines: [String] = []
        func row(_ k: String, _ v: String) { lines.append(k.padding(toLength: 34, withPad: " ", startingAt: 0) + v) }
        lines.append("============ Serving benchmark result ============")
        switch plan.load {
        case .concurrency(let c): row("Load:", "closed loop, concurrency \(c)")
        case .rate(let r, let cap): row("Load:", "Poisson, \(f(r, 3)) req/s" + (cap.map { ", at most \($0) in flight" } ?? ""))
        }
        row("Requests completed / planned:", "\(completed) / \(planned)")
        row("Requests failed:", "\(failed)")
        if aborted > 0 { row("Requests cut by --duration-limit:", "\(aborted)") }
        if results.count < planned { row("Requests not started (limit):", "\(planned - results.count)") }
        row("Duration (s):", f(duration))
        row("Total input tokens:", "\(inputTokens)")
        if let c = cachedTokens { row("  of which prefix-cached:", "\(c)") }
        row("Total output tokens:", "\(outputTokens)")
        row("Request throughput (req/s):", f(Double(completed) / duration, 3))
        row("Input token throughput (tok/s):", f(Double(inputTokens) / duration))
        row("Output token throughput (tok/s):", f(Double(outputTokens) / duration))
        for (title, s) in [("Time to first token", ttft), ("Time per output token (excl. 1st)", tpot),
                           ("Inter-token latency", itl), ("End-to-end latency", e2e)] {
            lines.append("---------- \(title) (ms) ----------")
            row("  mean / p50:", "\(f(s.mean)) / \(f(s.p50))")
            row("  p90 / p99:", "\(f(s.p90)) / \(f(s.p99))")
        }
        if !errors.isEmpty {
            lines.append("---------- Errors ----------")
            for (m, c) in errors.prefix(5) { lines.append("  \(c) × \(m)") }
        }
        lines.append("==================================================")
        return lines.joined(separator: "\n")
    }

    /// One line of JSON with a fixed key order.
    func json(plan: BenchPlan) -> String {
        func num(_ v: Double) -> String { v.isFinite ? String(format: "%.4f", v) : "null" }
        func summary(_ s: BenchStats.Summary) -> String {
            "{\"mean\":\(num(s.mean)),\"p50\":\(num(s.p50)),\"p90\":\(num(s.p90)),\"p99\":\(num(s.p99))}"
        }
        var parts: [String] = []
        parts.append("\"completed\":\(completed)")
        parts.append("\"failed\":\(failed)")
        parts.append("\"aborted\":\(aborted)")
        parts.append("\"planned\":\(planned)")
        parts.append("\"duration_s\":\(num(duration))")
        parts.append("\"request_throughput\":\(num(Double(completed) / duration))")
        parts.append("\"output_tokens_per_s\":\(num(Double(outputTokens) / duration))")
        parts.append("\"input_tokens_per_s\":\(num(Double(inputTokens) / duration))")
        parts.append("\"total_input_tokens\":\(inputTokens)")
        parts.append("\"total_output_tokens\":\(outputTokens)")
        parts.append("\"cached_input_tokens\":\(cachedTokens.map(String.init) ?? "null")")
        parts.append("\"ttft_ms\":\(summary(ttft))")
        parts.append("\"tpot_ms\":\(summary(tpot))")
        parts.append("\"itl_ms\":\(summary(itl))")
        parts.append("\"e2e_ms\":\(summary(e2e))")
        switch plan.load {
        case .concurrency(let c):
            parts.append("\"concurrency\":\(c)")
            parts.append("\"request_rate\":null")
        case .rate(let r, let cap):
            parts.append("\"concurrency\":\(cap.map(String.init) ?? "null")")
            parts.append("\"request_rate\":\(num(r))")
        }
        parts.append("\"prompt_tokens\":\(plan.promptTokens)")
        parts.append("\"output_tokens\":\(plan.outputTokens)")
        parts.append("\"shared_prefix_tokens\":\(plan.sharedPrefixTokens)")
        parts.append("\"seed\":\(plan.seed)")
        let errs = errors.prefix(10).map { jsonString($0.0) + ":\($0.1)" }.joined(separator: ",")
        parts.append("\"errors\":{\(errs)}")
        return "{" + parts.joined(separator: ",") + "}"
    }
}

// MARK: - URL and loopback check

struct BenchTarget: Sendable {
    let host: String
    let port: Int
    let basePath: String
    let family: Int32
    var display: String { "http://\(family == AF_INET6 ? "[\(host)]" : host):\(port)\(basePath)" }

    init(url: String) throws {
        var rest = Substring(url)
        if rest.lowercased().hasPrefix("https://") {
            throw UsageError("--url: https is not supported (bench-serve talks to a loopback server over plain http)")
        }
        if rest.lowercased().hasPrefix("http://") { rest = rest.dropFirst(7) }
        else if rest.contains("://") { throw UsageError("--url must start with http://, got '\(url)'") }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        var authority = rest[..<slash]
        var path = String(rest[slash...])
        while path.hasSuffix("/") { path.removeLast() }
        // Users often paste the OpenAI base URL; the paths below add /v1 themselves.
        if path.hasSuffix("/v1") { path.removeLast(3) }
        guard !authority.contains("@") else { throw UsageError("--url must not carry credentials; use --api-key") }
        var hostPart: Substring
        var portPart: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw UsageError("--url: unclosed '[' in '\(url)'") }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            authority = authority[authority.index(after: close)...]
            if authority.hasPrefix(":") { portPart = authority.dropFirst() }
            else if !authority.isEmpty { throw UsageError("--url: unexpected '\(authority)' after the host") }
        } else if let colon = authority.lastIndex(of: ":") {
            hostPart = authority[..<colon]
            portPart = authority[authority.index(after: colon)...]
        } else {
            hostPart = authority
        }
        let port: Int
        if let portPart {
            guard let p = Int(portPart), p > 0, p <= 65535 else { throw UsageError("--url: bad port '\(portPart)'") }
            port = p
        } else {
            port = 80
        }
        let h = hostPart.lowercased()
        var v4 = in_addr()
        var v6 = in6_addr()
        if h == "localhost" {
            (host, family) = ("127.0.0.1", AF_INET)
        } else if inet_pton(AF_INET, h, &v4) == 1 {
            guard UInt32(bigEndian: v4.s_addr) >> 24 == 127 else {
                throw UsageError("--url: \(h) is not a loopback address; bench-serve only targets 127.0.0.0/8, localhost or ::1")
            }
            (host, family) = (h, AF_INET)
        } else if inet_pton(AF_INET6, h, &v6) == 1 {
            let bytes = withUnsafeBytes(of: &v6) { Array($0) }
            guard bytes == Array(repeating: 0, count: 15) + [1] else {
                throw UsageError("--url: \(h) is not a loopback address; bench-serve only targets 127.0.0.0/8, localhost or ::1")
            }
            (host, family) = (h, AF_INET6)
        } else {
            throw UsageError("--url: host '\(hostPart)' is not loopback; bench-serve only targets 127.0.0.0/8, localhost or ::1")
        }
        self.port = port
        self.basePath = path
    }
}

// MARK: - HTTP/1.1 client

enum BenchHTTPError: Error, CustomStringConvertible {
    case connect(String)
    case io(String)
    case timedOut
    case protocolError(String)
    var description: String {
        switch self {
        case .connect(let m): return "connection failed: \(m)"
        case .io(let m): return "I/O error: \(m)"
        case .timedOut: return "timed out"
        case .protocolError(let m): return "bad HTTP response: \(m)"
        }
    }
}

enum BenchStreamStatus { case ok, failedStatus(Int, String) }

/// Decodes `Transfer-Encoding: chunked` incrementally: feed it bytes as they arrive, get body bytes back.
struct ChunkedDecoder {
    private enum State { case size, data(Int), dataEnd, trailer, done }
    private var state = State.size
    private var line: [UInt8] = []
    var isDone: Bool { if case .done = state { return true } else { return false } }

    mutating func feed(_ input: ArraySlice<UInt8>) throws -> [UInt8] {
        var out: [UInt8] = []
        var i = input.startIndex
        while i < input.endIndex {
            switch state {
            case .done:
                return out
            case .data(let left):
                let n = min(left, input.endIndex - i)
                out.append(contentsOf: input[i..<i + n])
                i += n
                state = left - n == 0 ? .dataEnd : .data(left - n)
            case .size, .dataEnd, .trailer:
                let b = input[i]
                i += 1
                guard b == UInt8(ascii: "\n") else {
                    line.append(b)
                    guard line.count < 4096 else { throw BenchHTTPError.protocolError("chunk header too long") }
                    continue
                }
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                let text = String(decoding: line, as: UTF8.self)
                line.removeAll(keepingCapacity: true)
                switch state {
                case .size:
                    let hex = text.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
                    guard let size = Int(hex, radix: 16), size >= 0 else { throw BenchHTTPError.protocolError("bad chunk size '\(text)'") }
                    state = size == 0 ? .trailer : .data(size)
                case .dataEnd:
                    guard text.isEmpty else { throw BenchHTTPError.protocolError("missing CRLF after a chunk") }
                    state = .size
                default:
                    if text.isEmpty { state = .done }
                }
            }
        }
        return out
    }
}

/// Splits a byte stream into server-sent events and returns each event's data (several `data:` lines joined
/// by newlines). Comments (`:`), other fields and events without data are skipped; CRLF and LF both end lines.
struct SSEParser {
    private var line: [UInt8] = []
    private var data: [String] = []
    private var hasData = false

    mutating func feed(_ bytes: some Sequence<UInt8>) -> [String] {
        var events: [String] = []
        for b in bytes {
            if b != UInt8(ascii: "\n") { line.append(b); continue }
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            if line.isEmpty {
                if hasData { events.append(data.joined(separator: "\n")) }
                data.removeAll(keepingCapacity: true)
                hasData = false
            } else if line.first != UInt8(ascii: ":") {
                let colon = line.firstIndex(of: UInt8(ascii: ":")) ?? line.endIndex
                if String(decoding: line[..<colon], as: UTF8.self) == "data" {
                    var v = colon < line.endIndex ? line.index(after: colon) : colon
                    if v < line.endIndex && line[v] == UInt8(ascii: " ") { v += 1 }
                    data.append(String(decoding: line[v...], as: UTF8.self))
                    hasData = true
                }
            }
            line.removeAll(keepingCapacity: true)
        }
        return events
    }
}

/// One connection per request (`Connection: close`), blocking sockets with poll-based deadlines.
struct BenchHTTPClient: Sendable {
    let target: BenchTarget
    let apiKey: String?

    struct Response {
        var status: Int
        var body: [UInt8]
    }

    /// A plain request, body read whole.
    func request(method: String, path: String, body: [UInt8]?, timeout: Double) throws -> Response {
        let deadline = monotonicSeconds() + timeout
        let conn = try BenchConnection(target: target, deadline: deadline)
        defer { conn.close() }
        try conn.sendAll(requestHead(method: method, path: path, bodyCount: body?.count, accept: "application/json") + (body ?? []))
        let (status, headers) = try conn.readHead(deadline: deadline)
        var out: [UInt8] = []
        try conn.readBody(headers: headers, deadline: deadline) { bytes, _ in out.append(contentsOf: bytes); return out.count < 16 << 20 }
        return Response(status: status, body: out)
    }

    /// POSTs `body` and hands each SSE event's data to `onEvent` with the time its bytes arrived; `onEvent`
    /// returns false to stop reading. A non-200 answer returns its status and error message instead.
    func stream(path: String, body: [UInt8], deadline: Double, onEvent: (String, Double) -> Bool) throws -> BenchStreamStatus {
        let conn = try BenchConnection(target: target, deadline: deadline)
        defer { conn.close() }
        try conn.sendAll(requestHead(method: "POST", path: path, bodyCount: body.count, accept: "text/event-stream") + body)
        let (status, headers) = try conn.readHead(deadline: deadline)
        if status != 200 {
            var out: [UInt8] = []
            try? conn.readBody(headers: headers, deadline: deadline) { bytes, _ in out.append(contentsOf: bytes); return out.count < 65536 }
            var message = String(decoding: out.prefix(200), as: UTF8.self)
            if let obj = try? JSONSerialization.jsonObject(with: Data(out)) as? [String: Any],
               let err = obj["error"] as? [String: Any], let m = err["message"] as? String {
                message = m
            }
            return .failedStatus(status, message)
        }
        var sse = SSEParser()
        try conn.readBody(headers: headers, deadline: deadline) { bytes, t in
            for event in sse.feed(bytes) {
                if !onEvent(event, t) { return false }
            }
            return true
        }
        return .ok
    }

    private func requestHead(method: String, path: String, bodyCount: Int?, accept: String) -> [UInt8] {
        var h = "\(method) \(target.basePath)\(path) HTTP/1.1\r\n"
        h += "Host: \(target.family == AF_INET6 ? "[\(target.host)]" : target.host):\(target.port)\r\n"
        h += "User-Agent: tern-bench-serve\r\nAccept: \(accept)\r\nConnection: close\r\n"
        if let apiKey { h += "Authorization: Bearer \(apiKey)\r\n" }
        if let bodyCount { h += "Content-Type: application/json\r\nContent-Length: \(bodyCount)\r\n" }
        h += "\r\n"
        return Array(h.utf8)
    }
}

/// A connected socket with a read buffer. Not shared between threads.
final class BenchConnection {
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var closed = false
    private var scratch = [UInt8](repeating: 0, count: 65536)

    init(target: BenchTarget, deadline: Double) throws {
        fd = socket(target.family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchHTTPError.connect(String(cString: strerror(errno))) }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        // Bounds a blocking connect() and send(); reads use poll() against the deadline instead.
        let secs = max(deadline - monotonicSeconds(), 0.001)
        var tv = timeval(tv_sec: Int(secs), tv_usec: Int((secs - secs.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc: Int32
        if target.family == AF_INET6 {
            var addr = sockaddr_in6()
            addr.sin6_family = sa_family_t(AF_INET6)
            addr.sin6_port = in_port_t(UInt16(target.port).bigEndian)
            _ = inet_pton(AF_INET6, target.host, &addr.sin6_addr)
            rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        } else {
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(target.port).bigEndian)
            _ = inet_pton(AF_INET, target.host, &addr.sin_addr)
            rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        if rc != 0 {
            let e = errno
            Glibc.close(fd)
            closed = true
            throw e == EINPROGRESS || e == EAGAIN ? BenchHTTPError.timedOut : BenchHTTPError.connect(String(cString: strerror(e)).lowercased())
        }
    }

    deinit { close() }

    func close() {
        if !closed { Glibc.close(fd); closed = true }
    }

    func sendAll(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw BenchHTTPError.timedOut }
                throw BenchHTTPError.io("send: " + String(cString: strerror(errno)))
            }
            sent += n
        }
    }

    /// Reads more bytes into the buffer; false at end of stream.
    private func fill(deadline: Double) throws -> Bool {
        while true {
            let left = deadline - monotonicSeconds()
            if left <= 0 { throw BenchHTTPError.timedOut }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(min(left * 1000, 1_000_000).rounded(.up)))
            if r < 0 { if errno == EINTR { continue }; throw BenchHTTPError.io("poll: " + String(cString: strerror(errno))) }
            if r == 0 { continue }
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw BenchHTTPError.io("recv: " + String(cString: strerror(errno)))
            }
            if n == 0 { return false }
            buffer.append(contentsOf: scratch[0..<n])
            return true
        }
    }

    func readHead(deadline: Double) throws -> (Int, [String: String]) {
        var searchFrom = 0
        while true {
            var i = searchFrom
            while i + 4 <= buffer.count {
                if buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
                    let head = String(decoding: buffer[..<i], as: UTF8.self)
                    buffer.removeFirst(i + 4)
                    return try Self.parseHead(head)
                }
                i += 1
            }
            searchFrom = max(buffer.count - 3, 0)
            guard buffer.count < 65536 else { throw BenchHTTPError.protocolError("response head too large") }
            guard try fill(deadline: deadline) else {
                throw BenchHTTPError.protocolError(buffer.isEmpty ? "the server closed the connection without answering" : "truncated response head")
            }
        }
    }

    private static func parseHead(_ head: String) throws -> (Int, [String: String]) {
        let lines = head.components(separatedBy: "\r\n")
        let parts = lines[0].split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw BenchHTTPError.protocolError("bad status line '\(lines[0].prefix(80))'")
        }
        var headers: [String: String] = [:]
        for l in lines.dropFirst() {
            guard let c = l.firstIndex(of: ":") else { continue }
            headers[l[..<c].trimmingCharacters(in: .whitespaces).lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
        }
        return (status, headers)
    }

    /// Hands body bytes to `sink` as they arrive, with the arrival time; `sink` returns false to stop.
    func readBody(headers: [String: String], deadline: Double, sink: (ArraySlice<UInt8>, Double) throws -> Bool) throws {
        let chunked = headers["transfer-encoding"]?.lowercased().contains("chunked") ?? false
        var remaining = chunked ? nil : headers["content-length"].flatMap { Int($0) }
        var decoder = ChunkedDecoder()
        var t = monotonicSeconds()
        while true {
            if !buffer.isEmpty {
                let bytes = buffer[...]
                buffer.removeAll(keepingCapacity: true)
                if chunked {
                    let body = try decoder.feed(bytes)
                    if !body.isEmpty, try !sink(body[...], t) { return }
                    if decoder.isDone { return }
                } else if let left = remaining {
                    let n = min(left, bytes.count)
                    if try !sink(bytes.prefix(n), t) { return }
                    remaining = left - n
                    if left - n == 0 { return }
                } else {
                    if try !sink(bytes, t) { return }
                }
            }
            if remaining == 0 { return }
            guard try fill(deadline: deadline) else {
                if chunked { throw BenchHTTPError.protocolError("the stream ended inside a chunked body") }
                if let r = remaining, r > 0 { throw BenchHTTPError.protocolError("the body ended \(r) bytes early") }
                return
            }
            t = monotonicSeconds()
        }
    }
}
