// A read-only weight tensor: a typed view into a memory-mapped checkpoint (or into memory Tern owns, for
// tensors that had to be converted at load time). Shapes use GGML order: shape[0] is the contiguous dimension,
// so a matrix W with `rows` outputs and `columns` inputs has shape [columns, rows].

public struct WeightTensor: @unchecked Sendable {
    // The pointer stays valid while `owner` (the mapping or buffer) lives; the data is never written.
    public let name: String
    public let type: GGMLType
    public let shape: [Int]
    public let data: UnsafeRawPointer
    public let byteCount: Int
    let owner: AnyObject

    public init(name: String, type: GGMLType, shape: [Int], data: UnsafeRawPointer, byteCount: Int, owner: AnyObject) {
        self.name = name
        self.type = type
        self.shape = shape
        self.data = data
        self.byteCount = byteCount
        self.owner = owner
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var columns: Int { shape[0] }
    public var rows: Int { shape.count > 1 ? shape[1...].reduce(1, *) : 1 }
    public var rowBytes: Int { byteCount / max(rows, 1) }
}

/// Memory Tern allocated for tensors it converted while loading (e.g. F64 or I8 safetensors to F32).
final class OwnedBuffer: @unchecked Sendable {
    // Written once while loading, read-only afterwards.
    let pointer: UnsafeMutableRawPointer
    let size: Int
    init(size: Int) {
        self.size = size
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 64)
    }
    deinit { pointer.deallocate() }
}
