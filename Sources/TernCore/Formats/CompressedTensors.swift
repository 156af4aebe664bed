// compressed-tensors checkpoints (what llm-compressor saves): config.json's quantization_config names a sparsity
// format, and each pruned weight W is stored as companion tensors W.shape, W.compressed, W.bitmask (and, for
// sparse-bitmask, W.row_offsets) instead of W.weight; a quantized model stores W.weight as integers or FP8 beside
// W.weight_scale (and W.weight_zero_point, W.weight_g_idx), sparsity applied on top of quantization when both are.
//
// This file reads that config and turns each weight back into the dense F32/F16/BF16 matrix compressed-tensors' own
// decompressors would give, once, at load time, under the weight's own name; Checkpoint then names it like any
// other tensor. Tern has no sparse or FP8 kernels, so the dense copy is what the matrix products read: such a
// checkpoint saves disk, not memory.
//
// Reads: sparsity formats "sparse-bitmask", "sparse-24-bitmask" and "dense"; quantization formats "dense",
// "int-quantized", "float-quantized" and "naive-quantized" (one stored value per weight). Packed formats
// (pack-quantized, marlin-24, nvfp4-pack-quantized) are refused with the format's name. Activation and KV-cache
// quantization parameters are dropped: Tern computes activations in float.
// Every inconsistency between companions, scales and config is a CheckpointError naming the file; nothing here may
// trap.

import CKernels
import Foundation

public enum CompressedTensors {
    /// The sparsity formats this reader decompresses, as config.json spells them.
    public enum SparsityFormat: String, Sendable {
        case bitmask = "sparse-bitmask"
        case bitmask24 = "sparse-24-bitmask"
        case dense = "dense"

        /// Companion suffixes that replace ".weight"; all must be present for a group.
        var companions: [String] {
            switch self {
            case .bitmask: return ["shape", "compressed", "bitmask", "row_offsets"]
            case .bitmask24: return ["shape", "compressed", "bitmask"]
            case .dense: return []
            }
        }
    }

    /// What config.json declares. `nil` from `init` means the checkpoint is not a compressed-tensors one.
    public struct Settings: Sendable {
        public let sparsity: SparsityFormat?
        public let quantizationFormat: String?

        /// For `tern inspect` and error messages.
        public var summary: String {
            var parts: [String] = []
            if let sparsity { parts.append("sparsity \(sparsity.rawValue)") }
            if let quantizationFormat { parts.append("quantization \(quantizationFormat)") }
            return "compressed-tensors (" + (parts.isEmpty ? "no compression" : parts.joined(separator: ", ")) + ")"
        }

        /// `configPath` is only for errors. Returns nil when config.json has no compressed-tensors section.
        public init?(config: [String: Any], configPath: String) throws {
            // llm-compressor nests everything under quantization_config; older writers used compression_config,
            // and some hand-made configs put sparsity_config at the top level.
            let section = (config["quantization_config"] ?? config["compression_config"]) as? [String: Any]
            if let section, let method = section["quant_method"] as? String, method != "compressed-tensors" {
                return nil   // another library's quantization (gptq, awq, ...): not ours to judge here
            }
            let sparsityAny = section?["sparsity_config"] ?? config["sparsity_config"]
            guard section != nil || sparsityAny != nil else { return nil }

            var sparsity: SparsityFormat?
            if let s = sparsityAny, !(s is NSNull) {
                guard let dict = s as? [String: Any] else {
                    throw CheckpointError(file: configPath, "sparsity_config is not a JSON object")
                }
                // update_config writes {} when a model has no sparsity.
                if !dict.isEmpty {
                    guard let name = dict["format"] as? String else {
                        throw CheckpointError(file: configPath, "sparsity_config has no format")
                    }
                    guard let f = SparsityFormat(rawValue: name) else {
                        throw CheckpointError(file: configPath,
                            "sparsity_config format '\(name)' is not one Tern reads (sparse-bitmask, sparse-24-bitmask, dense)")
                    }
                    sparsity = f
                }
            }

            let quantization = try Self.quantizationFormat(section ?? [:], configPath: configPath)
            if let q = quantization, !Self.readableQuantizationFormats.contains(q) {
                throw CheckpointError(file: configPath,
                    "compressed-tensors quantization format '\(q)' is not supported (Tern reads dense, int-quantized, float-quantized and naive-quantized)")
            }
            self.sparsity = sparsity
            self.quantizationFormat = quantization
        }

