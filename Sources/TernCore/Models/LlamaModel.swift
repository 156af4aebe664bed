// The Llama-family transformer (Llama 1–3, Mistral, SmolLM, Qwen2): a pure function of (weights, a batch of
// tokens at given positions, the sequence's KV memory) → logits. It knows nothing of scheduling or HTTP.
// Scratch buffers live in a LlamaWorkspace that the caller owns, so the forward pass allocates nothing.

import CKernels
import Foundation

public final class LlamaModel: LanguageModel {
    struct Layer: Sendable {
        let attnNorm: [Float]
        let wq, wk, wv, wo: WeightTensor
        let bq, bk, bv: [Float]?
        let ffnNorm: [Float]
        let gate, up, down: WeightTensor
    }

    public let config: LlamaConfig
    public let checkpoint: Checkpoint
    let tokenEmbedding: WeightTensor
    let layers: [Layer]
    let outputNorm: [Float]
    let output: WeightTensor
    /// Inverse frequencies of each rotated pair, already divided by any per-frequency scaling factor.
    let ropeInverseFrequencies: [Float]

    public var qDim: Int { config.headCount * config.headDim }
    public var kvDim: Int { config.kvHeadCount * config.headDim }

    public init(checkpoint: Checkpoint) throws {
        let cfg = try LlamaConfig(checkpoint: checkpoint)
        self.config = cfg
        self.checkpoint = checkpoint
        let path = checkpoint.path
        let dim = cfg.embeddingLength
        let qDim = cfg.headCount * cfg.headDim
        let kvDim = cfg.kvHeadCount * cfg.headDim

        func tensor(_ name: String) throws -> WeightTensor {
            guard let t = checkpoint.tensors[name] else { throw CheckpointError(file: path, "missing tensor '\(name)'") }
            return t
        }
        func matrix(_ name: String, columns: Int, rows: Int) throws -> WeightTensor {
            let t = try tensor(name)
            guard t.shape.count == 2, t.columns == columns, t.rows == rows else {
                throw CheckpointError(file: path, "tensor '\(name)' has shape \(t.shape), expected [\(columns), \(rows)]")
            }
            guard t.type.isComputable else {
                throw CheckpointError(file: path, "tensor '\(name)' has unsupported tensor type \(t.type)")
            }
            guard t.type.isFloat || columns % 32 == 0 else {
                throw CheckpointError(file: path, "tensor '\(name)': quantized rows of \(columns) values are not a multiple of 32")
            }
            return t
        }
        func vector(_ name: String, count: Int) throws -> [Float] {
            let t = try tensor(name)
            guard t.elementCount == count else {
                throw CheckpointError(file: path, "tensor '\(name)' has \(t.elementCount) values, expected \(count)")
            }
            guard t.type.isComputable else { throw CheckpointError(file: path, "tensor '\(name)' has unsupported tensor type \(t.type)") }
            return Self.dequantize(t)
        }
        func optionalVector(_ name: String, count: Int) throws -> [Float]? {
            checkpoint.tensors[name] == nil ? nil : try vector(name, count: count)
        }

        tokenEmbedding = try matrix("token_embd.weight", columns: dim, rows: cfg.vocabularySize)
        var layers: [Layer] = []
        for i in 0..<cfg.layerCount {
            let p = "blk.\(i)."
            layers.append(Layer(
                attnNorm: try vector(p + "attn_norm.weight", count: dim),
                wq: try matrix(p + "attn_q.weight", columns: dim, rows: qDim).packedForCompute(),
                wk: try matrix(p + "attn_k.weight", columns: dim, rows: kvDim).packedForCompute(),
                wv: try matrix(p + "attn_v.weight", columns: dim, rows: kvDim).packedForCompute(),
                wo: try matrix(p + "attn_output.weight", columns: qDim, rows: dim).packedForCompute(),
                bq: try optionalVector(p + "attn_q.bias", count: qDim),
                bk: try optionalVector(p + "attn_k.bias", count: kvDim),
                bv: try optionalVector(p + "attn_v.bias", count: kvDim),
                ffnNorm: try vector(p + "ffn_norm.weight", count: dim),
                gate: try matrix(p + "ffn_gate.weight", columns: dim, rows: cfg.feedForwardLength).packedForCompute(),
                up: try matrix(p + "ffn_up.weight", columns: dim, rows: cfg.feedForwardLength).packedForCompute(),
                down: try matrix(p + "ffn_down.weight", columns: cfg.feedForwardLength, rows: dim).packedForCompute()))
        }
        self.layers = layers
        outputNorm = try vector("output_norm.weight", count: dim)
        if checkpoint.tensors["output.weight"] != nil {
            output = try matrix("output.weight", columns: dim, rows: cfg.vocabularySize).packedForCompute()
        } else {
            output = tokenEmbedding.packedForCompute()   // tied embeddings: lookups read the original rows
        }
        let half = cfg.ropeDimensions / 2
        ropeInverseFrequencies = (0..<half).map { i in
            let f = powf(cfg.ropeBase, -Float(2 * i) / Float(cfg.ropeDimensions))
            let factor = cfg.ropeFrequencyFactors.map { i < $0.count ? $0[i] : 1 } ?? 1
            return f / factor
        }
    }

