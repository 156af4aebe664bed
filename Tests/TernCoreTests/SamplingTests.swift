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