        /// Formats whose weights are one value per element (floats, or integers/FP8 with scales), which Tern
        /// dequantizes at load; packed formats (pack-quantized, marlin-24, nvfp4) need unpacking it does not do.
        static let readableQuantizationFormats: Set<String> = ["dense", "int-quantized", "float-quantized", "naive-quantized"]

        /// The storage format of the quantized weights, nil when nothing is quantized. A per-group format
        /// (mixed-precision checkpoints) counts too: one group in a format we cannot read spoils the whole model.
        private static func quantizationFormat(_ section: [String: Any], configPath: String) throws -> String? {
            let groups = section["config_groups"] as? [String: Any] ?? [:]
            var formats: [String] = []
            for (_, g) in groups.sorted(by: { $0.key < $1.key }) {
                if let f = (g as? [String: Any])?["format"] as? String { formats.append(f) }
            }
            // A mixed-precision checkpoint's own format names no storage; its groups' formats do.
            if let f = section["format"] as? String, f != "mixed-precision" || formats.isEmpty { formats.append(f) }
            if formats.isEmpty && !groups.isEmpty {
                throw CheckpointError(file: configPath, "quantization_config has config_groups but no format")
            }
            return formats.first { !readableQuantizationFormats.contains($0) } ?? formats.first { $0 != "dense" } ?? formats.first
        }
    }

    /// A stored tensor and the file that holds it (a group's companions may sit in different shards).
    struct Stored {
        let info: SafetensorsTensorInfo
        let file: SafetensorsFile
    }

    /// A dense matrix of any element type: a sparse group after decompression, or a stored quantized weight, on its
    /// way to becoming a float WeightTensor.
    struct Matrix {
        let dtype: String
        let rows: Int
        let columns: Int
        let data: UnsafeRawPointer
        let owner: AnyObject
        /// The file errors about this matrix name: the one holding its values.
        let file: String
    }

    /// Replaces every compressed group and quantized weight in `tensors` (HF name → stored tensor) by its dense float
    /// weight, returned under the HF name "<prefix>.weight"; what it consumed is removed from `tensors`, so what
    /// remains (norms, embeddings, unpruned layers) loads as usual.
    static func decompress(_ tensors: inout [String: Stored], settings: Settings) throws -> [String: WeightTensor] {
        var matrices: [String: Matrix] = [:]
        if let format = settings.sparsity, format != .dense {
            matrices = try decompressSparse(&tensors, format: format)
        }
        if settings.quantizationFormat != nil {
            // Sparsity is applied on top of quantization when saving, so the quantized values come out of the
            // sparse groups above and are dequantized here.
            for scaleName in tensors.keys.sorted() where scaleName.hasSuffix(".weight_scale") {
                let prefix = String(scaleName.dropLast(".weight_scale".count)), weightName = prefix + ".weight"
                let scale = tensors[scaleName]!
                let weight: Matrix
                if let m = matrices[weightName] {
                    weight = m
                } else if let stored = tensors[weightName] {
                    if floatType(stored.info.dtype) != nil { continue }
                    weight = try matrix(stored)
                } else {
                    throw CheckpointError(file: scale.file.path, "'\(scaleName)' has no weight '\(weightName)' to scale")
                }
                // A dense-format model stores its weights already rounded to the quantization grid, as floats.
                if floatType(weight.dtype) != nil { continue }
                if let g = tensors[prefix + ".weight_global_scale"] {
                    throw CheckpointError(file: g.file.path, "'\(g.info.name)': two-level (global) weight scales are not supported")
                }
                matrices[weightName] = try dequantize(weight, name: weightName, scale: scale,
                                                      zeroPoint: tensors[prefix + ".weight_zero_point"],
                                                      groupIndex: tensors[prefix + ".weight_g_idx"])
                tensors[weightName] = nil
            }
            // What is left of the quantization parameters only re-creates activation (or KV) quantization, which
            // Tern's float path does not do.
            for name in tensors.keys {
                if let last = name.split(separator: ".").last, quantizationParameters.contains(String(last)) {
                    tensors[name] = nil
                }
            }
        }
        var out: [String: WeightTensor] = [:]
        for (name, m) in matrices {
            guard let type = floatType(m.dtype) else {
                throw CheckpointError(file: m.file, "tensor '\(name)' holds \(m.dtype) values and no weight_scale to dequantize them with")
            }
            out[name] = WeightTensor(name: name, type: type, shape: [m.columns, m.rows], data: m.data,
                                     byteCount: m.rows * m.columns * elementSizes[m.dtype]!, owner: m.owner)
        }
        return out
    }

