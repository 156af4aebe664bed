import CKernels
import Foundation

// Tern's sparse weight matrices as they sit in a GGUF file: one I8 tensor per matrix, under the dense tensor's
// name, whose bytes are a self-describing blob (a 128-byte header, an index section, a values section). Any
// GGUF reader can skip such a tensor; Tern recognises the magic. docs/SPARSE_FORMATS.md is the byte-level
// contract; the kernels are tern_sparse.h's. This file parses and checks blobs (every offset and index is
// checked before a kernel may read it) and writes them for the converter.

public struct SparseMatrix: @unchecked Sendable {
    // The pointers in `matrix` stay valid while the tensor's owner (mapping or buffer) and `packedOwner` live.
    public enum Layout: Int32, Sendable, CaseIterable {
        case group = 1, bitmask = 2, nm24 = 3

        /// The name `tern convert --sparse-pattern` and `tern inspect` use.
        public var name: String {
            switch self {
            case .group: return "group"
            case .bitmask: return "unstructured"
            case .nm24: return "2:4"
            }
        }
    }

    /// "TSPR" read as a little-endian u32.
    static let magic: UInt32 = 0x5250_5354
    static let version: UInt16 = 1
    static let headerBytes = 128
    static let sectionAlignment = 32

    public let layout: Layout
    public let valueType: GGMLType
    public let rows: Int
    public let columns: Int
    /// Group layout: 32-column chunks each row keeps.
    public let keptChunks: Int
    /// Weights the matrix stores a value for (the rest are zero): density = storedWeights / (rows × columns).
    public let storedWeights: Int
    public let blobBytes: Int
    private(set) var matrix: tern_sparse_matrix
    private var packedOwner: AnyObject?
    /// Holds the blob when Tern built it in memory (a dense matrix found to be group-sparse).
    private var blobOwner: AnyObject?
    let valuesOffset: Int
    let valuesBytes: Int

    public var density: Double { Double(storedWeights) / Double(rows * columns) }
    /// Whether products read the load-time octet layout (group sparsity whose octets of rows agree).
    public var isPacked: Bool { matrix.packed != nil }

    /// True when `data` starts like a sparse blob (the tensor is then parsed with `init(blob:)`).
    static func looksLikeBlob(_ data: UnsafeRawPointer, byteCount: Int) -> Bool {
        byteCount >= headerBytes && data.loadUnaligned(as: UInt32.self) == magic
    }

