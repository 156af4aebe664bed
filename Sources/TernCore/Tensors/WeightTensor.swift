import CKernels
import Foundation

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
    /// The same matrix in the kernels' load-time packed layout (see tern_pack_weights), when the CPU path
    /// has one for this type; matrix products then read only this copy.
    public private(set) var packed: UnsafeRawPointer?
    private var packedOwner: AnyObject?
    /// Set when products go through the sparse kernels (Linear checks it first): for Tern's sparse tensors
    /// `data` is the blob and `type` the type of its stored values, and only `dequantizeRow` may read them; for a
    /// dense matrix found to have whole zero chunks at load, `data` stays the dense original.
    public private(set) var sparse: SparseMatrix?
    /// Whether `dequantizeRow` reads rows back from `packed` (the 32-value types; see tern_dequantize_packed_row)
    /// rather than from `data`, whose mapped pages were given back after packing: a lookup in the map faults the
    /// page back in with its neighbours (the kernel's fault-around), so a tied embedding's lookups would make the
    /// file's pages resident again, 64 KiB or more for every distinct token.
    public private(set) var rowsFromPacked = false

    public init(name: String, type: GGMLType, shape: [Int], data: UnsafeRawPointer, byteCount: Int, owner: AnyObject) {
        self.name = name
        self.type = type
        self.shape = shape
        self.data = data
        self.byteCount = byteCount
        self.owner = owner
    }

    /// A sparse matrix read from a blob (see SparseMatrix).
    init(name: String, sparse: SparseMatrix, data: UnsafeRawPointer, owner: AnyObject) {
        self.init(name: name, type: sparse.valueType, shape: [sparse.columns, sparse.rows], data: data,
                  byteCount: sparse.blobBytes, owner: owner)
        self.sparse = sparse
    }

    /// A copy of this matrix that also carries the packed layout, if the active kernel path packs its type.
    /// Packing happens once at load; afterwards the mapped original pages of the matrix are released from
    /// memory (they come back from the file only if something reads them again, e.g. embedding lookups).
    /// `rowsReadLater`: rows will be looked up (a tied embedding). A private copy's pages (`--no-mmap`) given back
    /// would read as zeros, so they are kept when lookups would read them (rows the packed copy cannot give).
    public func packedForCompute(rowsReadLater: Bool = false) -> WeightTensor {
        let file = owner as? MappedFile
        let releasable = file.map { $0.isFileBacked || !rowsReadLater || tern_packed_rows_readable(Int32(type.rawValue)) != 0 } ?? false
        if let s = sparse {
            guard let p = s.packed() else { return self }
            var copy = self
            copy.sparse = p
            // The octet layout holds every value again; the index section stays in use.
            if releasable { Self.releasePages(data + s.valuesOffset, s.valuesBytes) }
            return copy
        }
        guard shape.count == 2, !type.isFloat, packed == nil else { return self }
        // Pruned but stored dense: run the nonzero chunks only, when that skips enough of them.
        if let found = SparseMatrix.groupSparse(fromDense: self), let p = found.packed() {
            var copy = self
            copy.sparse = p
            if releasable { Self.releasePages(data, byteCount) }
            return copy
        }
        let size = tern_packed_size(Int32(type.rawValue), Int64(rows), Int64(columns))
        guard size > 0 else { return self }
        let buffer = OwnedBuffer(size: Int(size))
        // About 10 ms for the largest matrix of a small model: not worth threads at load time. Packed a slice of
        // rows at a time, each slice's mapped pages dropped once copied, so a large matrix (Gemma's 262k-row
        // embedding) never holds both forms at once and loading peaks near the packed size, not twice it.
        let slice = 4096
        for r0 in stride(from: 0, to: rows, by: slice) {
            let r1 = min(rows, r0 + slice)
            guard tern_pack_weights_range(Int32(type.rawValue), data, rowBytes, Int64(rows), Int64(columns), buffer.pointer,
                                          Int64(r0), Int64(r1)) == 0 else { return self }
            if releasable { Self.releasePages(data + r0 * rowBytes, (r1 - r0) * rowBytes) }
        }
        var copy = self
        copy.packed = UnsafeRawPointer(buffer.pointer)
        copy.packedOwner = buffer
        // The packing above succeeded, so the layout is valid: the type alone says whether rows can be read back.
        copy.rowsFromPacked = tern_packed_rows_readable(Int32(type.rawValue)) != 0
        return copy
    }

    /// Drops the whole pages inside a range from this process's resident memory: a file's clean mapped pages come
    /// back from the file when read again, anonymous ones (workspace scratch) as zeros.
    static func releasePages(_ p: UnsafeRawPointer, _ count: Int) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (Int(bitPattern: p) + page - 1) / page * page
        let end = (Int(bitPattern: p) + count) / page * page
        guard end > start else { return }
        _ = madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, MADV_DONTNEED)
    }

    /// Row r as `columns` floats, whatever the storage (dense types or a sparse blob).
    public func dequantizeRow(_ r: Int, into dst: UnsafeMutablePointer<Float>) {
        if let s = sparse { s.dequantizeRow(r, into: dst); return }
        if rowsFromPacked, let packed {
            tern_dequantize_packed_row(Int32(type.rawValue), packed, Int64(columns), Int64(r), dst)
            return
        }
        tern_dequantize_row(Int32(type.rawValue), data + r * rowBytes, dst, Int64(columns))
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