    private static func decompressSparse(_ tensors: inout [String: Stored], format: SparsityFormat) throws -> [String: Matrix] {
        // Group by prefix every tensor that ends in any companion name, so a companion of the other format is an
        // error rather than a stray tensor that fails later with a less helpful message.
        let allCompanions = ["shape", "compressed", "bitmask", "row_offsets"]
        var groups: [String: [String: Stored]] = [:]
        for (name, stored) in tensors {
            for c in allCompanions where name.hasSuffix("." + c) {
                groups[String(name.dropLast(c.count + 1)), default: [:]][c] = stored
            }
        }
        var out: [String: Matrix] = [:]
        for (prefix, parts) in groups.sorted(by: { $0.key < $1.key }) {
            let any = parts.values.sorted { $0.info.name < $1.info.name }[0]
            for c in allCompanions where parts[c] != nil && !format.companions.contains(c) {
                throw CheckpointError(file: parts[c]!.file.path,
                    "tensor '\(prefix).\(c)' does not belong to the \(format.rawValue) format")
            }
            for c in format.companions where parts[c] == nil {
                throw CheckpointError(file: any.file.path,
                    "\(format.rawValue) tensor '\(any.info.name)' lacks its companion '\(prefix).\(c)'")
            }
            let weightName = prefix + ".weight"
            if tensors[weightName] != nil {
                throw CheckpointError(file: any.file.path, "'\(weightName)' is stored both dense and \(format.rawValue)-compressed")
            }
            out[weightName] = try decompressGroup(prefix: prefix, parts: parts, format: format)
            for c in format.companions { tensors[prefix + "." + c] = nil }
        }
        return out
    }

    /// The parameters compressed-tensors registers on a quantized module (its initialize_module_for_quantization).
    private static let quantizationParameters: Set<String> = [
        "weight_scale", "weight_zero_point", "weight_g_idx", "weight_global_scale",
        "input_scale", "input_zero_point", "input_global_scale",
        "output_scale", "output_zero_point", "k_scale", "v_scale",
    ]

    /// Element sizes of the dtypes a matrix may hold: floats, and the integer and FP8 values of quantized weights.
    static let elementSizes: [String: Int] = ["F32": 4, "F16": 2, "BF16": 2, "I8": 1, "I16": 2, "I32": 4, "F8_E4M3": 1]

    static func floatType(_ dtype: String) -> GGMLType? {
        switch dtype {
        case "F32": return .f32
        case "F16": return .f16
        case "BF16": return .bf16
        default: return nil
        }
    }

    /// A stored 2-D weight as a Matrix, in place (no copy).
    private static func matrix(_ t: Stored) throws -> Matrix {
        guard t.info.shape.count == 2, elementSizes[t.info.dtype] != nil else {
            throw CheckpointError(file: t.file.path, "quantized weight '\(t.info.name)' is \(t.info.dtype) \(t.info.shape), not a matrix Tern can dequantize")
        }
        return Matrix(dtype: t.info.dtype, rows: t.info.shape[0], columns: t.info.shape[1],
                      data: t.file.file.base + t.info.fileOffset, owner: t.file.file, file: t.file.path)
    }

