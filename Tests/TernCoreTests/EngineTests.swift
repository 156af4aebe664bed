// The batching engine: paged attention equals the contiguous cache, batched greedy output equals solo output,
// the prefix cache, copy-on-write forks, preemption in a tiny pool, cancellation, the bounded queue, and that
// every KV block is free again once requests end.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

/// Collects one request's events and waits for its end.
final class EventCollector: @unchecked Sendable {
    // Written on the engine thread, read by the test after `done` is signalled.
    private let lock = NSLock()
    private let done = DispatchSemaphore(value: 0)
    private(set) var texts: [Int: String] = [:]
    private(set) var tokens: [Int: [Int32]] = [:]
    private(set) var reasons: [Int: FinishReason] = [:]
    private(set) var cached = 0
    private(set) var usage: EngineUsage?
    private(set) var failure: String?
    private(set) var promptLogprobs: [TokenLogprob?] = []
    private(set) var tokenLogprobs: [TokenLogprob] = []
    var onToken: (@Sendable () -> Void)?

    func handle(_ e: EngineEvent) {
        lock.lock()
        switch e {
        case .started(let c): cached = c
        case .promptLogprobs(let l): promptLogprobs = l
        case .token(let choice, let token, let text, let lp):
            tokens[choice, default: []].append(token)
            texts[choice, default: ""] += text
            if let lp { tokenLogprobs.append(lp) }
        case .finished(let choice, let reason, let text):
            reasons[choice] = reason
            texts[choice, default: ""] += text
        case .completed(let u): usage = u; done.signal()
        case .failed(let m, _): failure = m; done.signal()
        }
        let cb = onToken
        lock.unlock()
        if case .token = e { cb?() }
    }

    func wait(_ seconds: Double = 120) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}

/// Engine tests' common steps (engine, Gemma 3 and speculation tests).
extension XCTestCase {
    /// Submits every request and waits until each has ended; their collectors, in order.
    func run(_ e: Engine, _ requests: [EngineRequest]) throws -> [EventCollector] {
        let collectors = requests.map { _ in EventCollector() }
        for (r, c) in zip(requests, collectors) { _ = try e.submit(r) { c.handle($0) } }
        for c in collectors { XCTAssertTrue(c.wait(), "request did not finish") }
        return collectors
    }

    func assertAllBlocksFree(_ e: Engine, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(e.waitUntilIdle(timeout: 10), file: file, line: line)
        // The engine is idle now: inspect the pool between steps.
        XCTAssertNil(e.pool.checkInvariants(), file: file, line: line)
        XCTAssertEqual(e.pool.availableBlocks, e.pool.blockCount, "blocks leaked", file: file, line: line)
    }
}

final class EngineTests: XCTestCase {
    /// Distinct deterministic prompts of the given lengths, within the fixture vocabulary.
    static func prompts(count: Int, length: (Int) -> Int) -> [[Int32]] {
        var out: [[Int32]] = []
        for i in 0..<count {
            var p: [Int32] = []
            for j in 0..<length(i) { p.append(Int32((j * 37 + i * 11) % 300)) }
            out.append(p)
        }
        return out
    }

