// Which weights a sparse matrix keeps. Scores are |W| (magnitude) or |W| · ‖X_j‖₂ (Wanda, with input column
// norms from a calibration text); the comparison group is one output row, as in Wanda, except for group
// sparsity, where an octet of rows shares its kept 32-column chunks (so the kernel can multiply 8 rows by one
// broadcast activation block, see tern_sparse_pack) and a chunk's score is the sum over its weights.

import Foundation

public struct SparsityOptions: Sendable {
    public enum Pattern: String, Sendable, CaseIterable {
        case unstructured, nm24 = "2:4", group

        var layout: SparseMatrix.Layout {
            switch self {
            case .unstructured: return .bitmask
            case .nm24: return .nm24
            case .group: return .group
            }
        }
    }

    public enum Method: String, Sendable, CaseIterable { case magnitude, wanda }

    /// Fraction of each matrix's weights dropped (2:4: 0.5).
    public var sparsity: Double
    public var pattern: Pattern
    public var method: Method
    /// Group sparsity: rows that share their kept chunks (1 = each row chooses alone; 8 = the fast layout).
    public var groupRows: Int

    public init(sparsity: Double, pattern: Pattern, method: Method = .magnitude, groupRows: Int = 8) {
        self.sparsity = sparsity
        self.pattern = pattern
        self.method = method
        self.groupRows = groupRows
    }

    /// The value types each pattern stores.
    public var valueTypes: [GGMLType] { pattern == .group ? [.q4_0, .q4_1, .q8_0] : [.q4_0] }

    /// Problems with the options themselves (nil when they are usable).
    public func problem(valueType: GGMLType) -> String? {
        guard sparsity > 0, sparsity < 1 else { return "sparsity \(sparsity) must lie strictly between 0 and 1" }
        if pattern == .nm24 && abs(sparsity - 0.5) > 1e-9 { return "2:4 sparsity drops exactly half (--sparsity 0.5), not \(sparsity)" }
        guard valueTypes.contains(valueType) else {
            return "\(pattern.rawValue) sparsity stores values as \(valueTypes.map(\.description).joined(separator: ", ")), not \(valueType)"
        }
        guard groupRows >= 1, groupRows <= 1024 else { return "group rows \(groupRows) must be between 1 and 1024" }
        return nil
    }

    /// Matrices that are pruned: the attention and feed-forward projections of each layer (embeddings and
    /// the output projection stay dense, as in SparseGPT and Wanda).
    public static func prunes(tensor name: String) -> Bool {
        let parts = name.split(separator: ".")
        guard parts.count == 4, parts[0] == "blk", Int(parts[1]) != nil, parts[3] == "weight" else { return false }
        return ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"].contains(String(parts[2]))
    }

    /// Chunks kept per row by group sparsity in rows of `columns`.
    public func keptChunks(columns: Int) -> Int {
        let chunks = columns / 32
        return max(1, min(chunks, Int((Double(chunks) * (1 - sparsity)).rounded())))
    }
}

enum Pruner {
    /// Keep flags (1 = stored) for `rows` consecutive rows of `columns` values (one octet for group sparsity).
    static func keep(_ w: UnsafePointer<Float>, rows: Int, columns: Int, options o: SparsityOptions,
                     norms: [Float]?) -> [UInt8] {
        precondition(norms == nil || norms!.count == columns)
        var keep = [UInt8](repeating: 0, count: rows * columns)
        func score(_ r: Int, _ j: Int) -> Float { abs(w[r * columns + j]) * (norms?[j] ?? 1) }
        switch o.pattern {
        case .group:
            let chunks = columns / 32
            let kept = o.keptChunks(columns: columns)
            var chunkScore = [Double](repeating: 0, count: chunks)
            for r in 0..<rows { for j in 0..<columns { chunkScore[j / 32] += Double(score(r, j)) } }
            // Highest scores first; ties go to the lower chunk so the choice is deterministic.
            let order = (0..<chunks).sorted { chunkScore[$0] != chunkScore[$1] ? chunkScore[$0] > chunkScore[$1] : $0 < $1 }
            for c in order.prefix(kept) { for r in 0..<rows { for p in 0..<32 { keep[r * columns + 32 * c + p] = 1 } } }
        case .nm24:
            for r in 0..<rows {
                for g in 0..<(columns / 4) {
                    let base = 4 * g
                    let order = (0..<4).sorted { score(r, base + $0) != score(r, base + $1) ? score(r, base + $0) > score(r, base + $1) : $0 < $1 }
                    keep[r * columns + base + order[0]] = 1
                    keep[r * columns + base + order[1]] = 1
                }
            }
        case .unstructured:
            let kept = Int((Double(columns) * (1 - o.sparsity)).rounded())
            for r in 0..<rows {
                let order = (0..<columns).sorted { score(r, $0) != score(r, $1) ? score(r, $0) > score(r, $1) : $0 < $1 }
                for j in order.prefix(kept) { keep[r * columns + j] = 1 }
            }
        }
        return keep
    }
}
