// The fuzz corpora as regression tests: the normal build of tern-fuzz replays every committed input
// (Tests/FuzzCorpus/TARGET: the seeds, and crash-* files, inputs that once crashed a target) through the same
// target code libFuzzer runs (scripts/fuzz). A crash or a failed check makes the replay exit non-zero.

import Foundation
import TernTestSupport
import XCTest

final class FuzzCorpusTests: XCTestCase {
    func testEveryTargetHasACorpusAndReplaysIt() throws {
        let fuzz = try TestPaths.builtExecutable("tern-fuzz")
        let list = try runProcess(fuzz, ["--list"])
        XCTAssertEqual(list.status, 0, list.stderr)
        let targets = list.stdout.split(separator: "\n").map { String($0.split(separator: "\t")[0]) }
        XCTAssertEqual(Set(targets), ["http", "api", "gguf", "safetensors", "tokenizer", "chat-template"])
        let needsModel: Set<String> = ["api", "tokenizer"]
        for target in targets {
            if needsModel.contains(target), !FileManager.default.fileExists(atPath: TestPaths.defaultModel) { continue }
            let dir = TestPaths.repoRoot + "/Tests/FuzzCorpus/" + target
            let files = try FileManager.default.contentsOfDirectory(atPath: dir)
            XCTAssertFalse(files.isEmpty, "no corpus for \(target)")
            let r = try runProcess(fuzz, [target, dir])
            XCTAssertEqual(r.status, 0, "\(target): the last input named crashed it:\n\(r.stderr.suffix(2000))")
            XCTAssertTrue(r.stdout.contains("\(files.count) inputs replayed"), r.stdout)
        }
    }

    func testReplayRejectsUnknownTargets() throws {
        let r = try runProcess(try TestPaths.builtExecutable("tern-fuzz"), ["nonsense", "/dev/null"])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.stderr.contains("usage: tern-fuzz"), r.stderr)
    }
}