    func fixtureModel() throws -> LoadedModel { try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf")) }

    func makeEngine(_ m: LoadedModel, kvBytes: Int = 64 << 20, blockSize: Int = 4, storage: KVStorage = .f32,
                    maxBatchTokens: Int = 64, context: Int = 128, maxQueue: Int = 64) throws -> Engine {
        var c = EngineConfiguration(threads: 2, contextLength: context, kvCacheBytes: kvBytes)
        c.blockSize = blockSize
        c.kvStorage = storage
        c.maxBatchTokens = maxBatchTokens
        c.maxQueue = maxQueue
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        return e
    }

    func testPagedAttentionEqualsContiguous() throws {
        let m = try fixtureModel()
        let tokens: [Int32] = [317, 313, 11, 258, 220, 66, 265, 310, 308, 258, 302, 265]
        let ws = m.model.makeWorkspace(maxTokens: 32, maxContext: 64, pool: WorkerPool(threads: 2))
        let a = try m.model.forward(tokens: tokens, memory: m.model.makeMemory(capacity: 64), workspace: ws, logitRows: 0..<12)
        let contiguous = Array(UnsafeBufferPointer(start: a, count: 12 * m.model.vocabularySize))
        // Whole rows together (one "head" of 32 values) and each KV head's rows together, as the engine keeps them.
        let kvHeads = try XCTUnwrap(m.llama).config.kvHeadCount
        XCTAssertGreaterThan(kvHeads, 1)
        for (storage, heads) in [(KVStorage.f32, 1), (.f32, kvHeads), (.f16, kvHeads)] {
            let pool = try KVBlockPool(layers: 2, rowWidth: 32, blockSize: 5, storage: storage, bytes: 1 << 20, kvHeads: heads)
            let paged = PagedKVMemory(pool: pool, capacity: 64)
            // Feed in uneven chunks so blocks fill across calls.
            var got: [Float] = []
            for range in [0..<3, 3..<9, 9..<12] {
                let p = try m.model.forward(tokens: Array(tokens[range]), memory: paged, workspace: ws, logitRows: 0..<range.count)
                got += Array(UnsafeBufferPointer(start: p, count: range.count * m.model.vocabularySize))
            }
            let maxDiff = zip(got, contiguous).map { abs($0 - $1) }.max()!
            let scale = contiguous.map(abs).max()!
            switch storage {
            case .f32: XCTAssertEqual(maxDiff, 0, "f32 paged attention must equal the contiguous cache exactly")
            case .f16: XCTAssertLessThan(maxDiff / scale, 1e-3, "f16 KV storage error")
            case .q8_0: break
            }
        }
    }

    /// q8_0 KV blocks need head slices of whole 32-value blocks, so they are checked on SmolLM2 (head dim 64).
    func testQ8KVStorageOnRealModel() throws {
        let m = try LoadedModel(path: try TestPaths.requireDefaultModel())
        let llama = try XCTUnwrap(m.llama)
        let prompt = m.promptTokens(text: "The capital of France is Paris. The capital of Italy is")
        let ws = m.model.makeWorkspace(maxTokens: 64, maxContext: 128, pool: WorkerPool(threads: 2))
        let v = m.model.vocabularySize
        let a = try m.model.forward(tokens: prompt, memory: m.model.makeMemory(capacity: 128), workspace: ws,
                                    logitRows: (prompt.count - 1)..<prompt.count)
        let exact = Array(UnsafeBufferPointer(start: a, count: v))
        let pool = try KVBlockPool(layers: llama.config.layerCount, rowWidth: llama.kvDim, blockSize: 16, storage: .q8_0, bytes: 8 << 20,
                                   kvHeads: llama.config.kvHeadCount)
        let b = try m.model.forward(tokens: prompt, memory: PagedKVMemory(pool: pool, capacity: 128), workspace: ws,
                                    logitRows: (prompt.count - 1)..<prompt.count)
        let q8 = Array(UnsafeBufferPointer(start: b, count: v))
        // 8-bit keys and values add noise of the size 8-bit activations add (up to ~0.5 each, measured against
        // float64); the likely tokens must stay put.
        let top = (0..<v).sorted { exact[$0] > exact[$1] }.prefix(10)
        let diff = top.map { abs(q8[$0] - exact[$0]) }.max()!
        XCTAssertLessThan(diff, 1.0, "q8_0 KV moved the top-10 logits by \(diff)")
        XCTAssertEqual(Sampler.argmax(b, v), Sampler.argmax(a, v))
        // Through the engine: a greedy answer with q8_0 blocks names Rome like the f32 cache does.
        var c = EngineConfiguration(threads: 2, contextLength: 256, kvCacheBytes: 16 << 20)
        c.kvStorage = .q8_0
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        defer { e.stop() }
        let col = EventCollector()
        _ = try e.submit(EngineRequest(promptTokens: prompt, maxTokens: 4)) { col.handle($0) }
        XCTAssertTrue(col.wait())
        XCTAssertTrue(col.texts[0]?.contains("Rome") ?? false, col.texts[0] ?? "")
    }

    func testBatchedGreedyEqualsSolo() throws {
        let m = try fixtureModel()
        let e = try makeEngine(m)
        defer { e.stop() }
        let prompts = Self.prompts(count: 8) { i in 3 + i * 2 }
        let solo = try prompts.map { p in try run(e, [EngineRequest(promptTokens: p, maxTokens: 12, ignoreEOS: true)])[0].tokens[0]! }
        let batched = try run(e, prompts.map { EngineRequest(promptTokens: $0, maxTokens: 12, ignoreEOS: true) }).map { $0.tokens[0]! }
        XCTAssertEqual(batched, solo)
        // And both equal the single-sequence generator over the contiguous cache.
        let gen = TextGenerator(loaded: m, contextLength: 128, threads: 1)
        XCTAssertEqual(try gen.generate(GenerationRequest(promptTokens: prompts[3], maxTokens: 12, ignoreEOS: true)).tokens, solo[3])
        assertAllBlocksFree(e)
    }

    func testPrefixCacheReusesBlocks() throws {
        let m = try fixtureModel()
        let e = try makeEngine(m)
        defer { e.stop() }
        let prompt: [Int32] = (0..<40).map { Int32(($0 * 7) % 300) }
        let first = try run(e, [EngineRequest(promptTokens: prompt, maxTokens: 6, ignoreEOS: true)])[0]
        XCTAssertEqual(first.cached, 0)
        let second = try run(e, [EngineRequest(promptTokens: prompt, maxTokens: 6, ignoreEOS: true)])[0]
        XCTAssertEqual(second.cached, 36, "whole blocks of the prompt minus the last token")
        XCTAssertEqual(second.usage?.cachedPromptTokens, 36)
        XCTAssertEqual(second.tokens[0], first.tokens[0])
        let metrics = e.metrics()
        XCTAssertGreaterThan(metrics.prefixCacheHits, 0)
        // A prompt sharing only the first 10 tokens reuses 2 blocks.
        let other = Array(prompt[0..<10]) + [5, 6, 7, 8, 9, 10]
        XCTAssertEqual(try run(e, [EngineRequest(promptTokens: other, maxTokens: 2, ignoreEOS: true)])[0].cached, 8)
        assertAllBlocksFree(e)
    }

    func testForkedChoicesCopyOnWrite() throws {
        let m = try fixtureModel()
        let e = try makeEngine(m)
        defer { e.stop() }
        let prompt: [Int32] = [317, 313, 11, 258, 220, 66, 265]   // 7 tokens: the last block is shared and partial
        let c = try run(e, [EngineRequest(promptTokens: prompt, maxTokens: 10, ignoreEOS: true, n: 3)])[0]
        XCTAssertEqual(c.tokens.count, 3)
        XCTAssertEqual(c.tokens[0], c.tokens[1])
        XCTAssertEqual(c.tokens[1], c.tokens[2])
        XCTAssertEqual(c.usage?.completionTokens, 30)
        let solo = try run(e, [EngineRequest(promptTokens: prompt, maxTokens: 10, ignoreEOS: true)])[0]
        XCTAssertEqual(solo.tokens[0], c.tokens[0])
        // Sampled choices differ from each other.
        let sampled = try run(e, [EngineRequest(promptTokens: prompt, maxTokens: 10, sampling: SamplingParameters(temperature: 1.5, seed: 3), ignoreEOS: true, n: 2)])[0]
        XCTAssertNotEqual(sampled.tokens[0], sampled.tokens[1])
        assertAllBlocksFree(e)
    }

    func testPreemptionInTinyPoolKeepsOutputs() throws {
        let m = try fixtureModel()
        // 2 layers × 32 floats × 2 (K, V) × 4 tokens × 4 bytes = 2 KiB per block; 12 blocks = 48 tokens.
        let e = try makeEngine(m, kvBytes: 12 * 2048, blockSize: 4, maxBatchTokens: 32)
        defer { e.stop() }
        let prompts = Self.prompts(count: 4) { _ in 8 }
        var solo: [[Int32]] = []
        for p in prompts { solo.append(try run(e, [EngineRequest(promptTokens: p, maxTokens: 20, ignoreEOS: true)])[0].tokens[0]!) }
        let together = try run(e, prompts.map { EngineRequest(promptTokens: $0, maxTokens: 20, ignoreEOS: true) })
        XCTAssertEqual(together.map { $0.tokens[0]! }, solo)
        XCTAssertGreaterThan(e.metrics().preemptions, 0, "the pool was meant to run out")
        assertAllBlocksFree(e)
    }

    func testCancelFreesMemoryAndQueueIsBounded() throws {
        let m = try fixtureModel()
        let e = try makeEngine(m, maxQueue: 2)
        defer { e.stop() }
        let c = EventCollector()
        let seen = DispatchSemaphore(value: 0)
        c.onToken = { seen.signal() }
        let ticket = try e.submit(EngineRequest(promptTokens: [1, 2, 3], maxTokens: 100_000, ignoreEOS: true)) { c.handle($0) }
        XCTAssertEqual(seen.wait(timeout: .now() + 10), .success)
        ticket.cancel()
        assertAllBlocksFree(e)
        XCTAssertLessThan(c.tokens[0]?.count ?? 0, 1000)

        // Fill the queue faster than the engine drains it.
        var rejected = 0
        for _ in 0..<50 {
            do { _ = try e.submit(EngineRequest(promptTokens: [1, 2, 3], maxTokens: 50, ignoreEOS: true)) { _ in } }
            catch EngineSubmitError.queueFull { rejected += 1 }
        }
        XCTAssertGreaterThan(rejected, 0)
        XCTAssertThrowsError(try e.submit(EngineRequest(promptTokens: Array(repeating: 5, count: 200), maxTokens: 1)) { _ in })
        assertAllBlocksFree(e)
    }

    func testEchoPromptLogprobsMatchDirectComputation() throws {
        let m = try fixtureModel()
        let e = try makeEngine(m)
        defer { e.stop() }
        let prompt: [Int32] = [317, 313, 11, 258, 220, 66]
        let c = try run(e, [EngineRequest(promptTokens: prompt, maxTokens: 0, logprobs: 2, promptLogprobs: true)])[0]
        XCTAssertEqual(c.promptLogprobs.count, prompt.count)
        XCTAssertNil(c.promptLogprobs[0] as TokenLogprob?)
        // Reference: log-softmax of the contiguous forward pass.
        let ws = m.model.makeWorkspace(maxTokens: 16, maxContext: 16, pool: WorkerPool(threads: 1))
        let p = try m.model.forward(tokens: prompt, memory: m.model.makeMemory(capacity: 16), workspace: ws, logitRows: 0..<prompt.count)
        let v = m.model.vocabularySize
        for i in 1..<prompt.count {
            let row = Array(UnsafeBufferPointer(start: p + (i - 1) * v, count: v)).map(Double.init)
            let mx = row.max()!
            let lse = mx + log(row.map { exp($0 - mx) }.reduce(0, +))
            let lp = try XCTUnwrap(c.promptLogprobs[i])
            XCTAssertEqual(lp.token, prompt[i])
            XCTAssertEqual(Double(lp.logprob), row[Int(prompt[i])] - lse, accuracy: 1e-3)
            XCTAssertEqual(lp.top.count, 2)
        }
        XCTAssertEqual(c.usage?.completionTokens, 0)
        assertAllBlocksFree(e)
    }
}

/// The same engine serves recurrent models: each sequence gets a fixed-size state slot instead of KV blocks.
final class MambaEngineTests: XCTestCase {
    func testMambaBatchedEqualsSoloAndForks() throws {
        for file in ["mamba/mamba-f32.gguf", "mamba/mamba2-f32.gguf"] {
            let m = try LoadedModel(path: TestPaths.fixture(file))
            var c = EngineConfiguration(threads: 2, contextLength: 64, kvCacheBytes: 1 << 20)
            c.maxBatchTokens = 32
            let e = try Engine(loaded: m, configuration: c)
            e.start()
            defer { e.stop() }
            XCTAssertNil(e.kvPool)
            let prompts = EngineTests.prompts(count: 5) { i in 2 + i * 3 }
            func run(_ reqs: [EngineRequest]) throws -> [EventCollector] {
                let cs = reqs.map { _ in EventCollector() }
                for (r, col) in zip(reqs, cs) { _ = try e.submit(r) { col.handle($0) } }
                for col in cs { XCTAssertTrue(col.wait()) }
                return cs
            }
            let solo = try prompts.map { try run([EngineRequest(promptTokens: $0, maxTokens: 8, ignoreEOS: true)])[0].tokens[0]! }
            let batched = try run(prompts.map { EngineRequest(promptTokens: $0, maxTokens: 8, ignoreEOS: true) }).map { $0.tokens[0]! }
            XCTAssertEqual(batched, solo, file)
            let gen = TextGenerator(loaded: m, contextLength: 64, threads: 1)
            XCTAssertEqual(try gen.generate(GenerationRequest(promptTokens: prompts[2], maxTokens: 8, ignoreEOS: true)).tokens, solo[2], file)
            let forked = try run([EngineRequest(promptTokens: prompts[1], maxTokens: 8, ignoreEOS: true, n: 3)])[0]
            XCTAssertEqual(forked.tokens[0], solo[1])
            XCTAssertEqual(forked.tokens[2], solo[1])
            XCTAssertTrue(e.waitUntilIdle(timeout: 5))
        }
    }
}

final class EngineLimitTests: XCTestCase {
    /// A sequence that outgrows the whole KV store ends with `length` instead of being recomputed forever.
    func testSequenceLongerThanThePoolEnds() throws {
        let m = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        var c = EngineConfiguration(threads: 2, contextLength: 128, kvCacheBytes: 6 * 2048)   // 6 f32 blocks of 4 = 24 tokens
        c.blockSize = 4
        c.kvStorage = .f32
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        defer { e.stop() }
        let col = EventCollector()
        _ = try e.submit(EngineRequest(promptTokens: [1, 2, 3, 4, 5], maxTokens: 100, ignoreEOS: true)) { col.handle($0) }
        XCTAssertTrue(col.wait(20))
        XCTAssertEqual(col.reasons[0], .length)
        // 24 positions hold the 5 prompt tokens and 19 fed outputs; the 20th output was sampled from the last logits.
        XCTAssertEqual(col.tokens[0]?.count ?? 0, 24 - 5 + 1)
        XCTAssertTrue(e.waitUntilIdle(timeout: 5))
        XCTAssertEqual(e.pool.availableBlocks, e.pool.blockCount)
    }
}

/// Threads come and go with their owners: an engine that is stopped and dropped leaves no thread behind.
final class EngineLifecycleTests: XCTestCase {
    /// Threads of this process with the given name (Linux: /proc/self/task/*/comm).
    func threads(named name: String) -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.filter { (try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) == name }.count
    }

