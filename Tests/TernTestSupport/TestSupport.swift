// Shared by the test targets (paths: the repository root, committed fixtures, the default model and the built `tern`), running a subprocess, and a deterministic generator of test values.

import Foundation
import XCTest

public enum TestPaths {
    public static let repoRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }()

    public static func fixture(_ relative: String) -> String { repoRoot + "/Tests/Fixtures/" + relative }

    public static var defaultModel: String { repoRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf" }

    /// The default model, or a skip when models/fetch has not been run.
    public static func requireDefaultModel() throws -> String {
        let p = defaultModel
        guard FileManager.default.fileExists(atPath: p) else {
            throw XCTSkip("default model missing: run models/fetch")
        }
        return p
    }

    /// The `tern` executable built beside the test bundle.
    public static func ternBinary() throws -> String { try builtExecutable("tern") }

    /// An executable product (`tern`, `tern-fuzz`) built beside the test bundle.
    public static func builtExecutable(_ name: String) throws -> String {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        for config in ["release", "debug"] {
            let candidate = repoRoot + "/.build/\(config)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw XCTSkip("\(name) executable not built")
    }

    public static func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "tern-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}

public struct ProcessResult {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// Runs a command to completion, capturing both streams.
public func runProcess(_ path: String, _ args: [String], environment: [String: String]? = nil,
                currentDirectory: String? = nil) throws -> ProcessResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    if let environment { p.environment = environment }
    if let currentDirectory { p.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // Read both pipes before waiting so a chatty child cannot fill a pipe and block.
    let group = DispatchGroup()
    nonisolated(unsafe) var outData = Data(), errData = Data()
    group.enter()
    DispatchQueue.global().async { outData = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    group.enter()
    DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    group.wait()
    p.waitUntilExit()
    return ProcessResult(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData, as: UTF8.self))
}

/// SplitMix64: deterministic test values, so failures reproduce.
public struct SplitMix64 {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    public mutating func nextFloat() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
}
