// compressed-tensors checkpoints (what llm-compressor saves): config.json's quantization_config names a sparsity
// format, and each pruned weight W is stored as companion tensors W.shape, W.compressed, W.bitmask (and, for
// sparse-bitmask, W.row_offsets) instead of W.weight.
//
// This file reads that config and turns each such group back into the dense F32/F16/BF16 matrix the pruned model
// had, once, at load time, under the weight's own name; Checkpoint then names it like any other tensor. Tern has no
// sparse kernels, so the dense copy is what the matrix products read: a sparse checkpoint saves disk, not memory.
//
// Reads: sparsity formats "sparse-bitmask", "sparse-24-bitmask" and "dense", alone or with a quantization_config
// whose weights are stored as plain floats (format "dense"). Quantized storage formats (int-quantized,
// pack-quantized, float-quantized, ...) are refused with the format's name: their values are not floats.
// Every inconsistency between the companions is a CheckpointError naming the file; nothing here may trap.

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
            if let q = quantization, q != "dense" {
                throw CheckpointError(file: configPath,
                    "compressed-tensors quantization format '\(q)' is not supported (Tern reads weights stored as floats: format 'dense')")
            }
            self.sparsity = sparsity
            self.quantizationFormat = quantization
        }

        /// The storage format of the quantized weights, nil when nothing is quantized. A per-group format
        /// (mixed-precision checkpoints) counts too: one group in a format we cannot read spoils the whole model.
        private static func quantizationFormat(_ section: [String: Any], configPath: String) throws -> String? {
            let groups = section["config_groups"] as? [String: Any] ?? [:]
            var formats: [String] = []
            for (_, g) in groups.sorted(by: { $0.key < $1.key }) {
                if let f = (g as? [String: Any])?["format"] as? String { formats.append(f) }
            }
            if let f = section["format"] as? String { formats.append(f) }
            if formats.isEmpty && !groups.isEmpty {
                throw CheckpointError(file: configPath, "quantization_config has config_groups but no format")
            }
            // Groups first: a mixed-precision checkpoint's own format names no storage, its groups' formats do.
            return formats.first { $0 != "dense" } ?? formats.first
        }
    }

    /// A stored tensor and the file that holds it (a group's companions may sit in different shards).
    struct Stored {
        let info: SafetensorsTensorInfo
        let file: SafetensorsFile
    }

    /// Replaces every compressed group in `tensors` (HF name → stored tensor) by its dense weight, returned under the
    /// HF name "<prefix>.weight"; the companions are removed from `tensors`, so what remains loads as usual.
    static func decompress(_ tensors: inout [String: Stored], settings: Settings) throws -> [String: WeightTensor] {
        if settings.quantizationFormat == "dense" {
            // Scales and zero points of a dense-format quantized model only re-create its activation quantization,
            // which Tern's float path does not do; the weights themselves are already the quantized values.
            for name in tensors.keys {
                if let last = name.split(separator: ".").last, quantizationParameters.contains(String(last)) {
                    tensors[name] = nil
                }
            }
        }
        guard let format = settings.sparsity, format != .dense else { return [:] }

        // Group by prefix every tensor that ends in any companion name, so a companion of the other format is an
        // error rather than a stray tensor that fails later with a less helpful message.
        let allCompanions = ["shape", "compressed", "bitmask", "row_offsets"]
        var groups: [String: [String: Stored]] = [:]
        for (name, stored) in tensors {
            for c in allCompanions where name.hasSuffix("." + c) {
                groups[String(name.dropLast(c.count + 1)), default: [:]][c] = stored
            }
        }
        var out: [String: WeightTensor] = [:]
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

    private static func decompressGroup(prefix: String, parts: [String: Stored], format: SparsityFormat) throws -> WeightTensor {
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

        let type: GGMLType
        switch values.info.dtype {
        case "F32": type = .f32
        case "F16": type = .f16
        case "BF16": type = .bf16
        default:
            throw CheckpointError(file: values.file.path,
                "tensor '\(values.info.name)' has dtype \(values.info.dtype); Tern decompresses only F32, F16 and BF16 values")
        }
        let elementSize = type == .f32 ? 4 : 2

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
        return WeightTensor(name: prefix + ".weight", type: type, shape: [columns, rows],
                            data: UnsafeRawPointer(buffer.pointer), byteCount: elements * elementSize, owner: buffer)
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
