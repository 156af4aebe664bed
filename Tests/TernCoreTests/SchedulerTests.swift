// The scheduler on its own (no forward pass): what a step computes for decoding and prefilling sequences under
// the token budget, preemption of the youngest when blocks run out, and the cost of scheduling 256 running
// sequences.
import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class SchedulerTests: XCTestCase {
    var tokenizer: Tokenizer!
    /// The engine keeps its live requests (sequences refer to them unowned); so does the test.
    var live: [RequestState] = []

    override func setUpWithError() throws {
        tokenizer = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf")).tokenizer
    }

    func makeScheduler(blocks: Int, budget: Int, maxRunning: Int = 256) throws -> (Scheduler, KVBlockPool) {
        let pool = try KVBlockPool(layers: 1, rowWidth: 32, blockSize: 16, storage: .f16, bytes: blocks * 16 * 2 * 32 * 2)
        let s = Scheduler(limits: .init(maxBatchTokens: budget, maxRunning: maxRunning, prefixCaching: false),
                          pool: pool, tokenizer: tokenizer) { _ in PagedKVMemory(pool: pool, capacity: 4096) }
        return (s, pool)
    }

    func request(_ id: Int, prompt: Int) -> RequestState {
        let r = RequestState(id: id, request: EngineRequest(promptTokens: (0..<prompt).map { Int32(($0 * 13 + id) % 200) }, maxTokens: 1000),
                             onEvent: { _ in })
        live.append(r)
        return r
    }

    /// What the model and the sampler would do after a step: the memories absorb the chunks, and every chunk
    /// that samples yields one token.
    func complete(_ s: Scheduler, _ out: SchedulerOutput) {
        for c in out.chunks { c.sequence.memory.commitForTest(c.count) }
        s.didCompute(out)
        for c in out.chunks where c.sample {
            c.sequence.promptDone = true
            c.sequence.appendOutput(7)
        }
        s.compact()
    }

    func testDecodesFirstThenPrefillChunksUnderTheBudget() throws {
        let (s, _) = try makeScheduler(blocks: 1000, budget: 64)
        s.enqueue(request(1, prompt: 100))
        var out = s.schedule()
        XCTAssertEqual(out.chunks.map(\.count), [64])
        XCTAssertFalse(out.chunks[0].sample)
        complete(s, out)
        s.enqueue(request(2, prompt: 10))
        out = s.schedule()
        // With a request waiting, request 1's prefill takes at most half of the step's cost (about 31 tokens at
        // position 64), and request 2 starts in the same step.
        XCTAssertEqual(out.chunks.count, 2)
        XCTAssertEqual(out.chunks[0].count, Scheduler.tokens(from: 64, within: 32))
        XCTAssertEqual(out.chunks[1].count, 10)
        XCTAssertEqual(out.chunks.map(\.sample), [false, true])
        complete(s, out)
        out = s.schedule()
        // Request 2 decodes; request 1 finishes its prompt (nobody waits: the decode is cheap, so it all fits).
        XCTAssertEqual(out.chunks.map(\.count), [1, 100 - 64 - Scheduler.tokens(from: 64, within: 32)])
        XCTAssertEqual(out.chunks.map(\.sample), [true, true])
        complete(s, out)
        out = s.schedule()
        XCTAssertEqual(out.chunks.map(\.count), [1, 1])
        XCTAssertEqual(Set(out.chunks.map(\.start)), [100, 11])
    }

    func testCostEstimateAndTimeBudgetCapLongPrefills() throws {
        // A token at position 2048 costs twice one at position 0; the inverse agrees with the estimate.
        XCTAssertEqual(Scheduler.cost(start: 2048, count: 1), 2, accuracy: 1e-9)
        for start in [0, 100, 3000] {
            let n = Scheduler.tokens(from: start, within: 300)
            XCTAssertLessThanOrEqual(Scheduler.cost(start: start, count: n), 300)
            XCTAssertGreaterThan(Scheduler.cost(start: start, count: n + 1), 300)
        }
        // A stream decodes while a 4000-token prompt prefills: deep in the prompt a chunk holds fewer tokens, and a
        // short request that arrives still starts at once.
        let (s, _) = try makeScheduler(blocks: 2000, budget: 512)
        s.enqueue(request(1, prompt: 20))
        complete(s, s.schedule())
        s.enqueue(request(2, prompt: 4000))
        var sizes: [Int] = []
        var out = s.schedule()
        while let c = out.chunks.first(where: { $0.sequence.request.id == 2 }), c.start + c.count < 3000 {
            sizes.append(c.count)
            XCTAssertLessThanOrEqual(out.cost, 512 + Double(Scheduler.minimumChunk))
            complete(s, out)
            out = s.schedule()
        }
        XCTAssertGreaterThan(sizes.first!, 400)
        XCTAssertLessThan(sizes.last!, 260, "chunks near position 3000 hold about half the tokens: \(sizes)")
        complete(s, out)
        s.enqueue(request(3, prompt: 8))
        out = s.schedule()
        XCTAssertEqual(out.chunks.last?.count, 8, "the short request starts in the same step")
        XCTAssertLessThanOrEqual(out.cost, 512 + Double(Scheduler.minimumChunk))
    }

    /// With a decoding cost limit (the engine's step-time target), a long prompt computes in small chunks while a
    /// stream is generating, and in full-budget chunks once it computes alone.
    func testDecodingCostLimitShrinksPrefillOnlyWhileStreamsGenerate() throws {
        let (s, _) = try makeScheduler(blocks: 2000, budget: 512)
        s.decodingCostLimit = 60
        s.enqueue(request(1, prompt: 3000))
        var out = s.schedule()
        XCTAssertEqual(out.chunks.first?.count, 512, "alone, a prompt takes the whole token budget")
        complete(s, out)
        s.enqueue(request(2, prompt: 10))
        out = s.schedule()
        complete(s, out)
        // Request 2 now decodes: every step stays near the limit, and request 1 still moves forward.
        var computed = s.running.first { $0.request.id == 1 }!.computed
        for _ in 0..<20 {
            out = s.schedule()
            XCTAssertTrue(out.chunks.contains { $0.sequence.request.id == 2 })
            let c = try XCTUnwrap(out.chunks.first { $0.sequence.request.id == 1 })
            XCTAssertGreaterThanOrEqual(c.count, Scheduler.minimumChunkWhileDecoding)
            XCTAssertLessThanOrEqual(out.cost, 60 + Scheduler.cost(start: c.start, count: Scheduler.minimumChunkWhileDecoding))
            complete(s, out)
            let now = s.running.first { $0.request.id == 1 }!.computed
            XCTAssertGreaterThan(now, computed)
            computed = now
        }
    }

    /// The engine's step-time model: from steps that take 10 ms plus 4 ms per cost unit it recovers both parts,
    /// and before any large step it errs on the side of small steps.
    func testStepTimeEstimateRecoversFixedAndPerUnitParts() {
        var e = StepTimeEstimate()
        XCTAssertNil(e.costUnits(within: 0.2))
        e.observe(cost: 4, seconds: 0.010 + 0.004 * 4)
        // Only small steps so far: 26 ms for 4 units reads as 6.5 ms a unit (fewer units than the truth's 47.5).
        XCTAssertEqual(e.costUnits(within: 0.2)!, 0.2 / 0.0065, accuracy: 0.01)
        for _ in 0..<40 {
            e.observe(cost: 2, seconds: 0.010 + 0.004 * 2)
            e.observe(cost: 100, seconds: 0.010 + 0.004 * 100)
        }
        // The fixed part is read from 2-unit steps (18 ms), so per unit (410 - 18) / 100 ms: 46.4 units against
        // the truth's 47.5, erring low.
        XCTAssertEqual(e.costUnits(within: 0.2)!, (0.2 - 0.018) / 0.00392, accuracy: 0.1)
        XCTAssertLessThanOrEqual(e.costUnits(within: 0.2)!, 47.5)
    }

    func testYoungestIsPreemptedWhenBlocksRunOut() throws {
        // 6 blocks of 16: prompts of 48 and 40 tokens take 3 blocks each; the older one's first decode needs a 4th.
        let (s, pool) = try makeScheduler(blocks: 6, budget: 512)
        s.enqueue(request(1, prompt: 48))
        s.enqueue(request(2, prompt: 40))
        complete(s, s.schedule())
        XCTAssertEqual(s.running.count, 2)
        XCTAssertEqual(pool.availableBlocks, 0)
        let out = s.schedule()
        XCTAssertEqual(out.preemptions, 1)
        XCTAssertEqual(out.chunks.count, 1)
        XCTAssertEqual(out.chunks[0].sequence.request.id, 1)
        XCTAssertEqual(s.preempted.first?.request.id, 2)
        XCTAssertEqual(s.preempted.first?.computed, 0)
    }

    func testSchedulingCostOf256RunningSequences() throws {
        let (s, _) = try makeScheduler(blocks: 256 * 40, budget: 512)
        for i in 0..<256 { s.enqueue(request(i, prompt: 64)) }
        // Admit and prefill everyone (64 tokens each, 8 per step).
        while s.running.count < 256 || s.running.contains(where: { !$0.promptDone }) {
            complete(s, s.schedule())
        }
        var times: [Double] = []
        for _ in 0..<200 {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let out = s.schedule()
            complete(s, out)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            XCTAssertEqual(out.chunks.count, 256)
        }
        times.sort()
        let median = times[times.count / 2]
        print("scheduler: 256 running sequences, per step median \(String(format: "%.3f", median)) ms, p90 \(String(format: "%.3f", times[times.count * 9 / 10])) ms")
        XCTAssertLessThan(median, 1.0, "per-step scheduling cost of 256 sequences")
    }
}

extension SequenceMemory {
    /// Stands in for the model's forward pass, which commits what it stored.
    func commitForTest(_ n: Int) { (self as? KVMemory)?.commit(n) }
}