    func testStoppedEngineAndDroppedPoolsFreeTheirThreads() throws {
        let m = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let engines0 = threads(named: "tern-engine"), workers0 = threads(named: "tern-worker")
        do {
            var c = EngineConfiguration(threads: 3, contextLength: 64, kvCacheBytes: 8 << 20)
            c.kvStorage = .f32
            let e = try Engine(loaded: m, configuration: c)
            e.start()
            for _ in 0..<100 where threads(named: "tern-engine") == engines0 { Thread.sleep(forTimeInterval: 0.01) }
            XCTAssertEqual(threads(named: "tern-engine"), engines0 + 1)
            XCTAssertEqual(threads(named: "tern-worker"), workers0 + 2)
            let done = EventCollector()
            _ = try e.submit(EngineRequest(promptTokens: [1, 2, 3], maxTokens: 4)) { done.handle($0) }
            XCTAssertTrue(done.wait())
            e.stop()
            e.stop()   // idempotent
        }
        do {
            let gen = TextGenerator(loaded: m, contextLength: 64, threads: 2)
            _ = try gen.generate(EngineRequest(promptTokens: [1, 2, 3], maxTokens: 3))
        }
        // Joined threads leave /proc at once; give the kernel a moment anyway.
        for _ in 0..<50 where threads(named: "tern-engine") != engines0 || threads(named: "tern-worker") != workers0 {
            Thread.sleep(forTimeInterval: 0.02)
        }
        XCTAssertEqual(threads(named: "tern-engine"), engines0)
        XCTAssertEqual(threads(named: "tern-worker"), workers0)
    }
}

