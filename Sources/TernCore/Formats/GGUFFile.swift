// GGUF (llama.cpp's checkpoint format, versions 2 and 3): header, typed metadata, tensor infos, aligned data.
// The file is memory-mapped; tensors are views into the mapping. Every count, length and offset read from the
// file is checked against the file's size before it is used, so a corrupt file is an error, never a crash.

import Foundation

public enum GGUFValue: Sendable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case float32(Float), bool(Bool), string(String), uint64(UInt64), int64(Int64), float64(Double)
    case array([GGUFValue])
    /// A long array of numbers or strings left where it lies in the mapped file, read when asked for: a
    /// SentencePiece vocabulary's tokens, scores and types (262 144 each for Gemma 3) would otherwise stay
    /// resident for the file's life as GGUFValues, 24 bytes an element, besides the copies the tokenizer makes.
    case fileArray(GGUFFileArray)

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
        if case .fileArray(let a) = self { return a.elements() }
        return nil
    }

    /// Whether this is an array, without reading its elements.
    public var isArray: Bool {
        switch self {
        case .array, .fileArray: return true
        default: return false
        }
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
        case .fileArray(let a):
            let head = (a.elements(limit: 4) ?? []).map { $0.description }.joined(separator: ", ")
            return a.count > 4 ? "[\(head), … (\(a.count) items)]" : "[\(head)]"
        }
    }
}

/// An array of numbers or strings in a GGUF file's metadata, read from the mapped file on demand. Its bytes were
/// checked when the file was opened; it keeps the mapping alive.
public struct GGUFFileArray: Sendable {
    let file: MappedFile
    /// Where the first element starts, and the bytes of all elements (GGUF's encoding, little-endian).
    let offset: Int
    let byteCount: Int
    /// GGUF's value type of every element (0–8, 10–12: never a nested array).
    public let elementType: UInt32
    public let count: Int

    /// Arrays at least this long are left in the file.
    static let minimumCount = 256

    /// The elements as values (the first `limit` only, when given); nil only if the file changed under the map.
    public func elements(limit: Int? = nil) -> [GGUFValue]? {
        var r = ByteCursor(base: file.base, size: offset + byteCount, path: file.path)
        r.offset = offset
        let n = min(count, limit ?? count)
        var out: [GGUFValue] = []
        out.reserveCapacity(n)
        for _ in 0..<n {
            guard let v = try? r.readValue(type: elementType, context: "array", depth: 1) else { return nil }
            out.append(v)
        }
        return out
    }

    /// The elements as strings, without GGUFValues in between; nil when they are not strings.
    public func strings() -> [String]? {
        guard elementType == 8 else { return nil }
        var r = ByteCursor(base: file.base, size: offset + byteCount, path: file.path)
        r.offset = offset
        var out: [String] = []
        out.reserveCapacity(count)
        for _ in 0..<count {
            guard let s = try? r.readString("array") else { return nil }
            out.append(s)
        }
        return out
    }

    /// Each element converted by `convert` (nil when it does not convert), without an array of GGUFValues between.
    func map<T>(_ convert: (GGUFValue) -> T?) -> [T]? {
        guard elementType != 8 else { return nil }
        var r = ByteCursor(base: file.base, size: offset + byteCount, path: file.path)
        r.offset = offset
        var out: [T] = []
        out.reserveCapacity(count)
        for _ in 0..<count {
            guard let v = try? r.readValue(type: elementType, context: "array", depth: 1), let t = convert(v) else { return nil }
            out.append(t)
        }
        return out
    }

    /// The raw bytes of the elements, for writing them back out unchanged.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: file.base + offset, count: byteCount) }
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
            let value = try r.readValue(type: rawType, context: "metadata '\(key)'", depth: 0, file: file)
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

    /// Gives back the resident pages of the header (metadata and tensor infos) when the file is mapped: once the
    /// tokenizer has its own copy of the vocabulary, 6 MiB of Gemma 3's file would otherwise stay resident for
    /// nothing. Reading metadata afterwards faults the pages back in from the file.
    public func releaseHeaderPages() {
        guard file.isFileBacked else { return }
        WeightTensor.releasePages(file.base, tensors.map(\.fileOffset).min() ?? file.size)
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
        if case .fileArray(let fa) = v, let strings = fa.strings() { return strings }
        guard let a = v.arrayValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of strings") }
        return try a.map {
            guard let s = $0.stringValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of strings") }
            return s
        }
    }

    public func doubleArray(_ key: String) throws -> [Double]? {
        guard let v = metadata[key] else { return nil }
        if case .fileArray(let fa) = v, let numbers = fa.map(\.doubleValue) { return numbers }
        guard let a = v.arrayValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of numbers") }
        return try a.map {
            guard let d = $0.doubleValue else { throw CheckpointError(file: path, "metadata '\(key)' should be an array of numbers") }
            return d
        }
    }

    public func intArray(_ key: String) throws -> [Int]? {
        guard let v = metadata[key] else { return nil }
        if case .fileArray(let fa) = v, let numbers = fa.map(\.intValue) { return numbers }
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

    /// Bytes of each fixed-size value type; nil for strings, arrays and unknown types.
    static func fixedSize(_ type: UInt32) -> Int? {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 10, 11, 12: return 8
        default: return nil
        }
    }

    /// Checks a string's length against the file and moves past it.
    mutating func skipString(_ what: String) throws {
        let len = try read(UInt64.self, "length of \(what)")
        guard len <= UInt64(size - offset) else {
            throw CheckpointError(file: path, "\(what) claims \(len) bytes, more than the file holds (corrupt)")
        }
        offset += Int(len)
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

    /// `file`: when given, long arrays of numbers or strings become `.fileArray`s over it (checked, then skipped).
    mutating func readValue(type: UInt32, context: String, depth: Int, file: MappedFile? = nil) throws -> GGUFValue {
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
            if let file, count >= UInt64(GGUFFileArray.minimumCount), elemType != 9,
               let fixed = Self.fixedSize(elemType) ?? (elemType == 8 ? 0 : nil) {
                let start = offset
                if fixed > 0 {
                    try need(Int(count) * fixed, context)
                    offset += Int(count) * fixed
                } else {
                    for _ in 0..<Int(count) { _ = try skipString(context) }
                }
                if elemType == 7 {  // bools must be 0 or 1, as readValue checks them one by one
                    for i in start..<offset where base.load(fromByteOffset: i, as: UInt8.self) > 1 {
                        throw CheckpointError(file: path, "\(context): bool value is neither 0 nor 1")
                    }
                }
                return .fileArray(GGUFFileArray(file: file, offset: start, byteCount: offset - start,
                                                elementType: elemType, count: Int(count)))
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
