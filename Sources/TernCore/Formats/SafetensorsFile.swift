// safetensors (Hugging Face): u64 header length, a JSON header {name: {dtype, shape, data_offsets}}, raw data.
// Memory-mapped like GGUF; every offset in the header is checked against the file.

import Foundation

public struct SafetensorsTensorInfo: Sendable {
    public let name: String
    public let dtype: String
    /// Row-major, outermost first (as in the JSON header).
    public let shape: [Int]
    public let fileOffset: Int
    public let byteCount: Int
}

public final class SafetensorsFile: Sendable {
    public let path: String
    public let tensors: [String: SafetensorsTensorInfo]
    public let file: MappedFile

    static let dtypeSizes: [String: Int] = [
        "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
        "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
    ]

    public convenience init(path: String, backing: MappedFile.Backing = .mapped) throws {
        try self.init(mapped: try MappedFile(path: path, backing: backing))
    }

    public init(mapped file: MappedFile) throws {
        self.file = file
        let path = file.path
        self.path = path
        var r = ByteCursor(base: file.base, size: file.size, path: path)
        let headerLength = try r.read(UInt64.self, "header length")
        guard headerLength >= 2, headerLength <= UInt64(file.size - 8), headerLength <= 100 << 20 else {
            throw CheckpointError(file: path, "header length \(headerLength) does not fit the file (\(file.size) bytes; not safetensors, or truncated)")
        }
        let headerData = Data(bytes: file.base + 8, count: Int(headerLength))
        guard let header = (try? JSONSerialization.jsonObject(with: headerData)) as? [String: Any] else {
            throw CheckpointError(file: path, "header is not a JSON object")
        }
        let dataStart = 8 + Int(headerLength)
        let dataSize = file.size - dataStart
        var tensors: [String: SafetensorsTensorInfo] = [:]
        for (name, value) in header where name != "__metadata__" {
            guard let entry = value as? [String: Any],
                  let dtype = entry["dtype"] as? String,
                  let shapeAny = entry["shape"] as? [Any],
                  let offsAny = entry["data_offsets"] as? [Any], offsAny.count == 2 else {
                throw CheckpointError(file: path, "tensor '\(name)' entry lacks dtype, shape or data_offsets")
            }
            guard let elemSize = Self.dtypeSizes[dtype] else {
                throw CheckpointError(file: path, "tensor '\(name)' has unknown dtype \(dtype)")
            }
            var shape: [Int] = []
            var elements = 1
            for d in shapeAny {
                guard let n = (d as? NSNumber)?.intValue, n >= 0, n <= Int(Int32.max) else {
                    throw CheckpointError(file: path, "tensor '\(name)' has an invalid shape \(shapeAny)")
                }
                shape.append(n)
                let (e, o) = elements.multipliedReportingOverflow(by: n)
                guard !o, e <= 1 << 40 else { throw CheckpointError(file: path, "tensor '\(name)' has an absurd element count") }
                elements = e
            }
            guard let begin = (offsAny[0] as? NSNumber)?.intValue, let end = (offsAny[1] as? NSNumber)?.intValue,
                  begin >= 0, end >= begin, end <= dataSize else {
                throw CheckpointError(file: path, "tensor '\(name)' data_offsets \(offsAny) lie outside the file's data (\(dataSize) bytes; truncated?)")
            }
            guard end - begin == elements * elemSize else {
                throw CheckpointError(file: path, "tensor '\(name)' holds \(end - begin) bytes but \(dtype) \(shape) needs \(elements * elemSize)")
            }
            tensors[name] = SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape,
                                                  fileOffset: dataStart + begin, byteCount: end - begin)
        }
        self.tensors = tensors
    }
}