/// Shared prompts: computed once when many requests arrive together, read once per step by RelayAttention, and the
/// results equal attention without relay.
final class SharedPromptTests: XCTestCase {
    func fixtureModel() throws -> LoadedModel { try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf")) }

    func runAlone(_ e: Engine, _ r: EngineRequest) throws -> [Int32]? {
        let c = EventCollector()
        _ = try e.submit(r) { c.handle($0) }
        XCTAssertTrue(c.wait())
        return c.tokens[0]
    }

    func makeEngine(_ m: LoadedModel, relay: Bool) throws -> Engine {
        var c = EngineConfiguration(threads: 2, contextLength: 256, kvCacheBytes: 64 << 20)
        c.blockSize = 4
        c.kvStorage = .f32
        c.maxBatchTokens = 64
        c.relay = relay
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        return e
    }

    /// Logits of forks decoding different tokens after a shared prefix: relay on equals relay off bit for bit (the
    /// members continue the shared pass's softmax state), on the f32 fixture and on the real quantized model, whose
    /// 8-bit activations would carry any rounding difference on to the logits.
    func testRelayLogitsEqualPlainAttentionExactly() throws {
        var cases = [(TestPaths.fixture("llama/llama-f32.gguf"), 48, 4, 3)]
        if let smol = try? TestPaths.requireDefaultModel() { cases += [(smol, 80, 16, 2), (smol, 70, 16, 3)] }
        for (path, prefixLength, blockSize, forkCount) in cases {
            let m = try LoadedModel(path: path)
            let llama = try XCTUnwrap(m.llama)
            let prefix: [Int32] = (0..<prefixLength).map { Int32(($0 * 11 + 3) % 300) }
            var results: [[Float]] = []
            for relay in [false, true] {
                let pool = try KVBlockPool(layers: llama.config.layerCount, rowWidth: llama.kvDim, blockSize: blockSize, storage: .f32,
                                           bytes: 16 << 20, kvHeads: llama.config.kvHeadCount)
                let ws = m.model.makeWorkspace(maxTokens: 128, maxContext: 256, pool: WorkerPool(threads: 2))
                ws.relayEnabled = relay
                let a = PagedKVMemory(pool: pool, capacity: 256)
                _ = try m.model.forward(tokens: prefix, memory: a, workspace: ws, logitRows: 0..<0)
                var forks = [a]
                for _ in 1..<forkCount { forks.append(a.fork()) }
                // Two more steps: the forks' own blocks grow apart after the shared prefix.
                var logits: [Float] = []
                for step in 0..<2 {
                    let items = forks.enumerated().map { ForwardItem(tokens: [Int32(5 + $0.offset * 7 + step)], memory: $0.element, logitRows: 0..<1) }
                    let p = try m.model.forward(items, workspace: ws)
                    logits += Array(UnsafeBufferPointer(start: p, count: forkCount * m.model.vocabularySize))
                    XCTAssertEqual(ws.attentionStats.relayGroups, relay ? 1 : 0, path)
                    if relay { XCTAssertEqual(ws.attentionStats.relayPrefixTokensRead, prefixLength / 16 * 16, path) }
                }
                results.append(logits)
            }
            XCTAssertTrue(results[0] == results[1], "\(path): relay changed the logits")
        }
    }

    /// Eight requests with the same long system prompt, submitted together: one computes it, seven attach to its
    /// blocks; outputs equal the relay-off engine's and each request alone.
    func testSharedPromptComputedOnceAndRelayedExactly() throws {
        let m = try fixtureModel()
        let system: [Int32] = (0..<120).map { Int32(($0 * 13 + 1) % 300) }
        var requests: [EngineRequest] = []
        for i in 0..<8 {
            let tail: [Int32] = [Int32(10 + i), Int32(20 + i), Int32(30 + i)]
            requests.append(EngineRequest(promptTokens: system + tail, maxTokens: 10, ignoreEOS: true))
        }
        var outputs: [[[Int32]]] = []
        for relay in [true, false] {
            let e = try makeEngine(m, relay: relay)
            defer { e.stop() }
            let collectors = requests.map { _ in EventCollector() }
            for (r, c) in zip(requests, collectors) { _ = try e.submit(r) { c.handle($0) } }
            for c in collectors { XCTAssertTrue(c.wait()) }
            let cached = collectors.map { (c: EventCollector) in c.cached }
            XCTAssertEqual(cached.filter { $0 == 120 }.count, 7, "cached prompt tokens per request: \(cached)")
            let metrics = e.metrics()
            if relay {
                XCTAssertGreaterThan(metrics.relayPrefixTokensRead, 0)
                XCTAssertGreaterThan(metrics.relayPrefixTokensPerSequence, 2 * metrics.relayPrefixTokensRead)
            } else {
                XCTAssertEqual(metrics.relayPrefixTokensRead, 0)
            }
            outputs.append(collectors.map { $0.tokens[0]! })
            XCTAssertTrue(e.waitUntilIdle(timeout: 10))
            XCTAssertNil(e.pool.checkInvariants())
        }
        XCTAssertEqual(outputs[0], outputs[1])
        let alone = try makeEngine(m, relay: false)
        defer { alone.stop() }
        XCTAssertEqual(outputs[0][5], try runAlone(alone, requests[5]))
    }

    /// The request computing a shared prompt is cancelled while another waits for its blocks: the waiter computes
    /// the prompt itself and answers as if alone.
    func testWaiterProceedsWhenOwnerIsCancelled() throws {
        let m = try fixtureModel()
        let e = try makeEngine(m, relay: true)
        defer { e.stop() }
        let system: [Int32] = (0..<200).map { Int32(($0 * 17 + 5) % 300) }
        let owner = EventCollector(), waiter = EventCollector()
        let ticket = try e.submit(EngineRequest(promptTokens: system + [1, 2], maxTokens: 50, ignoreEOS: true)) { owner.handle($0) }
        _ = try e.submit(EngineRequest(promptTokens: system + [3, 4], maxTokens: 6, ignoreEOS: true)) { waiter.handle($0) }
        ticket.cancel()
        XCTAssertTrue(waiter.wait())
        let alone = try makeEngine(m, relay: false)
        defer { alone.stop() }
        XCTAssertEqual(waiter.tokens[0], try runAlone(alone, EngineRequest(promptTokens: system + [3, 4], maxTokens: 6, ignoreEOS: true)))
        XCTAssertTrue(e.waitUntilIdle(timeout: 10))
        XCTAssertEqual(e.pool.availableBlocks, e.pool.blockCount)
    }
}
