// `tern bench-serve` end to end: the built `tern` binary serves the tiny fixture checkpoint in one process and
// loads it from another, and the JSON report is checked for the counts and orderings any correct benchmark
// must show. The CLI target cannot be imported, so its SSE parser and statistics are tested through this run.

import Foundation
import TernTestSupport
import XCTest

final class BenchServeTests: XCTestCase {
    /// The environment without TERN_* settings, so a developer's TERN_MODEL or TERN_PORT cannot leak in.
    private var cleanEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("TERN_") }
    }

    /// A port nobody listens on right now: bind to port 0, read the number, release it.
    private func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0
            }
        }
        guard ok else { throw XCTSkip("cannot bind a loopback socket") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// Status code of GET path, or nil when nothing answers.
    private func getStatus(port: Int, path: String) -> Int? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { return nil }
        let req = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard req.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == req.count else { return nil }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 12 else { return nil }
        let line = String(decoding: buf[0..<n], as: UTF8.self)
        return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
    }

    func testBenchServeAgainstTinyServer() throws {
        let tern = try TestPaths.ternBinary()
        let port = try freePort()
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let logPath = dir + "/serve.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))

        let server = Process()
        server.executableURL = URL(fileURLWithPath: tern)
        server.arguments = ["serve", "--model", TestPaths.fixture("llama/llama-f32.gguf"), "--port", String(port),
                            "--threads", "1", "--kv-cache-mib", "16", "--block-size", "4"]
        server.environment = cleanEnvironment
        server.standardOutput = log
        server.standardError = log
        try server.run()
        defer { if server.isRunning { kill(server.processIdentifier, SIGKILL) } }
        func serverLog() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

        let readyBy = Date().addingTimeInterval(10)
        while getStatus(port: port, path: "/health") != 200 {
            guard server.isRunning, Date() < readyBy else { return XCTFail("server not ready:\n\(serverLog())") }
            usleep(100_000)
        }

        let r = try runProcess(tern, ["bench-serve", "--url", "http://127.0.0.1:\(port)", "--concurrency", "4",
                                      "--num-requests", "12", "--prompt-tokens", "16", "--output-tokens", "8",
                                      "--shared-prefix-tokens", "8", "--duration-limit", "20", "--seed", "7", "--json"],
                               environment: cleanEnvironment)
        XCTAssertEqual(r.status, 0, r.stderr)
        let last = try XCTUnwrap(r.stdout.split(separator: "\n").last.map(String.init), r.stdout)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any], last)
        XCTAssertEqual(obj["completed"] as? Int, 12, last)
        XCTAssertEqual(obj["failed"] as? Int, 0, last)
        XCTAssertEqual(obj["total_output_tokens"] as? Int, 12 * 8, last)
        XCTAssertEqual(obj["total_input_tokens"] as? Int, 12 * 16, last)
        XCTAssertGreaterThan(obj["output_tokens_per_s"] as? Double ?? 0, 0)
        XCTAssertGreaterThan(obj["input_tokens_per_s"] as? Double ?? 0, 0)
        XCTAssertGreaterThan(obj["request_throughput"] as? Double ?? 0, 0)
        XCTAssertGreaterThan(obj["duration_s"] as? Double ?? 0, 0)
        for key in ["ttft_ms", "itl_ms", "e2e_ms"] {
            let s = try XCTUnwrap(obj[key] as? [String: Any], key)
            let p50 = try XCTUnwrap(s["p50"] as? Double, key), p90 = try XCTUnwrap(s["p90"] as? Double, key)
            let p99 = try XCTUnwrap(s["p99"] as? Double, key), mean = try XCTUnwrap(s["mean"] as? Double, key)
            // The tiny model decodes so fast that several tokens can arrive in one read: ITL may be 0.
            if key == "itl_ms" { XCTAssertGreaterThanOrEqual(p50, 0, key) } else { XCTAssertGreaterThan(p50, 0, key) }
            XCTAssertLessThanOrEqual(p50, p90, key)
            XCTAssertLessThanOrEqual(p90, p99, key)
            XCTAssertGreaterThanOrEqual(mean, 0, key)
        }
        // A request's first token cannot come after its last.
        let ttft = try XCTUnwrap(obj["ttft_ms"] as? [String: Any]), e2e = try XCTUnwrap(obj["e2e_ms"] as? [String: Any])
        XCTAssertLessThanOrEqual(try XCTUnwrap(ttft["p50"] as? Double), try XCTUnwrap(e2e["p99"] as? Double))

        server.terminate()
        server.waitUntilExit()
        XCTAssertEqual(server.terminationReason, .exit, serverLog())
        XCTAssertEqual(server.terminationStatus, 0, serverLog())

        // Nothing listens there any more: one clear line, non-zero exit.
        let down = try runProcess(tern, ["bench-serve", "--url", "http://127.0.0.1:\(port)", "--num-requests", "1"],
                                  environment: cleanEnvironment)
        XCTAssertNotEqual(down.status, 0)
        XCTAssertTrue(down.stderr.contains("cannot reach"), down.stderr)
    }

    func testBenchServeRefusesNonLoopbackHosts() throws {
        let tern = try TestPaths.ternBinary()
        for url in ["http://10.1.2.3:8080", "http://example.com", "http://[2001:db8::1]:80", "https://127.0.0.1:8080"] {
            let r = try runProcess(tern, ["bench-serve", "--url", url, "--num-requests", "1"], environment: cleanEnvironment)
            XCTAssertNotEqual(r.status, 0, url)
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains("--url"), r.stderr)
        }
    }
}