    private static func decompressGroup(prefix: String, parts: [String: Stored], format: SparsityFormat) throws -> Matrix {
        let shapeT = parts["shape"]!, values = parts["compressed"]!, mask = parts["bitmask"]!
        // sparse-bitmask stores the shape as [2], sparse-24-bitmask as [2, 1]: either way two integers.
        let dims = try integers(shapeT)
        guard dims.count == 2, dims[0] > 0, dims[1] > 0, dims[0] <= Int(Int32.max), dims[1] <= Int(Int32.max) else {
            throw CheckpointError(file: shapeT.file.path, "tensor '\(shapeT.info.name)' holds \(dims), not a matrix shape [rows, columns]")
        }
        let rows = dims[0], columns = dims[1]
        let (elements, overflow) = rows.multipliedReportingOverflow(by: columns)
        guard !overflow, elements <= 1 << 40 else {
            throw CheckpointError(file: shapeT.file.path, "tensor '\(shapeT.info.name)' holds an absurd shape \(dims)")
        }

        // Quantized values (integers, FP8) are copied as they are; decompress() dequantizes them afterwards.
        guard let elementSize = elementSizes[values.info.dtype] else {
            throw CheckpointError(file: values.file.path,
                "tensor '\(values.info.name)' has dtype \(values.info.dtype); Tern decompresses F32, F16, BF16, I8, I16, I32 and F8_E4M3 values")
        }

        let bytesPerRow = (columns + 7) / 8
        guard mask.info.dtype == "U8" || mask.info.dtype == "I8" else {
            throw CheckpointError(file: mask.file.path, "tensor '\(mask.info.name)' has dtype \(mask.info.dtype), expected U8 packed bits")
        }
        guard mask.info.shape == [rows, bytesPerRow] else {
            throw CheckpointError(file: mask.file.path,
                "tensor '\(mask.info.name)' has shape \(mask.info.shape), but a \(rows)×\(columns) matrix needs [\(rows), \(bytesPerRow)]")
        }

        // Count each row's kept values first, so every read below is known to be in range before any copy.
        let bits = mask.file.file.base + mask.info.fileOffset
        var rowCounts = [Int](repeating: 0, count: rows)
        let tailBits = columns % 8
        for r in 0..<rows {
            var n = 0
            let row = bits + r * bytesPerRow
            for b in 0..<bytesPerRow {
                var byte = row.load(fromByteOffset: b, as: UInt8.self)
                // numpy's packbits pads the last byte of a row; those bits are not weights.
                if b == bytesPerRow - 1 && tailBits != 0 { byte &= UInt8((1 << tailBits) - 1) }
                n += byte.nonzeroBitCount
            }
            rowCounts[r] = n
        }
        let kept = rowCounts.reduce(0, +)

        switch format {
        case .bitmask:
            guard values.info.shape == [kept] else {
                throw CheckpointError(file: values.file.path,
                    "tensor '\(values.info.name)' has shape \(values.info.shape), but '\(mask.info.name)' marks \(kept) values")
            }
            // row_offsets is redundant with the bitmask (compressed-tensors itself ignores it when loading); a
            // mismatch means one of the two is damaged, and we cannot tell which.
            let offsetsT = parts["row_offsets"]!
            guard offsetsT.info.shape == [rows] else {
                throw CheckpointError(file: offsetsT.file.path,
                    "tensor '\(offsetsT.info.name)' has shape \(offsetsT.info.shape), expected [\(rows)]")
            }
            let offsets = try integers(offsetsT)
            var start = 0
            for r in 0..<rows {
                guard offsets[r] == start else {
                    throw CheckpointError(file: offsetsT.file.path,
                        "tensor '\(offsetsT.info.name)' says row \(r) starts at value \(offsets[r]), but the bitmask puts it at \(start) (of \(kept))")
                }
                start += rowCounts[r]
            }
        case .bitmask24:
            guard columns % 4 == 0 else {
                throw CheckpointError(file: shapeT.file.path, "2:4 sparse matrix '\(prefix)' has \(columns) columns, not a multiple of 4")
            }
            guard values.info.shape == [rows, columns / 2] else {
                throw CheckpointError(file: values.file.path,
                    "tensor '\(values.info.name)' has shape \(values.info.shape), expected [\(rows), \(columns / 2)] for 2:4 sparsity")
            }
            guard kept == rows * columns / 2 else {
                throw CheckpointError(file: mask.file.path,
                    "tensor '\(mask.info.name)' marks \(kept) values, but 2:4 sparsity keeps \(rows * columns / 2)")
            }
        case .dense:
            break   // never reached: decompress returns before grouping when the format is dense
        }

        let buffer = OwnedBuffer(size: elements * elementSize)
        memset(buffer.pointer, 0, elements * elementSize)
        let src = values.file.file.base + values.info.fileOffset
        var next = 0
        for r in 0..<rows {
            let row = bits + r * bytesPerRow
            let outRow = buffer.pointer + r * columns * elementSize
            for b in 0..<bytesPerRow {
                var byte = row.load(fromByteOffset: b, as: UInt8.self)
                if b == bytesPerRow - 1 && tailBits != 0 { byte &= UInt8((1 << tailBits) - 1) }
                // Little bit order (packbits bitorder="little"): bit i of byte b is column 8b + i.
                while byte != 0 {
                    let i = byte.trailingZeroBitCount
                    byte &= byte - 1
                    (outRow + (b * 8 + i) * elementSize).copyMemory(from: src + next * elementSize, byteCount: elementSize)
                    next += 1
                }
            }
        }
        return Matrix(dtype: values.info.dtype, rows: rows, columns: columns, data: UnsafeRawPointer(buffer.pointer),
                      owner: buffer, file: values.file.path)
    }

