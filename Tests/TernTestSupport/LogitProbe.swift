// Running a model over a token sequence in chunks and comparing logit tables: shared by the reference tests
// of every architecture.

import TernCore
import XCTest

/// Logits at every position, fed `batch` tokens per forward pass from an empty memory.
public func allPositionLogits(_ model: LanguageModel, tokens: [Int32], batch: Int = 64, threads: Int = 2,
                              file: StaticString = #filePath, line: UInt = #line) throws -> [[Float]] {
    let ws = model.makeWorkspace(maxTokens: batch, maxContext: 128, pool: WorkerPool(threads: threads))
    let memory = model.makeMemory(capacity: 128)
    var rows: [[Float]] = []
    var i = 0
    while i < tokens.count {
        let chunk = Array(tokens[i..<min(i + batch, tokens.count)])
        let out = try model.forward(tokens: chunk, memory: memory, workspace: ws, logitRows: 0..<chunk.count)
        let v = model.vocabularySize
        for r in 0..<chunk.count { rows.append(Array(UnsafeBufferPointer(start: out + r * v, count: v))) }
        i += chunk.count
    }
    XCTAssertEqual(memory.count, tokens.count, file: file, line: line)
    return rows
}

/// Largest |a − b| over all logits, relative to the largest |b| (the logit scale).
public func relativeLogitError(_ a: [[Float]], _ b: [[Float]], file: StaticString = #filePath, line: UInt = #line) -> Double {
    XCTAssertEqual(a.count, b.count, file: file, line: line)
    var maxDiff = 0.0, scale = 0.0
    for (ra, rb) in zip(a, b) {
        XCTAssertEqual(ra.count, rb.count, file: file, line: line)
        for (x, y) in zip(ra, rb) {
            maxDiff = max(maxDiff, Double(abs(x - y)))
            scale = max(scale, Double(abs(y)))
        }
    }
    return maxDiff / scale
}
