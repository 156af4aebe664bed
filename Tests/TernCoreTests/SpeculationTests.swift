// Speculative decoding: the proposers on their own; greedy and seeded outputs identical with and without
// speculation on the real default model; predicted outputs accepted and reported; the output distribution of a
// speculating request against the target's softmax (chi-square over many seeds, tiny-vocabulary model); rollback
// that keeps window groups readable; and the step-cost table the adaptive length reads.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class SpeculationTests: XCTestCase {
    // MARK: proposers

    func testNgramLookupProposesWhatFollowedTheLatestLongestMatch() {
        let lookup = NgramLookup(maxN: 3, minN: 1)
        //                 0  1  2  3  4  5  6  7  8  9 10 11
        let context: [Int32] = [5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 6, 7]
        // Suffix [3, 6, 7] never occurred before, [6, 7] did twice: the latest (ending at 8) wins.
        XCTAssertEqual(lookup.propose(context: context, source: context, limit: 3), [2, 3, 6])
        // The suffix's own occurrence does not count, and a proposal stops at the text's end.
        XCTAssertEqual(lookup.propose(context: [1, 2, 3, 1, 2], source: [1, 2, 3, 1, 2], limit: 5), [3, 1, 2])
        XCTAssertEqual(NgramLookup(maxN: 3, minN: 2).propose(context: [4, 1, 2, 9], source: [4, 1, 2, 9], limit: 4), [])
        XCTAssertEqual(lookup.propose(context: [1, 2], source: [1, 2], limit: 4), [])
        // The longest suffix is tried first: [1, 2, 3] matches once (→ 4), [2, 3] more recently (→ 5).
        let text: [Int32] = [1, 2, 3, 4, 2, 3, 5, 1, 2, 3]
        XCTAssertEqual(lookup.propose(context: text, source: text, limit: 1), [4])
        XCTAssertEqual(NgramLookup(maxN: 2, minN: 2).propose(context: text, source: text, limit: 1), [5])
        // Another source: the whole source may match.
        XCTAssertEqual(lookup.propose(context: [9, 1, 2], source: [1, 2, 8, 8], limit: 2), [8, 8])
    }

    func testPredictionCursorFollowsTheOutputAndFindsItsPlaceAgain() {
        let lookup = NgramLookup(maxN: 3, minN: 2)
        var cursor = PredictionCursor(tokens: [10, 11, 12, 13, 14, 15, 16])
        var context: [Int32] = [1, 2]
        XCTAssertEqual(cursor.propose(context: context, lookup: lookup, limit: 3), [10, 11, 12])
        for t: Int32 in [10, 11] { cursor.advance(past: t); context.append(t) }
        XCTAssertEqual(cursor.propose(context: context, lookup: lookup, limit: 2), [12, 13])
        // The output departs (an edit: 99 instead of 12, 13), then rejoins at 13.
        for t: Int32 in [99, 13] { cursor.advance(past: t); context.append(t) }
        XCTAssertNil(cursor.position)
        XCTAssertEqual(cursor.propose(context: context, lookup: lookup, limit: 2), [14, 15])
        XCTAssertEqual(cursor.position, 4)
        for t: Int32 in [14, 15, 16] { cursor.advance(past: t) }
        XCTAssertEqual(cursor.propose(context: context + [14, 15, 16], lookup: lookup, limit: 2), [], "the prediction is used up")
    }

    func testStepCostModelInterpolatesAndExtrapolates() {
        var m = StepCostModel()
        XCTAssertFalse(m.isCalibrated)
        m.calibrate(tokens: 1, seconds: 0.010)
        m.calibrate(tokens: 9, seconds: 0.030)
        XCTAssertTrue(m.isCalibrated)
        XCTAssertEqual(m.estimate(tokens: 5), 0.020, accuracy: 1e-12)
        XCTAssertEqual(m.estimate(tokens: 17), 0.050, accuracy: 1e-12, "past the largest size: the last slope")
        // Real steps that take twice the calibrated time (a longer context, a busier machine) scale every size,
        // also those no step uses any more.
        for _ in 0..<60 { m.observe(tokens: 5, seconds: 0.040) }
        XCTAssertEqual(m.scale, 2, accuracy: 1e-3)
        XCTAssertEqual(m.estimate(tokens: 9), 0.060, accuracy: 1e-4)
        XCTAssertEqual(m.estimate(tokens: 1), 0.020, accuracy: 1e-4)
        // Without calibration, real steps draw the curve.
        var bare = StepCostModel()
        bare.observe(tokens: 1, seconds: 0.010)
        XCTAssertFalse(bare.isCalibrated)
        bare.observe(tokens: 3, seconds: 0.014)
        XCTAssertTrue(bare.isCalibrated)
        XCTAssertEqual(bare.estimate(tokens: 2), 0.012, accuracy: 1e-12)
    }

    func testAcceptanceRateFollowsTheGeometricModel() {
        var r = AcceptanceRate(prior: 0.5)
        for _ in 0..<30 { r.record(drafted: 8, accepted: 8) }
        XCTAssertGreaterThan(r.value, 0.95)
        for _ in 0..<30 { r.record(drafted: 8, accepted: 0) }
        XCTAssertLessThan(r.value, 0.05)
        // Accepting 3 of 8 is three successes and one failure: α ≈ 3/4.
        for _ in 0..<40 { r.record(drafted: 8, accepted: 3) }
        XCTAssertEqual(r.value, 0.75, accuracy: 0.01)
    }

    // MARK: on the engine

    func makeEngine(_ m: LoadedModel, speculation: SpeculationConfiguration, context: Int = 512, blockSize: Int = 16,
                    relay: Bool = true) throws -> Engine {
        var c = EngineConfiguration(threads: 2, contextLength: context, kvCacheBytes: 64 << 20)
        c.blockSize = blockSize
        c.kvStorage = .f32
        c.maxBatchTokens = 256
        c.relay = relay
        c.speculation = speculation
        let e = try Engine(loaded: m, configuration: c)
        e.start()
        return e
    }

    /// `run`, and none of the requests failed.
    func runSucceeding(_ e: Engine, _ requests: [EngineRequest]) throws -> [EventCollector] {
        let collectors = try run(e, requests)
        for c in collectors { XCTAssertNil(c.failure) }
        return collectors
    }

    static let repeatPrompt = "Repeat the following text exactly. Text: The quick brown fox jumps over the lazy dog. Pack my box with "
        + "five dozen liquor jugs. How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. Repeated text:"
    static let codePrompt = "Rename the variable `count` to `total` in this code:\nfunc sum(_ xs: [Int]) -> Int {\n    var count = 0\n"
        + "    for x in xs { count += x }\n    return count\n}\nAnswer:\n"
    static let freePrompt = "Write a short story about a lighthouse keeper who finds a message in a bottle."

    func testGreedyOutputIsIdenticalWithSpeculation() throws {
        let m = try LoadedModel(path: try TestPaths.requireDefaultModel())
        let prompts = [Self.repeatPrompt, Self.codePrompt, Self.freePrompt].map {
            EngineRequest(promptTokens: try! m.chatPromptTokens(messages: [ChatMessage(role: "user", content: $0)]), maxTokens: 96)
        }
        let plain = try makeEngine(m, speculation: SpeculationConfiguration(mode: .off))
        let expected = try runSucceeding(plain, prompts).map { $0.tokens[0] ?? [] }
        plain.stop()
        for adaptive in [false, true] {
            var config = SpeculationConfiguration(mode: .ngram)
            config.adaptive = adaptive
            let e = try makeEngine(m, speculation: config)
            // One at a time (a lone stream), then all together (verification rows beside other decodes).
            var solo: [[Int32]] = []
            var repeatMetrics: SpeculationMetrics?
            for p in prompts {
                solo.append(try runSucceeding(e, [p])[0].tokens[0] ?? [])
                if repeatMetrics == nil { repeatMetrics = e.metrics().speculation }  // the repeat prompt runs first
            }
            let together = try runSucceeding(e, prompts)
            XCTAssertEqual(solo, expected, "adaptive \(adaptive): one stream")
            XCTAssertEqual(together.map { $0.tokens[0] ?? [] }, expected, "adaptive \(adaptive): batched")
            let metrics = e.metrics().speculation
            if metrics.draftedTokens > 0 { XCTAssertEqual(metrics.draftedByPosition.first, metrics.verifications) }
            // Adaptive lengths follow this machine's measured step costs (on a loaded machine it may decide not to
            // draft at all; its model has tests of its own above), so the draft counts are checked with fixed-length
            // drafts. The repeat prompt's output follows its prompt, so most of its drafts are accepted (the other
            // two prompts' drafts mostly are not, so the totals say little).
            if !adaptive {
                XCTAssertGreaterThan(metrics.draftedTokens, 0)
                let r = try XCTUnwrap(repeatMetrics)
                XCTAssertGreaterThan(r.draftedTokens, 0)
                XCTAssertGreaterThan(r.acceptedTokens, r.draftedTokens / 2, "the repeat prompt is mostly accepted")
            }
            assertAllBlocksFree(e)  // rejected drafts' blocks went back
            e.stop()
        }
    }

    func testPredictedOutputIsAcceptedAndReportedAndOutputUnchanged() throws {
        let m = try LoadedModel(path: try TestPaths.requireDefaultModel())
        let prompt = try m.chatPromptTokens(messages: [ChatMessage(role: "user", content: Self.freePrompt)])
        let plain = try makeEngine(m, speculation: SpeculationConfiguration(mode: .off))
        let expected = try runSucceeding(plain, [EngineRequest(promptTokens: prompt, maxTokens: 80)])[0].tokens[0] ?? []
        plain.stop()
        // Whole proposals verified (how long drafts are when adaptive depends on this machine's step costs).
        var config = SpeculationConfiguration(mode: .auto)
        config.adaptive = false
        let e = try makeEngine(m, speculation: config)
        // The prediction is the answer itself, then a prediction with an edit in the middle.
        var edited = expected
        edited.replaceSubrange(30..<34, with: [m.tokenizer.encode(" banana")[0]])
        for (prediction, minimum) in [(expected, expected.count), (edited, expected.count - 12)] {
            let out = try runSucceeding(e, [EngineRequest(promptTokens: prompt, maxTokens: 80, prediction: prediction)])[0]
            XCTAssertEqual(out.tokens[0] ?? [], expected)
            let usage = try XCTUnwrap(out.usage)
            XCTAssertGreaterThanOrEqual(usage.acceptedPredictionTokens, minimum)
            XCTAssertEqual(usage.acceptedPredictionTokens + usage.rejectedPredictionTokens, prediction.count)
            // The output is drafted nearly whole.
            XCTAssertGreaterThan(usage.acceptedDraftTokens, expected.count * 2 / 3)
        }
        // Opting out: no drafts; usage still says how much of the prediction the output followed.
        let out = try runSucceeding(e, [EngineRequest(promptTokens: prompt, maxTokens: 80, prediction: expected, speculative: false)])[0]
        XCTAssertEqual(out.tokens[0] ?? [], expected)
        XCTAssertEqual(out.usage?.acceptedPredictionTokens, expected.count)
        XCTAssertEqual(out.usage?.rejectedPredictionTokens, 0)
        XCTAssertEqual(out.usage?.draftedTokens, 0)
        e.stop()
    }

    func testSeededSamplingIsIdenticalWithSpeculation() throws {
        let m = try LoadedModel(path: try TestPaths.requireDefaultModel())
        let prompt = try m.chatPromptTokens(messages: [ChatMessage(role: "user", content: Self.repeatPrompt)])
        func requests() -> [EngineRequest] {
            (1...4).map { seed in
                var s = SamplingParameters(temperature: 0.8, topP: 0.95, seed: UInt64(seed))
                s.presencePenalty = seed == 4 ? 0.5 : 0
                return EngineRequest(promptTokens: prompt, maxTokens: 64, sampling: s, n: seed == 3 ? 2 : 1)
            }
        }
        // The four requests share their prompt, so the plain engine decodes them in relay groups while speculating
        // sequences (several rows) are not relayed: relay computes exactly what plain attention does.
        let plain = try makeEngine(m, speculation: SpeculationConfiguration(mode: .off))
        let expected = try runSucceeding(plain, requests()).map { $0.tokens }
        plain.stop()
        var config = SpeculationConfiguration(mode: .ngram)
        config.adaptive = false
        let e = try makeEngine(m, speculation: config)
        XCTAssertEqual(try runSucceeding(e, requests()).map { $0.tokens }, expected)
        XCTAssertGreaterThan(e.metrics().speculation.acceptedTokens, 0)
        e.stop()
    }

    /// The distribution of what a speculating request emits, against the target's softmax computed here from plain
    /// forward passes (chi-square, tiny-vocabulary model). The first token comes from the prompt's last row, before
    /// any draft, so seeds are first sorted by the token they draw there (a plain engine tells): requests whose
    /// first token is c then verify the prediction's draft [x, y] after it, and their second token must follow
    /// p(· | c) and, when it is x, their third p(· | c, x).
    func testSpeculativeSamplingFollowsTheTargetDistribution() throws {
        let m = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let vocab = m.model.vocabularySize
        let ws = m.model.makeWorkspace(maxTokens: 64, maxContext: 64, pool: WorkerPool(threads: 1))
        func softmax(_ context: [Int32]) throws -> [Double] {
            let row = try m.model.forward(tokens: context, memory: m.model.makeMemory(capacity: 64), workspace: ws,
                                          logitRows: (context.count - 1)..<context.count)
            let logits = (0..<vocab).map { Double(row[$0]) }
            let top = logits.max()!
            let e = logits.map { exp($0 - top) }
            let z = e.reduce(0, +)
            return e.map { $0 / z }
        }
        func argmax(_ p: [Double]) -> Int32 { Int32(p.indices.max { p[$0] < p[$1] }!) }
        // A prompt whose first token is fairly predictable, so that many seeds draw the same one.
        var prompt: [Int32] = []
        var p1: [Double] = []
        for v in stride(from: 1, to: 300, by: 7) {
            let candidate: [Int32] = [317] + Array(repeating: Int32(v), count: 6)
            let p = try softmax(candidate)
            if p.max()! > (p1.max() ?? 0) { prompt = candidate; p1 = p }
        }
        let c = argmax(p1)
        let p2 = try softmax(prompt + [c])
        let x = argmax(p2)
        let p3 = try softmax(prompt + [c, x])
        let y = argmax(p3)
        func sampling(_ seed: Int) -> SamplingParameters { SamplingParameters(temperature: 1, seed: UInt64(seed)) }

        let plain = try makeEngine(m, speculation: SpeculationConfiguration(mode: .off), context: 64, blockSize: 4)
        var seeds: [Int] = []
        var next = 0
        while seeds.count < 2000 && next < 40_000 {
            let batch = (next..<(next + 64)).map { EngineRequest(promptTokens: prompt, maxTokens: 1, sampling: sampling($0), ignoreEOS: true) }
            for (k, out) in try runSucceeding(plain, batch).enumerated() where out.tokens[0] == [c] { seeds.append(next + k) }
            next += 64
        }
        plain.stop()
        XCTAssertGreaterThanOrEqual(seeds.count, 1000, "p(c) = \(p1[Int(c)])")

        var config = SpeculationConfiguration(mode: .ngram)
        config.adaptive = false
        let e = try makeEngine(m, speculation: config, context: 64, blockSize: 4)
        defer { e.stop() }
        var seconds = [Int](repeating: 0, count: vocab)
        var thirds = [Int](repeating: 0, count: vocab)
        for start in stride(from: 0, to: seeds.count, by: 64) {
            let batch = seeds[start..<min(seeds.count, start + 64)].map {
                EngineRequest(promptTokens: prompt, maxTokens: 4, sampling: sampling($0), ignoreEOS: true, prediction: [c, x, y])
            }
            for out in try runSucceeding(e, batch) {
                let t = out.tokens[0] ?? []
                XCTAssertEqual(t.count, 4)
                XCTAssertEqual(t.first, c, "the first draw is the plain engine's")
                guard t.count == 4 else { continue }
                seconds[Int(t[1])] += 1
                if t[1] == x { thirds[Int(t[2])] += 1 }
            }
        }
        // Most requests verified their draft (a decode that shares its step with prompts still waiting to start
        // does not draft).
        XCTAssertGreaterThan(e.metrics().speculation.verifications, seeds.count * 3 / 4)
        assertFollows(seconds, p2, "second token")
        assertFollows(thirds, p3, "third token after the draft's first")
    }

    /// A draft model proposes; outputs stay exactly the plain engine's. The tiny checkpoint drafts for itself
    /// (a perfect draft up to rounding) and its Q4_0 copy for the f32 original (an imperfect one).
    func testDraftModelProposalsKeepGreedyOutputsExact() throws {
        let target = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let prompts = EngineTests.prompts(count: 4, length: { 8 + 5 * $0 }).map {
            EngineRequest(promptTokens: $0, maxTokens: 40, ignoreEOS: true)
        }
        let plain = try makeEngine(target, speculation: SpeculationConfiguration(mode: .off), context: 128, blockSize: 4)
        let expected = try runSucceeding(plain, prompts).map { $0.tokens[0] ?? [] }
        plain.stop()
        for (draftPath, minimumAcceptance) in [("llama/llama-f32.gguf", 0.9), ("llama/llama-q4_0.gguf", 0.2)] {
            let draft = try LoadedModel(path: TestPaths.fixture(draftPath))
            var config = EngineConfiguration(threads: 2, contextLength: 128, kvCacheBytes: 16 << 20)
            config.blockSize = 4
            config.kvStorage = .f32
            config.speculation = SpeculationConfiguration(mode: .draft)
            config.speculation.adaptive = false
            config.speculation.maxDraft = 4
            let e = try Engine(loaded: target, configuration: config, draft: draft)
            e.start()
            XCTAssertEqual(try runSucceeding(e, prompts).map { $0.tokens[0] ?? [] }, expected, draftPath)
            XCTAssertEqual(try runSucceeding(e, [prompts[2]])[0].tokens[0] ?? [], expected[2], "\(draftPath), alone")
            let m = e.metrics().speculation
            XCTAssertGreaterThan(m.draftedTokens, 0)
            XCTAssertGreaterThanOrEqual(Double(m.acceptedTokens) / Double(m.draftedTokens), minimumAcceptance, draftPath)
            assertAllBlocksFree(e)
            e.stop()
        }
    }

    func testDraftModelMustShareTheServedModelsVocabulary() throws {
        let tiny = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let smol = try LoadedModel(path: try TestPaths.requireDefaultModel())
        let config = EngineConfiguration(threads: 1, contextLength: 64, kvCacheBytes: 4 << 20)
        XCTAssertThrowsError(try Engine(loaded: tiny, configuration: config, draft: smol)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("vocabulary") && text.contains("SmolLM2"), text)
        }
    }

    /// Pearson's chi-square of observed counts against probabilities, bins with expected count < 5 merged;
    /// fails beyond the 0.1% critical value (Wilson–Hilferty approximation).
    func assertFollows(_ counts: [Int], _ p: [Double], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let n = Double(counts.reduce(0, +))
        var chi2 = 0.0, bins = 0
        var restObserved = 0.0, restExpected = 0.0
        for i in p.indices {
            let expected = n * p[i]
            if expected < 5 {
                restObserved += Double(counts[i])
                restExpected += expected
                continue
            }
            chi2 += pow(Double(counts[i]) - expected, 2) / expected
            bins += 1
        }
        if restExpected > 0 {
            chi2 += pow(restObserved - restExpected, 2) / max(restExpected, 1e-9)
            bins += 1
        }
        let df = Double(bins - 1)
        let z = 3.09  // 0.1% one-sided
        let critical = df * pow(1 - 2 / (9 * df) + z * (2 / (9 * df)).squareRoot(), 3)
        XCTAssertGreaterThan(bins, 2, "\(what): too few bins to test", file: file, line: line)
        XCTAssertLessThan(chi2, critical, "\(what): chi-square \(chi2) with \(bins - 1) degrees of freedom", file: file, line: line)
    }

    func testRollbackKeepsWindowRowsWithinTheSlack() throws {
        let layout = KVCacheLayout(specs: [CacheGroupSpec(kind: .slidingWindow(8), layers: [0])], layerCount: 1)
        let pool = try KVBlockPool(layers: 1, rowWidth: 4, blockSize: 4, storage: .f32, bytes: 1 << 20)
        let memory = PagedKVMemory(pool: pool, capacity: 64, layout: layout)
        memory.windowSlack = 4
        try memory.reserve(24)
        memory.commit(24)
        // The query at 20 reads from 13 on; with 4 rows of slack only blocks 0…2 went back, block 3 (rows 12…15) is held.
        XCTAssertTrue(memory.rollback(to: 20))
        let bare = PagedKVMemory(pool: pool, capacity: 64, layout: layout)
        try bare.reserve(24)
        bare.commit(24)
        XCTAssertFalse(bare.rollback(to: 16), "without slack the rows the query at 16 reads are gone")
    }
}
