// GGUF (llama.cpp's checkpoint format, versions 2 and 3): header, typed metadata, tensor infos, aligned data.
// The file is memory-mapped; tensors are views into the mapping. Every count, length and offset read from the
// file is checked against the file's size before it is used, so a corrupt file is an error, never a crash.

import Foundation

public enum GGUFValue: Sendable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case float32(Float), bool(Bool), string(String), uint64(UInt64), int64(Int64), float64(Double)
    case array([GGUFValue])

    public var intValue: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): return Int(v)
        case .bool(let v): return v ? 1 : 0
        default: return nil
        }
    }

    public var doubleValue: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return intValue.map(Double.init)
        }
    }

    public var boolValue: Bool? {
        if case .bool(let v) = self { return v }
        return intValue.map { $0 != 0 }
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var arrayValue: [GGUFValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var description: String {
        switch self {
        case .uint8(let v): return "\(v)"
        case .int8(let v): return "\(v)"
        case .uint16(let v): return "\(v)"
        case .int16(let v): return "\(v)"
        case .uint32(let v): return "\(v)"
        case .int32(let v): return "\(v)"
        case .uint64(let v): return "\(v)"
        case .int64(let v): return "\(v)"
        case .float32(let v): return "\(v)"
        case .float64(let v): return "\(v)"
        case .bool(let v): return "\(v)"
        case .string(let s): return s
        case .array(let a):
            let head = a.prefix(4).map { $0.description }.joined(separator: ", ")
            return a.count > 4 ? "[\(head), … (\(a.count) items)]" : "[\(head)]"
        }
    }
}

public struct GGUFTensorInfo: Sendable {
    public let name: String
    /// GGML order: shape[0] is the innermost (contiguous) dimension.
    public let shape: [Int]
    public let type: GGMLType
    /// Absolute byte offset in the file.
    public let fileOffset: Int
    public let byteCount: Int
    public var elementCount: Int { shape.reduce(1, *) }
}

public final class GGUFFile: Sendable {
    public let path: String
    public let version: Int
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order (for `tern inspect` and for writing the file back out).
    public let metadataKeys: [String]
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    public let file: MappedFile

    private let tensorIndex: [String: Int]

    public convenience init(path: String, backing: MappedFile.Backing = .mapped) throws {
        try self.init(mapped: try MappedFile(path: path, backing: backing))
    }

    public init(mapped file: MappedFile) throws {
        self.file = file
        self.path = file.path
        var r = ByteCursor(base: file.base, size: file.size, path: file.path)

        let magic = try r.read(UInt32.self, "magic")
        guard magic == 0x4655_4747 else { throw CheckpointError(file: path, "not a GGUF file (bad magic)") }
        let version = Int(try r.read(UInt32.self, "version"))
        guard version == 2 || version == 3 else {
            throw CheckpointError(file: path, "unsupported GGUF version \(version) (expected 2 or 3)")
        }
        self.version = version
        let tensorCount = try r.read(UInt64.self, "tensor_count")
        let kvCount = try r.read(UInt64.self, "metadata_kv_count")
        // Each metadata entry needs at least 12 bytes and each tensor info at least 24: a count larger than the
        // file could hold is corrupt, and rejecting it here keeps us from reserving absurd amounts of memory.
        guard kvCount <= UInt64(file.size / 12) else { throw CheckpointError(file: path, "metadata_kv_count \(kvCount) is larger than the file could hold") }
        guard tensorCount <= UInt64(file.size / 24) else { throw CheckpointError(file: path, "tensor_count \(tensorCount) is larger than the file could hold") }

        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        keys.reserveCapacity(Int(kvCount))
        for i in 0..<Int(kvCount) {
            let key = try r.readString("metadata key #\(i)")
            let rawType = try r.read(UInt32.self, "type of metadata '\(key)'")
            let value = try r.readValue(type: rawType, context: "metadata '\(key)'", depth: 0)
            if metadata.updateValue(value, forKey: key) == nil { keys.append(key) }
        }
        self.metadata = metadata
        self.metadataKeys = keys

        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard let v = a.intValue, v > 0, v & (v - 1) == 0, v <= 1 << 20 else {
                throw CheckpointError(file: path, "general.alignment must be a power of two, got \(a)")
            }
            alignment = v
        }
        self.alignment = alignment

        struct RawInfo { let name: String; let shape: [Int]; let type: GGMLType; let offset: UInt64 }
        var raw: [RawInfo] = []
        raw.reserveCapacity(Int(tensorCount))
        for i in 0..<Int(tensorCount) {
            let name = try r.readString("tensor name #\(i)")
            let nDims = try r.read(UInt32.self, "n_dims of tensor '\(name)'")
            guard nDims >= 1 && nDims <= 4 else {
                throw CheckpointError(file: path, "tensor '\(name)' has \(nDims) dimensions (GGUF allows 1 to 4)")
            }
            var shape: [Int] = []
            var elements = 1
            for d in 0..<Int(nDims) {
                let dim = try r.read(UInt64.self, "dimension \(d) of tensor '\(name)'")
                guard dim <= UInt64(Int32.max) else { throw CheckpointError(file: path, "tensor '\(name)' dimension \(d) is absurd (\(dim))") }
                shape.append(Int(dim))
                let (e, o) = elements.multipliedReportingOverflow(by: Int(dim))
                guard !o, e <= 1 << 40 else { throw CheckpointError(file: path, "tensor '\(name)' has an absurd element count") }
                elements = e
            }
            let rawType = try r.read(UInt32.self, "type of tensor '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw CheckpointError(file: path, "tensor '\(name)' has unsupported tensor type id \(rawType)")
            }
            let offset = try r.read(UInt64.self, "offset of tensor '\(name)'")
            raw.append(RawInfo(name: name, shape: shape, type: type, offset: offset))
        }

        let dataStart = (r.offset + alignment - 1) / alignment * alignment
        guard dataStart <= file.size || tensorCount == 0 else {
            throw CheckpointError(file: path, "file ends before the tensor data section (truncated?)")
        }
        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        for t in raw {
            guard let bytes = t.type.byteCount(elements: t.shape.reduce(1, *)) else {
                throw CheckpointError(file: path, "tensor '\(t.name)' of type \(t.type) has \(t.shape.reduce(1, *)) elements, not a whole number of \(t.type.blockElements)-element blocks")
            }
            guard t.shape[0] % t.type.blockElements == 0 else {
                throw CheckpointError(file: path, "tensor '\(t.name)' rows of \(t.shape[0]) elements do not split into \(t.type) blocks")
            }
            guard t.offset <= UInt64(file.size), UInt64(dataStart) + t.offset + UInt64(bytes) <= UInt64(file.size) else {
                throw CheckpointError(file: path, "tensor '\(t.name)' data (offset \(t.offset), \(bytes) bytes) lies past the end of the file (\(file.size) bytes; truncated?)")
            }
            guard index[t.name] == nil else { throw CheckpointError(file: path, "tensor '\(t.name)' appears twice") }
            index[t.name] = infos.count
            infos.append(GGUFTensorInfo(name: t.name, shape: t.shape, type: t.type,
                                        fileOffset: dataStart + Int(t.offset), byteCount: bytes))
        }
        self.tensors = infos
        self.tensorIndex = index
    }

    public func tensor(named name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    // MARK: typed metadata access

    public func int(_ key: String) -> Int? { metadata[key]?.intValue }
    public func double(_ key: String) -> Double? { metadata[key]?.doubleValue }
    public func bool(_ key: String) -> Bool? { metadata[key]?.boolValue }
    public func string(_ key: String) -> String? { metadata[key]?.stringValue }

    public func stringArray(_ key: String) throws -> [String]? {
        guard let v = metadata[key] else { return nil }
        guard let a = v.arrayValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of strings") }
        return try a.map {
            guard let s = $0.stringValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of strings") }
            return s
        }
    }

    public func doubleArray(_ key: String) throws -> [Double]? {
        guard let v = metadata[key] else { return nil }
        guard let a = v.arrayValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of numbers") }
        return try a.map {
            guard let d = $0.doubleValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of numbers") }
            return d
        }
    }

    public func intArray(_ key: String) throws -> [Int]? {
        guard let v = metadata[key] else { return nil }
        guard let a = v.arrayValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of integers") }
        return try a.map {
            guard let d = $0.intValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of integers") }
            return d
        }
    }
}

/// Bounds-checked little-endian reader over a mapped file.
struct ByteCursor {
    let base: UnsafeRawPointer
    let size: Int
    let path: String
    var offset = 0

    init(base: UnsafeRawPointer, size: Int, path: String) {
        self.base = base
        self.size = size
        self.path = path
    }

    mutating func need(_ n: Int, _ what: String) throws {
        guard n >= 0, n <= size - offset else {
            throw CheckpointError(file: path, "file ends while reading \(what) at byte \(offset) (truncated or corrupt)")
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: String) throws -> T {
        try need(MemoryLayout<T>.size, what)
        let v = base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func readString(_ what: String) throws -> String {
        let len = try read(UInt64.self, "length of \(what)")
        guard len <= UInt64(size - offset) else {
            throw CheckpointError(file: path, "\(what) claims \(len) bytes, more than the file holds (corrupt)")
        }
        let n = Int(len)
        let s = String(decoding: UnsafeRawBufferPointer(start: base + offset, count: n), as: UTF8.self)
        offset += n
        return s
    }

    mutating func readValue(type: UInt32, context: String, depth: Int) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try read(UInt8.self, context))
        case 1: return .int8(try read(Int8.self, context))
        case 2: return .uint16(try read(UInt16.self, context))
        case 3: return .int16(try read(Int16.self, context))
        case 4: return .uint32(try read(UInt32.self, context))
        case 5: return .int32(try read(Int32.self, context))
        case 6: return .float32(Float(bitPattern: try read(UInt32.self, context)))
        case 7:
            let b = try read(UInt8.self, context)
            guard b <= 1 else { throw CheckpointError(file: path, "\(context): bool value \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case 8: return .string(try readString(context))
        case 9:
            guard depth < 4 else { throw CheckpointError(file: path, "\(context): arrays nested too deeply") }
            let elemType = try read(UInt32.self, "array type of \(context)")
            let count = try read(UInt64.self, "array length of \(context)")
            // Smallest element is one byte (strings need 8): a count past the remaining bytes is corrupt.
            let minSize: UInt64 = elemType == 8 ? 8 : 1
            guard count <= UInt64(size - offset) / minSize else {
                throw CheckpointError(file: path, "\(context): array length \(count) is larger than the file could hold (truncated or corrupt)")
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<Int(count) {
                items.append(try readValue(type: elemType, context: context, depth: depth + 1))
            }
            return .array(items)
        case 10: return .uint64(try read(UInt64.self, context))
        case 11: return .int64(try read(Int64.self, context))
        case 12: return .float64(Double(bitPattern: try read(UInt64.self, context)))
        default:
            throw CheckpointError(file: path, "\(context) has unknown value type \(type)")
        }
    }
}
