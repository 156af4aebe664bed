// The real Gemma 3 270M Q4_K_M file (models/fetch gemma3) against what llama.cpp computes for it
// (scripts/make_gemma3_reference.py → Tests/Fixtures/gemma3/llamacpp_reference.json): token ids on hard strings,
// greedy continuations up to the first near tie (one prompt longer than the 512-token window), logits around the
// window's edge (positions 505–520), and perplexity within 1%. Every test skips when the file is absent: CI
// installs only the default model.

import Foundation
import TernTestSupport
import XCTest
@testable import TernCore

final class Gemma3RealModelTests: XCTestCase {
    static let modelPath = TestPaths.repoRoot + "/models/gemma-3-270m-q4_k_m.gguf"

    static func requireModel() throws -> String {
        guard FileManager.default.fileExists(atPath: modelPath) else {
            throw XCTSkip("Gemma 3 model missing: run models/fetch gemma3")
        }
        return modelPath
    }

    static func reference() throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: TestPaths.fixture("gemma3/llamacpp_reference.json")))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    static func ids(_ v: Any?) -> [Int32] { (v as! [NSNumber]).map { Int32($0.intValue) } }

    func testTokenizationMatchesLlamaCpp() throws {
        let ck = try Checkpoint.open(path: try Self.requireModel())
        let tokenizer = try Tokenizer(spec: ck.tokenizerSpec)
        XCTAssertEqual(ck.tokenizerSpec.model, .sentencePiece)
        XCTAssertTrue(ck.tokenizerSpec.addBOS)
        XCTAssertFalse(ck.tokenizerSpec.addSpacePrefix)
        let cases = try Self.reference()["tokenize"] as! [[String: Any]]
        XCTAssertGreaterThan(cases.count, 30)
        for c in cases {
            let text = c["text"] as! String
            let special = c["special"] as! Bool
            XCTAssertEqual(tokenizer.encode(text, parseSpecial: special), Self.ids(c["ids"]), "\(text.debugDescription)")
        }
        // <end_of_turn> ends a generation, so a chat answer stops there.
        let eot = try XCTUnwrap(ck.tokenizerSpec.tokens.firstIndex(of: "<end_of_turn>"))
        XCTAssertTrue(ck.tokenizerSpec.endOfGenerationIDs.contains(Int32(eot)))
    }

    func testGreedyMatchesLlamaCppUntilFirstNearTie() throws {
        let loaded = try LoadedModel(path: try Self.requireModel())
        let gen = TextGenerator(loaded: loaded, contextLength: 1024, threads: 2)
        for c in try Self.reference()["greedy"] as! [[String: Any]] {
            let name = c["name"] as! String
            let prompt = Self.ids(c["prompt_ids"])
            XCTAssertEqual(loaded.promptTokens(text: c["prompt"] as! String, parseSpecial: c["special"] as! Bool), prompt, name)
            let want = Self.ids(c["generated_ids"])
            let gaps = (c["top2_gap"] as! [NSNumber]).map(\.doubleValue)
            let got = try gen.generate(GenerationRequest(promptTokens: prompt, maxTokens: want.count, ignoreEOS: true)).tokens
            // Both engines quantize activations to 8 bits with different rounding, which moves logits by a few
            // tenths: the continuations may part only where llama.cpp's top two are within 0.5 of each other.
            if let d = zip(got, want).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                XCTAssertLessThan(gaps[d], 0.5, "\(name): the continuations part at step \(d), where llama.cpp's gap is \(gaps[d])")
                print("\(name): identical for \(d) of \(want.count) tokens; they part where llama.cpp's top-2 gap is \(gaps[d])")
            } else {
                print("\(name): identical for all \(want.count) tokens")
            }
        }
    }

    /// Logits at positions 505–520 of a 560-token prompt in one pass and over paged blocks: the local layers' window
    /// (512) starts to drop keys at position 512.
    func testLogitsAroundTheWindowEdgeMatchLlamaCpp() throws {
        let loaded = try LoadedModel(path: try Self.requireModel())
        let llama = try XCTUnwrap(loaded.llama)
        XCTAssertEqual(llama.config.slidingWindow, 512)
        XCTAssertEqual(llama.config.localLayers.enumerated().filter { !$0.element }.map(\.offset), [5, 11, 17])
        let window = try Self.reference()["window"] as! [String: Any]
        let tokens = Self.ids(window["tokens"])
        let rows = window["rows"] as! [[String: Any]]
        let v = llama.vocabularySize
        let ws = llama.makeWorkspace(maxTokens: 256, maxContext: 1024, pool: WorkerPool(threads: 2))
        let layout = llama.cacheLayout
        let pool = try KVBlockPool(layers: layout.layersPerBlock, rowWidth: llama.kvDim, blockSize: 16, storage: .f16, bytes: 64 << 20,
                                   kvHeads: llama.config.kvHeadCount)
        let memories: [KVMemory] = [llama.makeKVMemory(capacity: 1024), PagedKVMemory(pool: pool, capacity: 1024, layout: layout)]
        for memory in memories {
            var table: [Int: [Float]] = [:]
            var pos = 0
            // Chunks of 200 cut inside the window's edge region.
            while pos < tokens.count {
                let n = min(200, tokens.count - pos)
                let wanted = rows.map { ($0["position"] as! NSNumber).intValue }.filter { $0 >= pos && $0 < pos + n }
                let lo = wanted.min().map { $0 - pos } ?? 0, hi = wanted.max().map { $0 - pos + 1 } ?? 0
                let out = try llama.forward(tokens: Array(tokens[pos..<(pos + n)]), memory: memory, workspace: ws, logitRows: lo..<hi)
                for p in wanted { table[p] = Array(UnsafeBufferPointer(start: out + (p - pos - lo) * v, count: v)) }
                (memory as? PagedKVMemory)?.appendTokens(tokens[pos..<(pos + n)])
                pos += n
            }
            var worst = 0.0
            for r in rows {
                let p = (r["position"] as! NSNumber).intValue
                let top = (r["top"] as! [[NSNumber]]).map { (Int($0[0].intValue), $0[1].doubleValue) }
                let got = try XCTUnwrap(table[p])
                for (id, logit) in top.prefix(4) { worst = max(worst, abs(Double(got[id]) - logit)) }
                if top[0].1 - top[1].1 > 0.5 { XCTAssertEqual(Int(Sampler.argmax(got, v)), top[0].0, "position \(p)") }
            }
            // 8-bit activations on both sides move logits by up to a few tenths (as on SmolLM2).
            XCTAssertLessThan(worst, 0.6, "\(type(of: memory)): top-4 logits differ by up to \(worst)")
            print("\(type(of: memory)): top-4 logits at 505–520 within \(worst) of llama.cpp's")
        }
        // The paged memory released the local layers' blocks that left the window.
        let paged = memories[1] as! PagedKVMemory
        for (g, group) in layout.groups.enumerated() where group.window != nil {
            XCTAssertEqual(paged.storedRows(group: g), tokens.count - (tokens.count - 511) / 16 * 16)
        }
    }

    func testPerplexityWithinOnePercentOfLlamaCpp() throws {
        let loaded = try LoadedModel(path: try Self.requireModel())
        let text = try String(contentsOfFile: TestPaths.fixture("smollm2/essay.txt"), encoding: .utf8)
        let contexts = (try Self.reference()["perplexity"] as! [String: Any])["contexts"] as! [[String: Any]]
        for c in contexts {
            let context = (c["context"] as! NSNumber).intValue
            let want = (c["ppl"] as! NSNumber).doubleValue
            let r = try Perplexity.evaluate(loaded: loaded, text: text, context: context, maxWindows: nil, threads: 2)
            let rel = abs(r.perplexity - want) / want
            print(String(format: "context %d: perplexity %.4f (llama.cpp %.4f, %.2f%% apart)", context, r.perplexity, want, rel * 100))
            // The target is context 512 (measured 0.39%). At 1024 the window cuts and only two windows are scored
            // (measured 1.00%, Tern lower: llama.cpp keeps K/V in f16 and rounds GELU's input to f16, Tern keeps
            // f32 here); it is held to 1.5%.
            XCTAssertLessThan(rel, context == 512 ? 0.01 : 0.015, "context \(context)")
        }
    }
}