    /// Weight = (q − zero point) × scale, in the scale's dtype, as compressed-tensors' dequantize computes it: each
    /// step rounded to that dtype (torch's CPU arithmetic on F16/BF16 is float arithmetic rounded per operation), so
    /// the result is the same bits its own decompressor gives. The strategy is read off the scale's shape as
    /// dequantize infers it: one value (tensor), [rows, 1] (channel), [rows or 1, groups] (group, optionally
    /// reordered by g_idx), anything else [row blocks, column blocks] (block).
    private static func dequantize(_ w: Matrix, name: String, scale: Stored, zeroPoint: Stored?, groupIndex: Stored?) throws -> Matrix {
        guard let outType = floatType(scale.info.dtype) else {
            throw CheckpointError(file: scale.file.path, "tensor '\(scale.info.name)' has dtype \(scale.info.dtype), expected F32, F16 or BF16")
        }
        let rows = w.rows, columns = w.columns
        let scales = try floats(scale)
        let shape = scale.info.shape
        func bad(_ why: String) -> CheckpointError {
            CheckpointError(file: scale.file.path, "tensor '\(scale.info.name)' of shape \(shape) does not fit the \(rows)×\(columns) weight: \(why)")
        }
        // The scale of element (r, c) is scales[(r / rowDivisor) * rowStride + columnIndex[c]].
        var rowDivisor = 1, rowStride = 0
        var columnIndex = [Int](repeating: 0, count: columns)
        if shape.count <= 1 {
            guard scales.count == 1 else { throw bad("a per-tensor scale has one value") }
        } else if shape.count == 2 {
            let a = shape[0], b = shape[1]
            if b == 1 {
                guard a == rows || a == 1 else { throw bad("a per-channel scale has one value per row") }
                rowStride = a == 1 ? 0 : 1
            } else if a == 1 || a == rows {
                guard b > 0, columns % b == 0 else { throw bad("the columns do not split into \(b) equal groups") }
                let groupSize = columns / b
                rowStride = a == 1 ? 0 : b
                if let g = groupIndex {
                    guard g.info.shape == [columns] else {
                        throw CheckpointError(file: g.file.path, "tensor '\(g.info.name)' has shape \(g.info.shape), expected [\(columns)]")
                    }
                    let groups = try integers(g)
                    // compressed-tensors saves no g_idx that still holds its -1 placeholder, so every entry is a group.
                    var counts = [Int](repeating: 0, count: b)
                    for x in groups {
                        guard x >= 0, x < b else {
                            throw CheckpointError(file: g.file.path, "tensor '\(g.info.name)' names group \(x) of \(b)")
                        }
                        counts[x] += 1
                    }
                    // dequantize sorts the columns by group and reshapes them into equal groups: unequal ones
                    // would be read with another group's scale there.
                    guard counts.allSatisfy({ $0 == groupSize }) else {
                        throw CheckpointError(file: g.file.path, "tensor '\(g.info.name)' does not give each of the \(b) groups \(groupSize) columns")
                    }
                    columnIndex = groups
                } else {
                    columnIndex = (0..<columns).map { $0 / groupSize }
                }
            } else {
                guard a > 0, b > 0, rows % a == 0, columns % b == 0 else { throw bad("the matrix does not split into \(a)×\(b) blocks") }
                rowDivisor = rows / a
                rowStride = b
                let blockColumns = columns / b
                columnIndex = (0..<columns).map { $0 / blockColumns }
            }
        } else {
            throw bad("scales have at most 2 dimensions")
        }
        var zeros: [Float]?
        if let z = zeroPoint {
            let values = try floats(z)
            guard values.count == scales.count else {
                throw CheckpointError(file: z.file.path, "tensor '\(z.info.name)' has \(values.count) values but the scale \(scales.count)")
            }
            zeros = values.map { round($0, to: outType) }
        }
        guard ["I8", "I16", "I32", "F8_E4M3"].contains(w.dtype) else {
            throw CheckpointError(file: w.file, "quantized weight '\(name)' has dtype \(w.dtype), which Tern cannot dequantize")
        }
        let outSize = elementSizes[scale.info.dtype]!
        let buffer = OwnedBuffer(size: rows * columns * outSize)
        var q = [Float](repeating: 0, count: columns), out = [Float](repeating: 0, count: columns)
        for r in 0..<rows {
            let at = r * columns
            // Quantized values are exact in Float (FP8, and integers of up to 24 bits; I32 beyond that rounds as
            // torch's conversion to the scale dtype would round them anyway).
            switch w.dtype {
            case "I8": for c in 0..<columns { q[c] = Float(w.data.load(fromByteOffset: at + c, as: Int8.self)) }
            case "I16": for c in 0..<columns { q[c] = Float(w.data.loadUnaligned(fromByteOffset: (at + c) * 2, as: Int16.self)) }
            case "I32": for c in 0..<columns { q[c] = Float(w.data.loadUnaligned(fromByteOffset: (at + c) * 4, as: Int32.self)) }
            default: for c in 0..<columns { q[c] = fp8e4m3(w.data.load(fromByteOffset: at + c, as: UInt8.self)) }
            }
            let base = (r / rowDivisor) * rowStride
            for c in 0..<columns {
                let i = base + columnIndex[c]
                var v = round(q[c], to: outType)
                if let zeros { v = round(v - zeros[i], to: outType) }
                out[c] = round(v * scales[i], to: outType)
            }
            let dst = buffer.pointer + at * outSize
            switch outType {
            case .f32: for c in 0..<columns { dst.storeBytes(of: out[c], toByteOffset: c * 4, as: Float.self) }
            case .f16: for c in 0..<columns { dst.storeBytes(of: Float16(out[c]).bitPattern, toByteOffset: c * 2, as: UInt16.self) }
            default:   // already BF16-exact: the top half of the Float is the BF16
                for c in 0..<columns { dst.storeBytes(of: UInt16(truncatingIfNeeded: out[c].bitPattern >> 16), toByteOffset: c * 2, as: UInt16.self) }
            }
        }
        return Matrix(dtype: scale.info.dtype, rows: rows, columns: columns, data: UnsafeRawPointer(buffer.pointer),
                      owner: buffer, file: w.file)
    }