    static func dequantize(_ t: WeightTensor) -> [Float] {
        var out = [Float](repeating: 0, count: t.elementCount)
        out.withUnsafeMutableBufferPointer { buf in
            tern_dequantize_row(Int32(t.type.rawValue), t.data, buf.baseAddress!, Int64(t.elementCount))
        }
        return out
    }

    /// Bytes of weights one decoded token reads (every matrix once, one embedding row).
    public var weightBytesPerToken: Int {
        var total = tokenEmbedding.rowBytes + output.byteCount
        for l in layers {
            total += l.wq.byteCount + l.wk.byteCount + l.wv.byteCount + l.wo.byteCount
            total += l.gate.byteCount + l.up.byteCount + l.down.byteCount
        }
        return total
    }

    /// Every layer attends over the whole past: one cache group.
    public var cacheGroups: [CacheGroupSpec] { [CacheGroupSpec(kind: .fullAttention, layers: Array(0..<config.layerCount))] }

    public var cacheLayout: KVCacheLayout { KVCacheLayout(specs: cacheGroups, layerCount: config.layerCount) }

    public func makeMemory(capacity: Int) -> SequenceMemory {
        makeKVMemory(capacity: capacity)
    }

    public func makeKVMemory(capacity: Int) -> ContiguousKVMemory {
        ContiguousKVMemory(layers: config.layerCount, rowWidth: kvDim, capacity: capacity)
    }

    public func makeWorkspace(maxTokens: Int, maxContext: Int, pool: WorkerPool) -> ModelWorkspace {
        LlamaWorkspace(model: self, maxTokens: maxTokens, maxContext: maxContext, pool: pool)
    }

    public var architecture: String { config.architecture }
    public var vocabularySize: Int { config.vocabularySize }
    public var trainedContextLength: Int { config.contextLength }

