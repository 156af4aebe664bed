// gzip compression of complete response bodies with zlib, the rule for which bodies are worth it, and the
// decoding of request bodies sent with Content-Encoding gzip or deflate.

import CZlib
import Foundation

enum HTTPGzip {
    /// Bodies at most this large are sent as they are: the header and CPU cost outweigh the saving.
    static let minimumSize = 1024

    static func isCompressible(contentType: String?) -> Bool {
        guard let type = contentType?.lowercased() else { return false }
        if type.hasPrefix("text/event-stream") { return false }
        return type.hasPrefix("text/") || type.contains("json") || type.contains("javascript")
            || type.contains("xml")
    }

    /// A gzip member (RFC 1952) of `data`, or nil if zlib fails.
    static func compress(_ data: Data, level: Int32 = 6) -> Data? {
        var stream = z_stream()
        // windowBits 15 + 16 asks zlib for a gzip header and trailer instead of a zlib wrapper.
        guard deflateInit2_(&stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, zlibVersion(),
                            Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return nil }
        defer { deflateEnd(&stream) }
        let bound = Int(deflateBound(&stream, uLong(data.count))) + 32
        var out = Data(count: bound)
        let status: Int32 = data.withUnsafeBytes { (input: UnsafeRawBufferPointer) -> Int32 in
            out.withUnsafeMutableBytes { (output: UnsafeMutableRawBufferPointer) -> Int32 in
                stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
                stream.avail_in = uInt(input.count)
                stream.next_out = output.bindMemory(to: Bytef.self).baseAddress
                stream.avail_out = uInt(output.count)
                return deflate(&stream, Z_FINISH)
            }
        }
        guard status == Z_STREAM_END else { return nil }
        out.count = Int(stream.total_out)
        return out
    }

    /// The decoded form of a gzip (RFC 1952, members concatenated) or zlib (RFC 1950) body. Stops with 413 as
    /// soon as the output would pass `limit`: a small body can inflate a thousandfold.
    static func decompress(_ data: Data, limit: Int) throws(HTTPParseError) -> Data {
        var stream = z_stream()
        // windowBits 15 + 32: zlib detects a gzip or a zlib header by itself.
        guard inflateInit2_(&stream, 15 + 32, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw HTTPParseError(status: 500, message: "zlib could not start")
        }
        defer { inflateEnd(&stream) }
        var out = Data()
        var piece = [UInt8](repeating: 0, count: 64 * 1024)
        let input = [UInt8](data)
        var failure: HTTPParseError?
        input.withUnsafeBufferPointer { inBuf in
            stream.next_in = UnsafeMutablePointer(mutating: inBuf.baseAddress)
            stream.avail_in = uInt(inBuf.count)
            while failure == nil {
                let status: Int32 = piece.withUnsafeMutableBufferPointer { p in
                    stream.next_out = p.baseAddress
                    stream.avail_out = uInt(p.count)
                    return inflate(&stream, Z_NO_FLUSH)
                }
                let produced = piece.count - Int(stream.avail_out)
                if out.count + produced > limit {
                    failure = HTTPParseError(status: 413, message: "the decoded body exceeds the limit of \(limit) bytes")
                    break
                }
                out.append(contentsOf: piece[0..<produced])
                switch status {
                case Z_OK:
                    if stream.avail_in == 0 && produced == 0 {
                        failure = HTTPParseError(status: 400, message: "the compressed body is truncated")
                    }
                case Z_STREAM_END:
                    if stream.avail_in == 0 { return }
                    // Another gzip member follows.
                    if inflateReset(&stream) != Z_OK { failure = HTTPParseError(status: 400, message: "the compressed body is corrupt") }
                case Z_BUF_ERROR:
                    failure = HTTPParseError(status: 400, message: "the compressed body is truncated")
                default:
                    failure = HTTPParseError(status: 400, message: "the compressed body is corrupt")
                }
            }
        }
        if let failure { throw failure }
        return out
    }
}