    /// Parses and checks a blob; `file` and `name` only label errors.
    init(blob p: UnsafeRawPointer, byteCount: Int, file: String, name: String) throws {
        func fail(_ why: String) -> CheckpointError { CheckpointError(file: file, "sparse tensor '\(name)': \(why)") }
        guard Self.looksLikeBlob(p, byteCount: byteCount) else { throw fail("not a Tern sparse blob") }
        func u64(_ off: Int) -> Int { Int(truncatingIfNeeded: p.loadUnaligned(fromByteOffset: off, as: UInt64.self)) }
        let version = p.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        guard version == Self.version else { throw fail("format version \(version) (this Tern reads \(Self.version))") }
        let rawLayout = Int32(p.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        guard let layout = Layout(rawValue: rawLayout) else { throw fail("unknown layout \(rawLayout)") }
        let rawType = p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
        guard let valueType = GGMLType(rawValue: rawType) else { throw fail("unknown value type \(rawType)") }
        let rows = u64(16), columns = u64(24), kept = u64(32), stored = u64(40)
        let indexOffset = u64(48), indexBytes = u64(56), valuesOffset = u64(64), valuesBytes = u64(72)
        guard rows > 0, rows <= 1 << 31 else { throw fail("\(rows) rows (1 to 2^31)") }
        guard columns > 0, columns <= 1 << 31, columns % 32 == 0 else {
            throw fail("\(columns) columns (a positive multiple of 32, at most 2^31)")
        }
        let expectedStored = layout == .group ? rows * kept * 32 : layout == .nm24 ? rows * columns / 2 : stored
        guard stored >= 0, stored <= rows * columns, stored == expectedStored else {
            throw fail("the header counts \(stored) stored weights where the layout holds \(expectedStored)")
        }
        for (what, off, len) in [("index", indexOffset, indexBytes), ("values", valuesOffset, valuesBytes)] {
            guard off >= Self.headerBytes, off % Self.sectionAlignment == 0 else {
                throw fail("the \(what) section starts at \(off); it must follow the \(Self.headerBytes)-byte header at a multiple of \(Self.sectionAlignment)")
            }
            guard len >= 0, off <= byteCount, len <= byteCount - off else {
                throw fail("the \(what) section (\(off), \(len) bytes) runs past the tensor's \(byteCount) bytes")
            }
        }
        var m = tern_sparse_matrix()
        m.layout = layout.rawValue
        m.value_type = Int32(valueType.rawValue)
        m.rows = Int64(rows)
        m.columns = Int64(columns)
        m.kept = Int64(kept)
        m.index = (p + indexOffset).assumingMemoryBound(to: UInt8.self)
        m.values = (p + valuesOffset).assumingMemoryBound(to: UInt8.self)
        m.packed = nil
        var why = [CChar](repeating: 0, count: 256)
        guard tern_sparse_validate(&m, indexBytes, valuesBytes, &why, why.count) == 0 else {
            throw fail(String(decoding: why.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        self.layout = layout
        self.valueType = valueType
        self.rows = rows
        self.columns = columns
        self.keptChunks = kept
        self.storedWeights = stored
        self.blobBytes = byteCount
        self.matrix = m
        self.valuesOffset = valuesOffset
        self.valuesBytes = valuesBytes
    }

    /// Writes a blob's header (docs/SPARSE_FORMATS.md) at `p`, whose other header bytes the caller has zeroed.
    static func writeHeader(_ p: UnsafeMutableRawPointer, layout: Layout, valueType: GGMLType, rows: Int, columns: Int,
                            keptChunks: Int, storedWeights: Int, index: (offset: Int, bytes: Int),
                            values: (offset: Int, bytes: Int)) {
        p.storeBytes(of: magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: version.littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: UInt16(layout.rawValue).littleEndian, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: valueType.rawValue.littleEndian, toByteOffset: 8, as: UInt32.self)
        for (off, v) in [(16, rows), (24, columns), (32, keptChunks), (40, storedWeights),
                         (48, index.offset), (56, index.bytes), (64, values.offset), (72, values.bytes)] {
            p.storeBytes(of: UInt64(v).littleEndian, toByteOffset: off, as: UInt64.self)
        }
    }

    /// out[i·ldo + r] for rows [r0, r1) and m activation rows (see tern_sparse_matmul).
    @inline(__always)
    func multiply(_ a: UnsafePointer<tern_q8_block>, m: Int, out: UnsafeMutablePointer<Float>, ldo: Int, _ r0: Int, _ r1: Int) {
        withUnsafePointer(to: matrix) { tern_sparse_matmul($0, a, Int64(m), out, Int64(ldo), Int64(r0), Int64(r1)) }
    }

    func dequantizeRow(_ r: Int, into dst: UnsafeMutablePointer<Float>) {
        withUnsafePointer(to: matrix) { tern_sparse_dequantize_row($0, Int64(r), dst) }
    }

    /// A copy whose products read the octet layout, when this matrix has one on the active kernel path.
    func packed() -> SparseMatrix? {
        let size = withUnsafePointer(to: matrix) { tern_sparse_packed_size($0) }
        guard size > 0 else { return nil }
        let buffer = OwnedBuffer(size: size)
        guard withUnsafePointer(to: matrix, { tern_sparse_pack($0, buffer.pointer) }) == 0 else { return nil }
        var copy = self
        copy.matrix.packed = UnsafePointer(buffer.pointer.assumingMemoryBound(to: UInt8.self))
        copy.packedOwner = buffer
        return copy
    }
}

extension SparseMatrix {
    /// Share of chunks a dense matrix must be able to skip before it runs as group-sparse: a kept chunk costs the
    /// octet kernel about what a dense block costs the packed dense kernel, so skipping a fifth already pays.
    static let zeroChunkShareThreshold = 0.2

    /// A dense Q4_0 / Q4_1 / Q8_0 matrix whose weights are mostly pruned but stored dense: when whole 32-column
    /// chunks are zero in all 8 rows of enough octets, the same blocks (copied, not requantized) as a group
    /// matrix in memory; nil otherwise. Rows keep the chunks that are nonzero in their octet, padded with zero
    /// chunks to the largest count any octet needs.
    static func groupSparse(fromDense t: WeightTensor) -> SparseMatrix? {
        guard [.q4_0, .q4_1, .q8_0].contains(t.type), t.shape.count == 2, t.sparse == nil, t.rows >= 8,
              t.columns % 32 == 0, t.columns / 32 <= 65536 else { return nil }
        let rows = t.rows, chunks = t.columns / 32, bb = t.type.blockBytes, rowBytes = t.rowBytes
        guard rowBytes == chunks * bb else { return nil }
        func isZero(_ b: UnsafeRawPointer) -> Bool {
            let d = b.loadUnaligned(as: UInt16.self) & 0x7fff
            switch t.type {
            case .q4_1:
                guard b.loadUnaligned(fromByteOffset: 2, as: UInt16.self) & 0x7fff == 0 else { return false }
                return d == 0 || (0..<16).allSatisfy { b.load(fromByteOffset: 4 + $0, as: UInt8.self) == 0 }
            case .q4_0: return d == 0 || (0..<16).allSatisfy { b.load(fromByteOffset: 2 + $0, as: UInt8.self) == 0x88 }
            default: return d == 0 || (0..<32).allSatisfy { b.load(fromByteOffset: 2 + $0, as: UInt8.self) == 0 }
            }
        }
        // Chunks each group of rows needs (an octet, or one tail row); chunks zero in every row of it go. A dense
        // matrix gives up at its first octet, so the scan costs nothing when there is nothing to find.
        let mostKept = chunks - Int((Double(chunks) * zeroChunkShareThreshold).rounded(.up))
        guard mostKept >= 1 else { return nil }
        var needed: [[UInt16]] = []
        var r = 0
        while r < rows {
            let n = rows - r >= 8 ? 8 : 1
            var list: [UInt16] = []
            for c in 0..<chunks where (r..<(r + n)).contains(where: { !isZero(t.data + $0 * rowBytes + c * bb) }) {
                list.append(UInt16(c))
                if list.count > mostKept { return nil }
            }
            needed.append(list)
            r += n
        }
        let kept = max(1, needed.map(\.count).max() ?? 1)
        let indexBytes = rows * kept * 2
        let valuesOffset = (headerBytes + indexBytes + sectionAlignment - 1) / sectionAlignment * sectionAlignment
        let total = valuesOffset + rows * kept * bb
        let buffer = OwnedBuffer(size: total)
        let base = buffer.pointer
        base.initializeMemory(as: UInt8.self, repeating: 0, count: total)
        // The layout stores K chunks in every row (padding included), and its header counts them so.
        writeHeader(base, layout: .group, valueType: t.type, rows: rows, columns: t.columns, keptChunks: kept,
                    storedWeights: rows * kept * 32, index: (headerBytes, indexBytes), values: (valuesOffset, rows * kept * bb))
        r = 0
        for list in needed {
            let n = rows - r >= 8 ? 8 : 1
            // Pad with the lowest chunks not in the list (zero in these rows), keeping the numbers increasing.
            var chosen = Set(list)
            var c: UInt16 = 0
            while chosen.count < kept { if !chosen.contains(c) { chosen.insert(c) }; c += 1 }
            let sorted = chosen.sorted()
            for row in r..<(r + n) {
                for (k, chunk) in sorted.enumerated() {
                    base.storeBytes(of: chunk.littleEndian, toByteOffset: headerBytes + (row * kept + k) * 2, as: UInt16.self)
                    (base + valuesOffset + (row * kept + k) * bb).copyMemory(from: t.data + row * rowBytes + Int(chunk) * bb, byteCount: bb)
                }
            }
            r += n
        }
        guard var m = try? SparseMatrix(blob: UnsafeRawPointer(base), byteCount: total, file: "", name: t.name) else { return nil }
        m.blobOwner = buffer
        return m
    }
}

/// Builds a sparse blob row by row (for `tern convert`).
public struct SparseMatrixWriter {
    public let layout: SparseMatrix.Layout
    public let valueType: GGMLType
    public let rows: Int
    public let columns: Int
    public let keptChunks: Int
    private var index: [UInt8]
    private var values: [UInt8]
    private var stored = 0
    private var row = 0
    private var rowBound: Int

    public init(layout: SparseMatrix.Layout, valueType: GGMLType, rows: Int, columns: Int, keptChunks: Int) {
        self.layout = layout
        self.valueType = valueType
        self.rows = rows
        self.columns = columns
        self.keptChunks = keptChunks
        rowBound = Int(tern_sparse_row_bytes_bound(layout.rawValue, Int32(valueType.rawValue), Int64(columns), Int64(keptChunks)))
        index = layout == .group ? [UInt8](repeating: 0, count: rows * keptChunks * 2)
            : layout == .bitmask ? [UInt8](repeating: 0, count: (rows + 1) * 8) : []
        values = []
        values.reserveCapacity(rows * rowBound)
    }

    /// Appends the next row: x holds `columns` values, keep marks the ones stored (see tern_sparse_encode_row).
    /// Returns false, writing nothing, when keep does not fit the layout.
    @discardableResult
    public mutating func append(_ x: UnsafePointer<Float>, keep: UnsafePointer<UInt8>) -> Bool {
        precondition(row < rows)
        let start = values.count
        values.append(contentsOf: repeatElement(0, count: rowBound))
        let written = values.withUnsafeMutableBufferPointer { v in
            index.withUnsafeMutableBytes { ix in
                let idx = layout == .group ? ix.baseAddress!.assumingMemoryBound(to: UInt16.self) + row * keptChunks : nil
                return tern_sparse_encode_row(layout.rawValue, Int32(valueType.rawValue), x, keep, Int64(columns),
                                              Int64(keptChunks), v.baseAddress! + start, idx)
            }
        }
        guard written >= 0 else {
            values.removeLast(rowBound)
            return false
        }
        values.removeLast(rowBound - Int(written))
        if layout == .bitmask {
            index.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(start).littleEndian, toByteOffset: 8 * row, as: UInt64.self) }
        }
        switch layout {
        case .group: stored += keptChunks * 32
        case .nm24: stored += columns / 2
        case .bitmask: for j in 0..<columns where keep[j] != 0 { stored += 1 }
        }
        row += 1
        return true
    }

    /// The finished blob.
    public func blob() -> Data {
        precondition(row == rows, "\(row) of \(rows) rows written")
        var values = values
        var index = index
        if layout == .bitmask {
            index.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(values.count).littleEndian, toByteOffset: 8 * rows, as: UInt64.self) }
            values.append(contentsOf: repeatElement(0, count: Int(TERN_SPARSE_TAIL_PADDING)))
        }
        func aligned(_ n: Int) -> Int { (n + SparseMatrix.sectionAlignment - 1) / SparseMatrix.sectionAlignment * SparseMatrix.sectionAlignment }
        let indexOffset = SparseMatrix.headerBytes
        let valuesOffset = aligned(indexOffset + index.count)
        var blob = Data(count: aligned(valuesOffset + values.count))
        blob.withUnsafeMutableBytes { b in
            SparseMatrix.writeHeader(b.baseAddress!, layout: layout, valueType: valueType, rows: rows, columns: columns,
                                     keptChunks: keptChunks, storedWeights: stored, index: (indexOffset, index.count),
                                     values: (valuesOffset, values.count))
            for (bytes, offset) in [(index, indexOffset), (values, valuesOffset)] where !bytes.isEmpty {
                bytes.withUnsafeBytes { b.baseAddress!.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            }
        }
        return blob
    }
}