    public func forward(_ batch: [ForwardItem], workspace: ModelWorkspace) throws -> UnsafeMutablePointer<Float> {
        guard let ws = workspace as? LlamaWorkspace else { throw ModelError.wrongWorkspace }
        let cfg = config
        let dim = cfg.embeddingLength
        var memories: [KVMemory] = []
        memories.reserveCapacity(batch.count)
        var m = 0
        ws.logitSourceRows.removeAll(keepingCapacity: true)
        for item in batch {
            guard let mem = item.memory as? KVMemory, mem.rowWidth == kvDim, mem.layerCount == cfg.layerCount else {
                throw ModelError.wrongMemory
            }
            for t in item.tokens where t < 0 || Int(t) >= cfg.vocabularySize {
                throw ModelError.tokenOutOfRange(t, vocabulary: cfg.vocabularySize)
            }
            guard mem.count + item.tokens.count <= mem.capacity else { throw ModelError.memoryFull(capacity: mem.capacity) }
            precondition(item.logitRows.lowerBound >= 0 && item.logitRows.upperBound <= item.tokens.count)
            m += item.tokens.count
            memories.append(mem)
        }
        guard m > 0 else { return ws.logits }
        guard m <= ws.maxTokens else { throw ModelError.batchTooLarge(m, max: ws.maxTokens) }
        for mem in memories { try mem.reserve(0) }

        // Lay the batch out row by row.
        let embType = Int32(tokenEmbedding.type.rawValue)
        var row = 0
        ws.lastRowOfItem.removeAll(keepingCapacity: true)
        for (i, item) in batch.enumerated() {
            let start = memories[i].count
            for (j, t) in item.tokens.enumerated() {
                ws.rowPosition[row] = start + j
                ws.rowItem[row] = i
                tern_dequantize_row(embType, tokenEmbedding.data + Int(t) * tokenEmbedding.rowBytes, ws.x + row * dim, Int64(dim))
                if item.logitRows.contains(j) { ws.logitSourceRows.append(row) }
                row += 1
            }
            try memories[i].reserve(item.tokens.count)
            ws.lastRowOfItem.append(row - 1)
        }
        ws.attentionMetadata.build(memories: memories, ends: batch.indices.map { memories[$0].count + batch[$0].tokens.count },
                                   sinks: batch.map(\.scoreSink))
        ws.attentionPlan.plan(items: batch.count, lastRowOfItem: ws.lastRowOfItem, rowPosition: ws.rowPosition,
                              kvHeads: cfg.kvHeadCount, threads: ws.pool.threadCount, maxParts: ws.maxParts,
                              memories: memories, sinks: ws.attentionMetadata.sinks, relay: ws.relayEnabled)
        let pool = ws.pool
        let x = ws.x, xn = ws.xn, q = ws.q, k = ws.k, v = ws.v, att = ws.attention, tmp = ws.tmp
        let gate = ws.gate, up = ws.up, qa = ws.quantized
        ws.prepareRope(model: self, count: m)

        for (li, layer) in layers.enumerated() {
            layer.attnNorm.withUnsafeBufferPointer { VectorOps.rmsNorm(x, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: m, n: dim, output: xn) }
            qa.quantize(xn, rows: m, columns: dim, pool: pool)
            Linear.applyMany([(layer.wq, q), (layer.wk, k), (layer.wv, v)], input: xn, rows: m, quantized: qa, pool: pool)
            if let b = layer.bq { addBias(q, b, rows: m) }
            if let b = layer.bk { addBias(k, b, rows: m) }
            if let b = layer.bv { addBias(v, b, rows: m) }
            ws.applyRope(q, heads: cfg.headCount, rows: m, model: self)
            ws.applyRope(k, heads: cfg.kvHeadCount, rows: m, model: self)
            for r in 0..<m {
                memories[ws.rowItem[r]].store(layer: li, position: ws.rowPosition[r], key: k + r * kvDim, value: v + r * kvDim)
            }
            Attention.causal(queries: q, rows: m, layer: li, metadata: ws.attentionMetadata, memories: memories,
                             headCount: cfg.headCount, kvHeadCount: cfg.kvHeadCount, headDim: cfg.headDim,
                             output: att, workspace: ws)
            qa.quantize(att, rows: m, columns: qDim, pool: pool)
            Linear.apply(layer.wo, input: att, rows: m, quantized: qa, output: tmp, pool: pool)
            VectorOps.add(x, tmp, count: m * dim)

            layer.ffnNorm.withUnsafeBufferPointer { VectorOps.rmsNorm(x, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: m, n: dim, output: xn) }
            qa.quantize(xn, rows: m, columns: dim, pool: pool)
            Linear.applyMany([(layer.gate, gate), (layer.up, up)], input: xn, rows: m, quantized: qa, pool: pool)
            VectorOps.swiglu(gate: gate, up: up, count: m * cfg.feedForwardLength)
            qa.quantize(gate, rows: m, columns: cfg.feedForwardLength, pool: pool)
            Linear.apply(layer.down, input: gate, rows: m, quantized: qa, output: tmp, pool: pool)
            VectorOps.add(x, tmp, count: m * dim)
        }
        for (i, item) in batch.enumerated() { memories[i].commit(item.tokens.count) }

        let n = ws.logitSourceRows.count
        guard n > 0 else { return ws.logits }
        ws.ensureLogitRows(n)
        // Norm and project only the rows that want logits.
        let src = VectorOps.gatherRows(ws.logitSourceRows, from: x, width: dim, spare: tmp)
        outputNorm.withUnsafeBufferPointer { VectorOps.rmsNorm(src, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: n, n: dim, output: xn) }
        qa.quantize(xn, rows: n, columns: dim, pool: pool)
        Linear.apply(output, input: xn, rows: n, quantized: qa, output: ws.logits, pool: pool)
        return ws.logits
    }

    private func addBias(_ y: UnsafeMutablePointer<Float>, _ b: [Float], rows: Int) {
        b.withUnsafeBufferPointer { bp in
            for r in 0..<rows { VectorOps.add(y + r * bp.count, bp.baseAddress!, count: bp.count) }
        }
    }
}
