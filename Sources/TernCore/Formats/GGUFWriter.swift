// Writes GGUF v3 files: metadata in the given order, tensor infos, then tensor data aligned to
// `general.alignment`. Used by `tern convert` and by tests that need hand-made (or deliberately broken) files.

import Foundation

public struct GGUFWriter {
    public struct Tensor {
        public let name: String
        public let type: GGMLType
        /// GGML order (contiguous dimension first).
        public let shape: [Int]
        /// Produces exactly `byteCount` bytes of tensor data when the file is written.
        public let byteCount: Int
        public let write: (UnsafeMutableRawBufferPointer) throws -> Void

        public init(name: String, type: GGMLType, shape: [Int], byteCount: Int,
                    write: @escaping (UnsafeMutableRawBufferPointer) throws -> Void) {
            self.name = name
            self.type = type
            self.shape = shape
            self.byteCount = byteCount
            self.write = write
        }

        public init(name: String, type: GGMLType, shape: [Int], data: Data) {
            self.init(name: name, type: type, shape: shape, byteCount: data.count) { out in
                data.withUnsafeBytes { out.copyMemory(from: $0) }
            }
        }
    }

    public var metadata: [(key: String, value: GGUFValue)] = []
    public var tensors: [Tensor] = []
    public var alignment = 32

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.key == key }) {
            metadata[i].value = value
        } else {
            metadata.append((key, value))
        }
    }

    public func write(to path: String) throws {
        var header = Data()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
        func str(_ s: String) {
            let bytes = Array(s.utf8)
            u64(UInt64(bytes.count))
            header.append(contentsOf: bytes)
        }
        func typeID(_ v: GGUFValue) -> UInt32 {
            switch v {
            case .uint8: return 0
            case .int8: return 1
            case .uint16: return 2
            case .int16: return 3
            case .uint32: return 4
            case .int32: return 5
            case .float32: return 6
            case .bool: return 7
            case .string: return 8
            case .array, .fileArray: return 9
            case .uint64: return 10
            case .int64: return 11
            case .float64: return 12
            }
        }
        func value(_ v: GGUFValue) throws {
            switch v {
            case .uint8(let x): header.append(x)
            case .int8(let x): header.append(UInt8(bitPattern: x))
            case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { header.append(contentsOf: $0) }
            case .int16(let x): withUnsafeBytes(of: x.littleEndian) { header.append(contentsOf: $0) }
            case .uint32(let x): u32(x)
            case .int32(let x): u32(UInt32(bitPattern: x))
            case .float32(let x): u32(x.bitPattern)
            case .bool(let x): header.append(x ? 1 : 0)
            case .string(let s): str(s)
            case .uint64(let x): u64(x)
            case .int64(let x): u64(UInt64(bitPattern: x))
            case .float64(let x): u64(x.bitPattern)
            case .array(let items):
                let t = items.first.map(typeID) ?? 0
                guard items.allSatisfy({ typeID($0) == t }) else {
                    throw CheckpointError(file: path, "GGUF arrays must hold one type")
                }
                u32(t)
                u64(UInt64(items.count))
                for i in items { try value(i) }
            case .fileArray(let a):
                u32(a.elementType)
                u64(UInt64(a.count))
                header.append(contentsOf: a.bytes)
            }
        }

        var meta = metadata
        if alignment != 32, !meta.contains(where: { $0.key == "general.alignment" }) {
            meta.append(("general.alignment", .uint32(UInt32(alignment))))
        }
        header.append(contentsOf: Array("GGUF".utf8))
        u32(3)
        u64(UInt64(tensors.count))
        u64(UInt64(meta.count))
        for (k, v) in meta {
            str(k)
            u32(typeID(v))
            try value(v)
        }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            str(t.name)
            u32(UInt32(t.shape.count))
            for d in t.shape { u64(UInt64(d)) }
            u32(t.type.rawValue)
            u64(UInt64(offset))
            offsets.append(offset)
            offset += (t.byteCount + alignment - 1) / alignment * alignment
        }
        let pad = (alignment - header.count % alignment) % alignment
        header.append(Data(count: pad))

        guard FileManager.default.createFile(atPath: path, contents: nil) else {
            throw CheckpointError(file: path, "cannot create the file")
        }
        guard let fh = FileHandle(forWritingAtPath: path) else { throw CheckpointError(file: path, "cannot open for writing") }
        defer { try? fh.close() }
        try fh.write(contentsOf: header)
        for t in tensors {
            let padded = (t.byteCount + alignment - 1) / alignment * alignment
            var buf = Data(count: padded)
            try buf.withUnsafeMutableBytes { raw in
                try t.write(UnsafeMutableRawBufferPointer(rebasing: raw[0..<t.byteCount]))
            }
            try fh.write(contentsOf: buf)
        }
    }
}
