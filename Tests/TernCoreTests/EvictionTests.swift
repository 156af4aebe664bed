// KV eviction (window, alisa, dms): each policy against the float64 reference of scripts/make_eviction_reference.py
// (the positions every layer and KV head keeps after a scripted run, and the logits computed with exactly those
// positions), a budget the context never reaches changes nothing, and in the engine: memory bounded by the
// budget, forks, prefix hits, preemption and cancellation under every policy with every block free at the end.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class EvictionTests: XCTestCase {
    struct Reference: Decodable {
        struct Case: Decodable {
            var logits: [[Double]]
            var kept: [[[Int32]]]
        }
        var tokens: [Int32]
        var schedule: [Int]
        var budget: Int
        var sink_tokens: Int
        var recent_window: Int
        var cases: [String: Case]
    }

    func fixtureModel() throws -> LoadedModel { try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf")) }

    func testPoliciesMatchFloat64Reference() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("llama/eviction_reference.json")))
        let ref = try JSONDecoder().decode(Reference.self, from: data)
        let m = try fixtureModel()
        let cfg = m.llama!.config
        let vocab = m.model.vocabularySize
        let ws = m.model.makeWorkspace(maxTokens: 16, maxContext: 128, pool: WorkerPool(threads: 2))
        // Whole rows together and each KV head's rows together (the engine's layout): evictions move per head.
        for (name, heads) in ["none", "window", "alisa", "dms"].flatMap({ n in [(n, 1), (n, cfg.kvHeadCount)] }) {
            let expected = try XCTUnwrap(ref.cases[name])
            // Blocks of 16 positions, like the server's: the budget is one block, a 5-row chunk spills into a second.
            let pool = try KVBlockPool(layers: 2, rowWidth: 32, blockSize: 16, storage: .f32, bytes: 8 * 16 * 2 * 2 * 32 * 4,
                                       kvHeads: heads)
            let memory = PagedKVMemory(pool: pool, capacity: 128)
            let settings = EvictionSettings(policy: EvictionPolicy(rawValue: name)!, budget: ref.budget,
                                            sinkTokens: ref.sink_tokens, recentWindow: ref.recent_window,
                                            decayHorizon: ref.recent_window, decodeScoreInterval: 1)
            memory.enableEviction(settings, kvHeads: cfg.kvHeadCount, headDim: cfg.headDim, longest: ref.tokens.count)
            XCTAssertEqual(memory.eviction == nil, name == "none")
            var start = 0
            for (i, n) in ref.schedule.enumerated() {
                let sink = memory.scoreSink(forPass: n)
                let logits = try m.model.forward([ForwardItem(tokens: Array(ref.tokens[start..<(start + n)]), memory: memory,
                                                              logitRows: (n - 1)..<n, scoreSink: sink)], workspace: ws)
                var worst = 0.0
                for j in 0..<vocab { worst = max(worst, abs(Double(logits[j]) - expected.logits[i][j])) }
                XCTAssertLessThan(worst, 2e-4, "\(name), pool kvHeads \(heads): logits of chunk \(i) (positions up to \(start + n - 1))")
                memory.applyEviction()
                start += n
                XCTAssertEqual(memory.storedRows(group: 0), min(start, name == "none" ? start : ref.budget), name)
            }
            for l in 0..<cfg.layerCount {
                for h in 0..<cfg.kvHeadCount {
                    let kept = memory.eviction.map { $0.keptPositions(layer: l, kvHead: h).sorted() } ?? (0..<Int32(start)).map { $0 }
                    XCTAssertEqual(kept, expected.kept[l][h], "\(name), pool kvHeads \(heads): positions kept by layer \(l), KV head \(h)")
                }
            }
            // The budget is real memory: the emptied second block went back to the pool.
            let rows = memory.storedRows(group: 0)
            XCTAssertEqual(pool.usedBlocks, (rows + 15) / 16, name)
            memory.releaseAll()
            XCTAssertEqual(pool.usedBlocks, 0)
            XCTAssertNil(pool.checkInvariants())
        }
    }

    func makeEngine(_ m: LoadedModel, eviction: EvictionSettings, kvBytes: Int = 64 << 20, context: Int = 128) throws -> Engine {
        var c = EngineConfiguration(threads: 2, contextLength: context, kvCacheBytes: kvBytes)
        c.blockSize = 4
        c.kvStorage = .f32
        c.maxBatchTokens = 32
        c.eviction = eviction
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        return e
    }

    /// A budget the sequence never exceeds evicts nothing and scores nothing: the same tokens as without a policy.
    func testBudgetBeyondTheContextChangesNothing() throws {
        let m = try fixtureModel()
        let prompt = EngineTests.prompts(count: 1) { _ in 20 }[0]
        var outputs: [[Int32]] = []
        for policy in EvictionPolicy.allCases {
            let e = try makeEngine(m, eviction: EvictionSettings(policy: policy, budget: 128))
            defer { e.stop() }
            let c = try run(e, [EngineRequest(promptTokens: prompt, maxTokens: 60, ignoreEOS: true)])[0]
            outputs.append(try XCTUnwrap(c.tokens[0]))
            XCTAssertEqual(e.metrics().kvEvictedTokens[policy] ?? 0, 0)
            assertAllBlocksFree(e)
        }
        XCTAssertEqual(outputs.count, 4)
        for o in outputs.dropFirst() { XCTAssertEqual(o, outputs[0]) }
    }

    /// Under each policy a long generation holds no more than its budget (plus a block being filled): the pool's
    /// used blocks stay bounded while it runs, and the evictions are counted.
    func testGenerationStaysWithinTheBudget() throws {
        let m = try fixtureModel()
        for policy in [EvictionPolicy.window, .alisa, .dms] {
            let e = try makeEngine(m, eviction: EvictionSettings(policy: policy, budget: 16))
            defer { e.stop() }
            let c = EventCollector()
            let peak = PeakBlocks()
            c.onToken = { [weak e] in if let e { peak.observe(e.metrics().kvBlocksUsed) } }
            _ = try e.submit(EngineRequest(promptTokens: EngineTests.prompts(count: 1) { _ in 40 }[0], maxTokens: 80, ignoreEOS: true)) { c.handle($0) }
            XCTAssertTrue(c.wait())
            XCTAssertEqual(c.tokens[0]?.count, 80, "\(policy)")
            // 16 kept positions in blocks of 4, plus the rows of one step (32 tokens of the prompt at most) = 12 blocks.
            XCTAssertLessThanOrEqual(peak.value, 12, "\(policy): blocks in use")
            // Every position computed past the 16th was evicted (the last step's eviction is skipped: it finished).
            XCTAssertEqual(e.metrics().kvEvictedTokens[policy] ?? 0, 119 - 16 - 1, accuracy: 1, "\(policy)")
            assertAllBlocksFree(e)
        }
    }

    /// Forks (n > 1) share the prompt's blocks and copy before their evictions write; a second request finds the
    /// prompt in the prefix cache (published before any eviction) and evicts its own copy; preemption in a tiny
    /// pool and cancellation mid-stream: the outputs stay deterministic and every block is free at the end.
    func testForksPrefixHitsPreemptionAndCancelUnderEveryPolicy() throws {
        let m = try fixtureModel()
        let prompt = EngineTests.prompts(count: 1) { _ in 24 }[0]
        for policy in [EvictionPolicy.window, .alisa, .dms] {
            let settings = EvictionSettings(policy: policy, budget: 16)
            let e = try makeEngine(m, eviction: settings)
            let first = try run(e, [EngineRequest(promptTokens: prompt, maxTokens: 40, ignoreEOS: true, n: 3)])[0]
            XCTAssertNil(first.failure)
            XCTAssertEqual(first.tokens[0], first.tokens[1], "\(policy): greedy forks agree")
            XCTAssertEqual(first.tokens[1], first.tokens[2], "\(policy): greedy forks agree")
            let again = try run(e, [EngineRequest(promptTokens: prompt, maxTokens: 40, ignoreEOS: true)])[0]
            XCTAssertGreaterThan(again.cached, 0, "\(policy): the prompt's blocks were cached before eviction")
            XCTAssertEqual(again.tokens[0]?.count, 40)
            // Cancelled mid-stream.
            let c = EventCollector()
            let seen = DispatchSemaphore(value: 0)
            c.onToken = { seen.signal() }
            let ticket = try e.submit(EngineRequest(promptTokens: prompt, maxTokens: 100, ignoreEOS: true)) { c.handle($0) }
            XCTAssertEqual(seen.wait(timeout: .now() + 30), .success)
            ticket.cancel()
            assertAllBlocksFree(e)
            e.stop()

            // A pool of 12 blocks of 4 (48 positions) for four sequences of 8 + 40: preemptions, then recomputation.
            let tiny = try makeEngine(m, eviction: settings, kvBytes: 12 * 2048)
            defer { tiny.stop() }
            let prompts = EngineTests.prompts(count: 4) { _ in 8 }
            let together = try run(tiny, prompts.map { EngineRequest(promptTokens: $0, maxTokens: 40, ignoreEOS: true) })
            for t in together {
                XCTAssertNil(t.failure, "\(policy)")
                XCTAssertEqual(t.tokens[0]?.count, 40, "\(policy)")
            }
            assertAllBlocksFree(tiny)
        }
    }

    /// Mamba has no KV to evict: a policy is ignored and the request runs as usual.
    func testRecurrentModelIgnoresThePolicy() throws {
        let m = try LoadedModel(path: TestPaths.fixture("mamba/mamba-f32.gguf"))
        XCTAssertFalse(Engine.canEvict(m))
        var c = EngineConfiguration(threads: 2, contextLength: 64, kvCacheBytes: 1 << 20)
        c.eviction = EvictionSettings(policy: .alisa, budget: 16)
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        defer { e.stop() }
        let out = try run(e, [EngineRequest(promptTokens: [1, 2, 3, 4], maxTokens: 30, ignoreEOS: true)])[0]
        XCTAssertEqual(out.tokens[0]?.count, 30)
    }
}

/// The largest value seen (written from the engine thread's event handler).
final class PeakBlocks: @unchecked Sendable {
    private let lock = NSLock()
    private var peak = 0
    func observe(_ v: Int) { lock.lock(); peak = max(peak, v); lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return peak }
}
