// Sampler.distribution selects top-k and top-p candidates without sorting the whole vocabulary (Gemma's is 262k
// tokens): its candidates, weights and order must equal what sorting every candidate gives, ties included.

import Foundation
import XCTest
@testable import TernCore

final class SamplerSelectionTests: XCTestCase {
    /// The straightforward definition: every candidate's weight, all sorted, then cut.
    func fullSort(_ logits: [Float], _ p: SamplingParameters) -> [(id: Int32, weight: Float)] {
        let maxLogit = logits.max()!
        var c: [(id: Int32, weight: Float)] = []
        for (i, l) in logits.enumerated() {
            let w = expf((l - maxLogit) / p.temperature)
            if w >= p.minP && w > 0 { c.append((Int32(i), w)) }
        }
        c.sort { $0.weight > $1.weight || ($0.weight == $1.weight && $0.id < $1.id) }
        if p.topK > 0 && c.count > p.topK { c.removeLast(c.count - p.topK) }
        if p.topP < 1 {
            var total: Double = 0
            for x in c { total += Double(x.weight) }
            var cumulative: Double = 0
            for (i, x) in c.enumerated() {
                cumulative += Double(x.weight)
                if cumulative >= Double(p.topP) * total { c.removeLast(c.count - i - 1); break }
            }
        }
        return c
    }

    func testPartialSelectionEqualsFullSort() {
        var rng = RandomStream(seed: 99)
        for trial in 0..<60 {
            let n = [5, 64, 1000, 262_144][trial % 4]
            // Coarse logits give many exact ties.
            let logits: [Float] = (0..<n).map { _ in Float(Int(rng.nextUnit() * 40)) / 4 - 5 }
            for (k, topP, minP, t) in [(40, Float(1), Float(0), Float(1)), (1, 1, 0, 0.7), (3, 0.9, 0, 1.3),
                                       (0, 0.95, 0, 1), (0, 0.5, 0.05, 0.8), (n + 5, 0.9, 0, 1), (50, 0.8, 0.1, 1)] {
                var p = SamplingParameters(temperature: t, topK: k, topP: topP, minP: minP, seed: 1)
                p.seed = 1
                var sampler = Sampler(parameters: p)
                let d = logits.withUnsafeBufferPointer { sampler.distribution(processedLogits: $0.baseAddress!, count: n) }
                let want = fullSort(logits, p)
                // Compared as booleans: a failure message with 262k ids would drown the log.
                XCTAssertTrue(d.candidates.map(\.id) == want.map(\.id),
                              "n \(n), k \(k), p \(topP), min-p \(minP): \(d.candidates.count) vs \(want.count) candidates")
                XCTAssertTrue(d.candidates.map(\.weight) == want.map(\.weight), "n \(n), k \(k), p \(topP)")
            }
        }
    }

    func testTopKOnLargeVocabularyIsFast() {
        var rng = RandomStream(seed: 5)
        let n = 262_144
        let logits: [Float] = (0..<n).map { _ in Float(rng.nextUnit() * 20) }
        var sampler = Sampler(parameters: SamplingParameters(temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05, seed: 1))
        let t0 = Date()
        for _ in 0..<20 { _ = logits.withUnsafeBufferPointer { sampler.distribution(processedLogits: $0.baseAddress!, count: n) } }
        let perCall = Date().timeIntervalSince(t0) / 20
        print(String(format: "top-k 40 over 262144 logits: %.2f ms per distribution", perCall * 1000))
        // A full sort of 262k candidates takes tens of milliseconds here; the heap's pass a few.
        XCTAssertLessThan(perCall, 0.02)
    }
}
