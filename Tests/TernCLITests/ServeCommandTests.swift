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

    /// The log cannot be written (issue 15, faults): a disk that is full (/dev/full: every write fails with
    /// ENOSPC) or a log reader that went away (a closed pipe: EPIPE). Log lines are lost; requests are not, and
    /// SIGTERM still drains and exits 0.
    func testServingGoesOnWhenTheLogCannotBeWritten() throws {
        try requireCurl()
        let completion = #"{"prompt":"Hello","max_tokens":3}"#
        func post(_ port: Int) throws -> String {
            try runProcess("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                                             "-H", "Content-Type: application/json", "-d", completion,
                                             "http://127.0.0.1:\(port)/v1/completions"]).stdout
        }
        func launch(_ port: Int, output: Any) throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: try TestPaths.ternBinary())
            p.arguments = ["serve", "--model", TestPaths.fixture("llama/llama-f32.gguf"), "--port", String(port),
                           "--threads", "1", "--kv-cache-mib", "16"]
            p.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("TERN_") }
            p.standardOutput = output
            p.standardError = output
            try p.run()
            return p
        }
        func terminate(_ p: Process) {
            kill(p.processIdentifier, SIGTERM)
            let sent = Date()
            while p.isRunning && Date().timeIntervalSince(sent) < 10 { usleep(20_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }

        // Disk full: the port is chosen here, since the log that would name it cannot be read.
        let port = try freePort()
        let full = try launch(port, output: try FileHandle(forWritingTo: URL(fileURLWithPath: "/dev/full")))
        defer { if full.isRunning { kill(full.processIdentifier, SIGKILL) } }
        let deadline = Date().addingTimeInterval(15)
        while try status(port, "/health") != "200" {
            guard full.isRunning, Date() < deadline else { return XCTFail("no answer from a server logging to /dev/full") }
            usleep(100_000)
        }
        for _ in 0..<3 { XCTAssertEqual(try post(port), "200") }
        terminate(full)
        XCTAssertEqual(full.terminationReason, .exit)
        XCTAssertEqual(full.terminationStatus, 0)

        // The log's reader goes away once the server is ready.
        let pipe = Pipe()
        let piped = try launch(0, output: pipe)
        defer { if piped.isRunning { kill(piped.processIdentifier, SIGKILL) } }
        var log = ""
        while !log.contains("ready:") {
            let chunk = pipe.fileHandleForReading.availableData
            guard !chunk.isEmpty else { return XCTFail("the server ended before it was ready:\n\(log)") }
            log += String(decoding: chunk, as: UTF8.self)
        }
        let line = try XCTUnwrap(log.split(separator: "\n").first { $0.contains("listening on http://") })
        let pipedPort = try XCTUnwrap(Int((line.components(separatedBy: "127.0.0.1:").last ?? "").prefix { $0.isNumber }))
        try pipe.fileHandleForReading.close()
        for _ in 0..<3 { XCTAssertEqual(try post(pipedPort), "200") }
        XCTAssertEqual(try status(pipedPort, "/health"), "200")
        terminate(piped)
        XCTAssertEqual(piped.terminationReason, .exit)
        XCTAssertEqual(piped.terminationStatus, 0)
    }

    /// A loopback port nobody listens on right now.
    private func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { throw XCTSkip("cannot bind a loopback socket") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
