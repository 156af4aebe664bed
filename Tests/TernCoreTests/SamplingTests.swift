// Sampling rules checked against distributions computed by hand, and stop strings over streamed text.

import XCTest
@testable import TernCore

final class SamplingTests: XCTestCase {
    func histogram(_ logits: [Float], _ p: SamplingParameters, draws: Int = 20000) -> [Int] {
        var sampler = Sampler(parameters: p)
        var counts = [Int](repeating: 0, count: logits.count)
        for _ in 0..<draws {
            var l = logits
            let t = l.withUnsafeMutableBufferPointer { sampler.sample(logits: $0.baseAddress!, count: $0.count) }
            counts[Int(t)] += 1
        }
        return counts
    }

    func testGreedyTakesArgmax() {
        XCTAssertEqual(histogram([0.1, 3, 2.9, -1], .greedy, draws: 10), [0, 10, 0, 0])
    }

    func testTemperatureFollowsSoftmax() {
        // softmax([0, ln 2, ln 3]) = [1/6, 2/6, 3/6]
        let counts = histogram([0, log(2), log(3)], SamplingParameters(temperature: 1, seed: 7))
        for (c, p) in zip(counts, [1.0 / 6, 2.0 / 6, 3.0 / 6]) {
            XCTAssertEqual(Double(c) / 20000, p, accuracy: 0.015)
        }
    }

    func testTopKTopPAndMinPRestrictCandidates() {
        let logits: [Float] = [log(1), log(2), log(3), log(4)]   // probabilities 0.1 0.2 0.3 0.4
        XCTAssertEqual(histogram(logits, SamplingParameters(topK: 2, seed: 1)).prefix(2).reduce(0, +), 0)
        // top-p 0.6: 0.4 + 0.3 reaches 0.7 ≥ 0.6, so only the two best remain.
        XCTAssertEqual(histogram(logits, SamplingParameters(topP: 0.6, seed: 2)).prefix(2).reduce(0, +), 0)
        // min-p 0.5: keep tokens with p ≥ 0.5 · 0.4 = 0.2.
        let c = histogram(logits, SamplingParameters(minP: 0.5, seed: 3))
        XCTAssertEqual(c[0], 0)
        XCTAssertGreaterThan(c[1], 0)
    }

    func testSeedReproducesAndPenaltiesApply() {
        let logits: [Float] = [1, 1, 1, 1, 1, 1]
        XCTAssertEqual(histogram(logits, SamplingParameters(seed: 5), draws: 50), histogram(logits, SamplingParameters(seed: 5), draws: 50))
        var s = Sampler(parameters: SamplingParameters(temperature: 0, presencePenalty: 0.5, frequencyPenalty: 0.25))
        s.accept(0)
        s.accept(0)
        var l: [Float] = [2, 1.1, 0]
        // token 0: 2 − 0.5 − 2·0.25 = 1.0 < 1.1
        XCTAssertEqual(l.withUnsafeMutableBufferPointer { s.sample(logits: $0.baseAddress!, count: 3) }, 1)
        var r = Sampler(parameters: SamplingParameters(temperature: 0, repetitionPenalty: 2), context: [0])
        var l2: [Float] = [2, 1.5, -1]
        XCTAssertEqual(l2.withUnsafeMutableBufferPointer { r.sample(logits: $0.baseAddress!, count: 3) }, 1)
    }

    func testStopMatcherHoldsBackPartialMatches() {
        var m = StopMatcher(stops: ["STOP", "\n\n"])
        var out = ""
        for piece in ["Hello S", "T", "ill going ST", "OP and more"] { out += m.append(piece) }
        XCTAssertTrue(m.stopped)
        XCTAssertEqual(out, "Hello STill going ")
        var n = StopMatcher(stops: ["xyz"])
        XCTAssertEqual(n.append("abcx"), "abc")
        XCTAssertEqual(n.finish(), "x")
    }
}

/// The sampling pipeline: logits processors, the distribution a draw uses, and snapshot/restore of the state.
final class SamplingPipelineTests: XCTestCase {
    func testDistributionIsTheSoftmaxTheDrawUses() {
        var s = Sampler(parameters: SamplingParameters(temperature: 0.5, topK: 3, seed: 9))
        let logits: [Float] = [0, 1, 2, 3, -5]
        let d = logits.withUnsafeBufferPointer { s.distribution(processedLogits: $0.baseAddress!, count: 5) }
        // Top 3 at temperature 0.5: weights exp(2·(l − 3)) for l = 3, 2, 1.
        let w = [1.0, exp(-2.0), exp(-4.0)]
        let total = w.reduce(0, +)
        XCTAssertEqual(d.probability(of: 3), w[0] / total, accuracy: 1e-6)
        XCTAssertEqual(d.probability(of: 1), w[2] / total, accuracy: 1e-6)
        XCTAssertEqual(d.probability(of: 0), 0)
        let greedy = Sampler(parameters: .greedy)
        var g = greedy
        let gd = logits.withUnsafeBufferPointer { g.distribution(processedLogits: $0.baseAddress!, count: 5) }
        XCTAssertEqual(gd.probability(of: 3), 1)
        XCTAssertEqual(gd.probability(of: 2), 0)
    }

    func testSnapshotRestoresRandomStreamAndPenalties() {
        var s = Sampler(parameters: SamplingParameters(temperature: 1, frequencyPenalty: 1, seed: 4))
        let base: [Float] = [0.3, 0.1, 0.2, 0.25, 0.15]
        func draw(_ s: inout Sampler) -> Int32 {
            var l = base
            return l.withUnsafeMutableBufferPointer { s.sample(logits: $0.baseAddress!, count: 5) }
        }
        s.accept(2)
        let snap = s.snapshot()
        var first: [Int32] = []
        for _ in 0..<20 { let t = draw(&s); s.accept(t); first.append(t) }
        s.restore(snap)
        var again: [Int32] = []
        for _ in 0..<20 { let t = draw(&s); s.accept(t); again.append(t) }
        XCTAssertEqual(first, again)
    }

    func testLogitBiasSteersGreedy() {
        var s = Sampler(parameters: SamplingParameters(temperature: 0))
        var p = s.parameters
        p.logitBias = [1: 100]
        s = Sampler(parameters: p)
        var l: [Float] = [5, 0, 4]
        XCTAssertEqual(l.withUnsafeMutableBufferPointer { s.sample(logits: $0.baseAddress!, count: 3) }, 1)
        p.logitBias = [0: -100]
        var t = Sampler(parameters: p)
        var l2: [Float] = [5, 0, 4]
        XCTAssertEqual(l2.withUnsafeMutableBufferPointer { t.sample(logits: $0.baseAddress!, count: 3) }, 2)
    }
}