    /// Rounds to the nearest value of a float dtype, ties to even, as torch does when it stores a result.
    private static func round(_ x: Float, to type: GGMLType) -> Float {
        switch type {
        case .f16: return Float(Float16(x))
        case .bf16:
            if x.isNaN { return x }
            let bits = x.bitPattern
            let rounded = (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000
            return Float(bitPattern: rounded)
        default: return x
        }
    }

    /// OCP FP8 E4M3 ("fn": no infinities, S.1111.111 is NaN), torch.float8_e4m3fn.
    static func fp8e4m3(_ b: UInt8) -> Float {
        let sign: Float = b & 0x80 != 0 ? -1 : 1
        let e = Int((b >> 3) & 0xF), m = Float(b & 7)
        if e == 15 && b & 7 == 7 { return .nan }
        if e == 0 { return sign * m * 0x1p-9 }
        return sign * (1 + m / 8) * Float(sign: .plus, exponent: e - 7, significand: 1)
    }

    /// A small float or integer tensor (scales, zero points) as exact Floats.
    private static func floats(_ t: Stored) throws -> [Float] {
        let count = t.info.shape.reduce(1, *)
        let p = t.file.file.base + t.info.fileOffset
        if let type = floatType(t.info.dtype) {
            var out = [Float](repeating: 0, count: count)
            if count > 0 { out.withUnsafeMutableBufferPointer { tern_dequantize_row(Int32(type.rawValue), p, $0.baseAddress!, Int64(count)) } }
            return out
        }
        switch t.info.dtype {
        case "F8_E4M3": return (0..<count).map { fp8e4m3(p.load(fromByteOffset: $0, as: UInt8.self)) }
        default: return try integers(t).map { Float($0) }
        }
    }

    /// A small integer tensor (shape, row offsets) as Ints, whatever integer dtype the writer chose.
    private static func integers(_ t: Stored) throws -> [Int] {
        let count = t.info.shape.reduce(1, *)
        let p = t.file.file.base + t.info.fileOffset
        func read<T: FixedWidthInteger>(_: T.Type) -> [Int] {
            (0..<count).map { i in
                let v = p.loadUnaligned(fromByteOffset: i * MemoryLayout<T>.size, as: T.self)
                return Int(exactly: v) ?? -1   // a U64 beyond Int.max is as wrong as a negative value
            }
        }
        switch t.info.dtype {
        case "I64": return read(Int64.self)
        case "I32": return read(Int32.self)
        case "I16": return read(Int16.self)
        case "I8": return read(Int8.self)
        case "U64": return read(UInt64.self)
        case "U32": return read(UInt32.self)
        case "U16": return read(UInt16.self)
        case "U8": return read(UInt8.self)
        default:
            throw CheckpointError(file: t.file.path, "tensor '\(t.info.name)' has dtype \(t.info.dtype), expected integers")
        }
    }
}
