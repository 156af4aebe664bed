// Entry points for the fuzz targets in Sources/tern-fuzz: each drives one of the server's parsers over arbitrary
// bytes the way a connection or a route would, and checks what the server relies on. They are public because the
// fuzz executable builds in every configuration (release included), where `@testable import` is unavailable; they
// touch no socket, engine or global state.

import Foundation
import TernCore

public enum ServerFuzzing {
    /// Limits as small as a real server's defaults would make them, so that limit paths are reachable.
    static let maxHeaderBytes = 16 * 1024
    static let maxBodyBytes = 64 * 1024

    /// The request parsing of `HTTPConnection.process`, over `bytes` delivered in pieces: the first byte picks the
    /// piece size (1…256), so the incremental paths (request-line scanner, head search resumed where it stopped,
    /// chunked decoder across reads) see splits anywhere. Pipelined requests are parsed until an error. Crashes
    /// and failed preconditions are the findings.
    public static func httpRequest(_ bytes: [UInt8]) {
        guard let first = bytes.first else { return }
        let piece = Int(first) + 1
        let input = bytes.dropFirst()
        var buf: [UInt8] = []
        var scanner = HTTPRequestLineScanner()
        var scanOffset = 0
        var head: HTTPParsedHead?
        var chunked: HTTPChunkedDecoder?
        var remaining = 0
        var body: [UInt8] = []
        var at = input.startIndex
        while at < input.endIndex {
            let next = min(at + piece, input.endIndex)
            buf += input[at..<next]
            at = next
            while true {
                if let h = head {
                    if var d = chunked {
                        let used: Int
                        do { used = try d.consume(buf, from: 0) } catch { check(error); return }
                        precondition(used <= buf.count, "chunked decoder consumed past its input")
                        buf.removeFirst(used)
                        chunked = d
                        guard d.isDone else { break }
                        body = d.body
                        precondition(body.count <= maxBodyBytes, "chunked body beyond the limit")
                    } else {
                        let take = min(remaining, buf.count)
                        body += buf[0..<take]
                        buf.removeFirst(take)
                        remaining -= take
                        guard remaining == 0 else { break }
                    }
                    if h.contentEncoding != nil, !body.isEmpty {
                        do {
                            let plain = try HTTPGzip.decompress(Data(body), limit: maxBodyBytes)
                            precondition(plain.count <= maxBodyBytes, "decompressed body beyond the limit")
                        } catch { check(error) }
                    }
                    head = nil; chunked = nil; body = []
                    continue
                }
                var skip = 0
                while skip < buf.count && (buf[skip] == 13 || buf[skip] == 10) && skip < 64 { skip += 1 }
                if skip > 0 { buf.removeFirst(skip); scanOffset = 0 }
                if buf.isEmpty { break }
                guard let end = HTTPParser.findHeadEnd(buf, from: scanOffset) else {
                    if scanner.check(buf) != nil || buf.count > maxHeaderBytes { return }
                    scanOffset = max(0, buf.count - 3)
                    break
                }
                precondition(end <= buf.count, "head end past the buffer")
                if end > maxHeaderBytes { return }
                let parsed: HTTPParsedHead
                do { parsed = try HTTPParser.parseHead(buf[0..<end], maxBodyBytes: maxBodyBytes) } catch { check(error); return }
                precondition(parsed.path.hasPrefix("/") || parsed.path == "*", "request path '\(parsed.path)' is not origin-form")
                buf.removeFirst(end)
                scanOffset = 0
                scanner = HTTPRequestLineScanner()
                head = parsed
                switch parsed.framing {
                case .none: remaining = 0
                case .length(let n):
                    precondition(n > 0 && n <= maxBodyBytes, "Content-Length \(n) accepted beyond the limit")
                    remaining = n
                case .chunked: chunked = HTTPChunkedDecoder(maxBodyBytes: maxBodyBytes)
                }
            }
        }
    }

    private static func check(_ error: HTTPParseError) {
        precondition((400..<600).contains(error.status), "parse error with status \(error.status)")
    }

    /// A request body through the API's decoding: the JSON parser, then every route that reads a body
    /// (completions, chat completions, /tokenize's options), against a real model's tokenizer and template.
    /// The server answers any error other than an `APIError` with 500, so a malformed body that throws anything
    /// else, or an `APIError` that is not a 4xx, is a finding; so is an accepted request that does not fit the
    /// context.
    public static func apiRequest(_ body: [UInt8], model: LoadedModel, contextLength: Int, modelName: String) {
        let data = Data(body)
        for kind in [CompletionJob.Kind.completion, .chat] {
            do {
                let job = try CompletionJob.parse(data, kind: kind, model: model, contextLength: contextLength,
                                                  modelName: modelName)
                for r in job.requests {
                    precondition(!r.promptTokens.isEmpty && r.promptTokens.count < contextLength, "prompt of \(r.promptTokens.count) tokens accepted")
                    precondition(r.promptTokens.allSatisfy { $0 >= 0 && Int($0) < model.model.vocabularySize }, "prompt token out of the vocabulary")
                }
                precondition(job.n >= 1 && job.n <= CompletionJob.maxN, "n = \(job.n) accepted")
            } catch let e as APIError {
                precondition((400..<500).contains(e.status), "status \(e.status) for a request body: \(e.message)")
            } catch {
                preconditionFailure("a request body raised \(type(of: error)) (the server would answer 500): \(error)")
            }
        }
        do {
            let f = try RequestFields(body: data)
            _ = try CompletionJob.specialTokenOptions(f)
        } catch let e as APIError {
            precondition((400..<500).contains(e.status), "status \(e.status) for a request body: \(e.message)")
        } catch {
            preconditionFailure("a request body raised \(type(of: error)): \(error)")
        }
    }
}
