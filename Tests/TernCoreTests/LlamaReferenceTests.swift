// The Llama-family forward pass against logits that an independent float64 numpy implementation computed
// (scripts/make_llama_fixtures.py) for tiny random checkpoints in every layout Tern reads.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class LlamaReferenceTests: XCTestCase {
    struct Case {
        let checkpoint: String
        let weights: String
        let tokens: [Int32]
        let logits: [[Float]]
        let greedy: [Int32]
        let gaps: [Double]
    }

    static func cases() throws -> [Case] {
        let data = try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("llama/reference.json")))
        let root = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        return (root["cases"] as! [[String: Any]]).map { c in
            Case(checkpoint: c["checkpoint"] as! String, weights: c["weights"] as! String,
                 tokens: (c["tokens"] as! [NSNumber]).map { Int32($0.intValue) },
                 logits: (c["logits"] as! [[NSNumber]]).map { $0.map { $0.floatValue } },
                 greedy: (c["greedy"] as! [NSNumber]).map { Int32($0.intValue) },
                 gaps: (c["greedy_top2_gap"] as! [NSNumber]).map { $0.doubleValue })
        }
    }

    func testLogitsMatchNumpyReference() throws {
        for c in try Self.cases() {
            let loaded = try LoadedModel(path: TestPaths.fixture("llama/" + c.checkpoint))
            let got = try allPositionLogits(loaded.model, tokens: c.tokens)
            XCTAssertEqual(got.count, c.logits.count)
            let err = relativeLogitError(got, c.logits)
            // Float weights: float32 arithmetic against float64 → 1e-4. Quantized weights: Tern (like
            // llama.cpp) also quantizes activations to 8 bits, which the reference does not.
            let bound: Double
            switch c.weights {
            case "f32", "f16", "bf16": bound = 1e-4
            default: bound = 0.03
            }
            XCTAssertLessThan(err, bound, "\(c.checkpoint): relative logit error \(err)")
            print("\(c.checkpoint): relative logit error \(err)")
        }
    }

    func testIncrementalDecodingEqualsPrefill() throws {
        let loaded = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let tokens: [Int32] = try Self.cases()[0].tokens
        let full = try allPositionLogits(loaded.model, tokens: tokens, batch: 64)
        let stepwise = try allPositionLogits(loaded.model, tokens: tokens, batch: 1)
        let chunked = try allPositionLogits(loaded.model, tokens: tokens, batch: 5)
        XCTAssertLessThan(relativeLogitError(stepwise, full), 1e-5)
        XCTAssertLessThan(relativeLogitError(chunked, full), 1e-5)
    }

    func testGreedyGenerationMatchesReference() throws {
        for c in try Self.cases() where ["f32", "f16"].contains(c.weights) {
            let loaded = try LoadedModel(path: TestPaths.fixture("llama/" + c.checkpoint))
            let gen = TextGenerator(loaded: loaded, contextLength: 128, threads: 2)
            let r = try gen.generate(GenerationRequest(promptTokens: c.tokens, maxTokens: c.greedy.count, ignoreEOS: true))
            XCTAssertEqual(r.tokens, c.greedy, c.checkpoint)
            XCTAssertEqual(r.finishReason, .length)
        }
    }

    func testSafetensorsAndGGUFLoadTheSameModel() throws {
        let gguf = try LoadedModel(path: TestPaths.fixture("llama/llama-f32.gguf"))
        let hf = try LoadedModel(path: TestPaths.fixture("llama/llama-hf"))
        XCTAssertEqual(gguf.llama!.config.ropeStyle, .interleaved)
        XCTAssertEqual(hf.llama!.config.ropeStyle, .neox)
        XCTAssertEqual(hf.checkpoint.format, .safetensors)
        XCTAssertEqual(gguf.llama!.config.layerCount, hf.llama!.config.layerCount)
        XCTAssertEqual(gguf.tokenizer.encode("Hello, the cat"), hf.tokenizer.encode("Hello, the cat"))
    }
}
