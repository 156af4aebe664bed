// `tern serve` as a process: API keys from TERN_API_KEY=k1,k2 and from repeated --api-key (which wins), the
// start-up log (load time, resident memory), and the second signal that cuts a drain short. The tiny fixture
// checkpoint keeps start-up under a second; requests go through curl on loopback.

import Foundation
import TernTestSupport
import XCTest

final class ServeCommandTests: XCTestCase {
    private final class Server {
        let process = Process()
        let logPath: String
        var port = 0

        init(model: String = TestPaths.fixture("llama/llama-f32.gguf"), arguments: [String],
             environment extra: [String: String], directory: String) throws {
            logPath = directory + "/serve-\(UUID().uuidString).log"
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
            var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("TERN_") }
            for (k, v) in extra { env[k] = v }
            process.executableURL = URL(fileURLWithPath: try TestPaths.ternBinary())
            process.arguments = ["serve", "--model", model, "--port", "0",
                                 "--threads", "1", "--kv-cache-mib", "16"] + arguments
            process.environment = env
            process.standardOutput = log
            process.standardError = log
            try process.run()
        }

        var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

        /// Waits for the "ready" line and reads the port from the "listening on" line.
        func waitUntilReady() throws {
            let deadline = Date().addingTimeInterval(15)
            while !log.contains("ready:") {
                guard process.isRunning, Date() < deadline else { throw XCTSkip("server did not start:\n\(log)") }
                usleep(50_000)
            }
            let line = try XCTUnwrap(log.split(separator: "\n").first { $0.contains("listening on http://") })
            let afterColon = line.components(separatedBy: "127.0.0.1:").last ?? ""
            port = try XCTUnwrap(Int(afterColon.prefix { $0.isNumber }), String(line))
        }

        func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    private func status(_ port: Int, _ path: String, key: String? = nil) throws -> String {
        var args = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "http://127.0.0.1:\(port)\(path)"]
        if let key { args += ["-H", "Authorization: Bearer \(key)"] }
        return try runProcess("/usr/bin/curl", args).stdout
    }

    private func requireCurl() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/curl") else { throw XCTSkip("curl not installed") }
    }

    func testAPIKeysFromEnvironmentAndCommandLine() throws {
        try requireCurl()
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let fromEnv = try Server(arguments: [], environment: ["TERN_API_KEY": "k1, k2"], directory: dir)
        defer { fromEnv.stop() }
        try fromEnv.waitUntilReady()
        XCTAssertEqual(try status(fromEnv.port, "/health"), "200")
        XCTAssertEqual(try status(fromEnv.port, "/v1/models"), "401")
        XCTAssertEqual(try status(fromEnv.port, "/v1/models", key: "k1"), "200")
        XCTAssertEqual(try status(fromEnv.port, "/v1/models", key: "k2"), "200")
        XCTAssertTrue(fromEnv.log.contains("loaded in ") && fromEnv.log.contains("resident memory"), fromEnv.log)

        let both = try Server(arguments: ["--api-key", "k3", "--api-key=k4"], environment: ["TERN_API_KEY": "k1"], directory: dir)
        defer { both.stop() }
        try both.waitUntilReady()
        XCTAssertEqual(try status(both.port, "/v1/models", key: "k1"), "401")
        XCTAssertEqual(try status(both.port, "/v1/models", key: "k3"), "200")
        XCTAssertEqual(try status(both.port, "/v1/models", key: "k4"), "200")
    }

    /// A long streamed generation keeps the drain waiting; a second SIGTERM ends it at once with status 130,
    /// where the first alone would wait for the stream to finish. SmolLM2 decodes slowly enough on one thread.
    func testSecondSignalDuringDrainExitsAtOnce() throws {
        try requireCurl()
        let model = try TestPaths.requireDefaultModel()
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = try Server(model: model, arguments: ["--drain-timeout", "60", "--ctx-size", "4096"], environment: [:],
                                directory: dir)
        defer { server.stop() }
        try server.waitUntilReady()

        let client = Process()
        let out = Pipe()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        client.arguments = ["-sN", "--max-time", "60", "-H", "Content-Type: application/json", "-d",
                            #"{"prompt":"Once upon a time","max_tokens":3000,"ignore_eos":true,"stream":true}"#,
                            "http://127.0.0.1:\(server.port)/v1/completions"]
        client.standardOutput = out
        client.standardError = FileHandle.nullDevice
        try client.run()
        defer {
            if client.isRunning { client.terminate() }
            client.waitUntilExit()
        }
        // The stream has begun once its first event arrives.
        XCTAssertFalse(out.fileHandleForReading.availableData.isEmpty, "no stream:\n\(server.log)")

        kill(server.process.processIdentifier, SIGTERM)
        usleep(1_000_000)
        XCTAssertTrue(server.process.isRunning, "the first SIGTERM should drain, not exit:\n\(server.log)")
        let sent = Date()
        kill(server.process.processIdentifier, SIGTERM)
        while server.process.isRunning && Date().timeIntervalSince(sent) < 5 { usleep(20_000) }
        XCTAssertFalse(server.process.isRunning, server.log)
        server.process.waitUntilExit()
        XCTAssertEqual(server.process.terminationReason, .exit, server.log)
        XCTAssertEqual(server.process.terminationStatus, 130, server.log)
    }
}
