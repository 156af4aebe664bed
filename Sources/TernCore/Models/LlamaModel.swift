// The Llama-family transformer (Llama 1–3, Mistral, SmolLM, Qwen2, Gemma 3): a pure function of (weights, a batch
// of tokens at given positions, the sequence's KV memory) → logits. It knows nothing of scheduling or HTTP.
// Scratch buffers live in a LlamaWorkspace that the caller owns, so the forward pass allocates nothing.
// Gemma 3 runs the same block with its options on (LlamaConfig): scaled embeddings, per-head RMSNorm of queries
// and keys, norms after attention and after the FFN, GeGLU, its own query scale, local sliding-window layers with
// their own RoPE base (a cache group of their own), and optional final logit soft-capping.

import CKernels
import Foundation

public final class LlamaModel: LanguageModel {
    struct Layer: Sendable {
        let attnNorm: [Float]
        let wq, wk, wv, wo: WeightTensor
        let bq, bk, bv: [Float]?
        let ffnNorm: [Float]
        let gate, up, down: WeightTensor
        /// Gemma: per-head norms of queries and keys, and norms of the attention and FFN outputs.
        let qNorm, kNorm: [Float]?
        let postAttentionNorm, postFFNNorm: [Float]?
        /// Index into `ropeTables`.
        let rope: Int
    }

    /// The rotation one kind of layer applies: inverse frequencies (already divided by any per-frequency
    /// factor) and a linear position divisor.
    struct RopeTable: Sendable {
        let inverseFrequencies: [Float]
        let positionScale: Float
    }

    public let config: LlamaConfig
    public let checkpoint: Checkpoint
    let tokenEmbedding: WeightTensor
    let layers: [Layer]
    let outputNorm: [Float]
    let output: WeightTensor
    /// Global layers' rotation first; Gemma's local layers have a second one (another base, no scaling).
    let ropeTables: [RopeTable]
    /// Whether any matrix takes 8-bit activations (quantized or sparse weights); an all-float model skips
    /// quantizing its inputs.
    let quantizesActivations: Bool

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
            guard t.type.isComputable, t.sparse == nil else { throw CheckpointError(file: path, "tensor '\(name)' has unsupported tensor type \(t.type)") }
            return Self.dequantize(t)
        }
        func optionalVector(_ name: String, count: Int) throws -> [Float]? {
            checkpoint.tensors[name] == nil ? nil : try vector(name, count: count)
        }
        func norm(_ name: String, count: Int) throws -> [Float] {
            let offset = cfg.normWeightOffset
            return try vector(name, count: count).map { $0 + offset }
        }
        func gemmaNorm(_ name: String, count: Int, _ present: Bool) throws -> [Float]? {
            present ? try norm(name, count: count) : nil
        }

        let embedding = try matrix("token_embd.weight", columns: dim, rows: cfg.vocabularySize)
        guard embedding.sparse == nil else {
            throw CheckpointError(file: path, "tensor 'token_embd.weight' is sparse; embedding lookups need a dense table")
        }
        var layers: [Layer] = []
        for i in 0..<cfg.layerCount {
            let p = "blk.\(i)."
            layers.append(Layer(
                attnNorm: try norm(p + "attn_norm.weight", count: dim),
                wq: try matrix(p + "attn_q.weight", columns: dim, rows: qDim).packedForCompute(),
                wk: try matrix(p + "attn_k.weight", columns: dim, rows: kvDim).packedForCompute(),
                wv: try matrix(p + "attn_v.weight", columns: dim, rows: kvDim).packedForCompute(),
                wo: try matrix(p + "attn_output.weight", columns: qDim, rows: dim).packedForCompute(),
                bq: try optionalVector(p + "attn_q.bias", count: qDim),
                bk: try optionalVector(p + "attn_k.bias", count: kvDim),
                bv: try optionalVector(p + "attn_v.bias", count: kvDim),
                ffnNorm: try norm(p + "ffn_norm.weight", count: dim),
                gate: try matrix(p + "ffn_gate.weight", columns: dim, rows: cfg.feedForwardLength).packedForCompute(),
                up: try matrix(p + "ffn_up.weight", columns: dim, rows: cfg.feedForwardLength).packedForCompute(),
                down: try matrix(p + "ffn_down.weight", columns: cfg.feedForwardLength, rows: dim).packedForCompute(),
                qNorm: try gemmaNorm(p + "attn_q_norm.weight", count: cfg.headDim, cfg.hasQKNorm),
                kNorm: try gemmaNorm(p + "attn_k_norm.weight", count: cfg.headDim, cfg.hasQKNorm),
                postAttentionNorm: try gemmaNorm(p + "post_attention_norm.weight", count: dim, cfg.hasPostNorms),
                postFFNNorm: try gemmaNorm(p + "post_ffw_norm.weight", count: dim, cfg.hasPostNorms),
                rope: cfg.isLocal(i) ? 1 : 0))
        }
        self.layers = layers
        outputNorm = try norm("output_norm.weight", count: dim)
        if checkpoint.tensors["output.weight"] != nil {
            output = try matrix("output.weight", columns: dim, rows: cfg.vocabularySize).packedForCompute()
            tokenEmbedding = embedding
        } else {
            // Tied embeddings: lookups read rows back from the packed copy where its type allows
            // (WeightTensor.rowsFromPacked), so the mapped file's pages stay given back; otherwise from the map.
            output = embedding.packedForCompute(rowsReadLater: true)
            tokenEmbedding = output
        }
        let half = cfg.ropeDimensions / 2
        var tables = [RopeTable(inverseFrequencies: (0..<half).map { i in
            let f = powf(cfg.ropeBase, -Float(2 * i) / Float(cfg.ropeDimensions))
            let factor = cfg.ropeFrequencyFactors.map { i < $0.count ? $0[i] : 1 } ?? 1
            return f / factor
        }, positionScale: cfg.ropePositionScale)]
        if cfg.localLayers.contains(true), let base = cfg.localRopeBase {
            tables.append(RopeTable(inverseFrequencies: (0..<half).map { i in powf(base, -Float(2 * i) / Float(cfg.ropeDimensions)) },
                                    positionScale: 1))
        }
        ropeTables = tables
        quantizesActivations = ([output] + layers.flatMap { [$0.wq, $0.wk, $0.wv, $0.wo, $0.gate, $0.up, $0.down] })
            .contains { !$0.type.isFloat || $0.sparse != nil }
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

    /// Global layers attend over the whole past; local layers (Gemma) over a sliding window, a group of their own
    /// whose blocks are released as the window moves.
    public var cacheGroups: [CacheGroupSpec] {
        let all = Array(0..<config.layerCount)
        guard let window = config.slidingWindow, config.localLayers.contains(true) else {
            return [CacheGroupSpec(kind: .fullAttention, layers: all)]
        }
        let global = all.filter { !config.isLocal($0) }, local = all.filter { config.isLocal($0) }
        var groups: [CacheGroupSpec] = []
        if !global.isEmpty { groups.append(CacheGroupSpec(kind: .fullAttention, layers: global)) }
        groups.append(CacheGroupSpec(kind: .slidingWindow(window), layers: local))
        return groups
    }

    public var cacheLayout: KVCacheLayout { KVCacheLayout(specs: cacheGroups, layerCount: config.layerCount) }

    public func makeMemory(capacity: Int) -> SequenceMemory {
        makeKVMemory(capacity: capacity)
    }

    public func makeKVMemory(capacity: Int) -> ContiguousKVMemory {
        ContiguousKVMemory(layers: config.layerCount, rowWidth: kvDim, capacity: capacity, layout: cacheLayout,
                           kvHeads: config.kvHeadCount)
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
        var row = 0
        ws.lastRowOfItem.removeAll(keepingCapacity: true)
        for (i, item) in batch.enumerated() {
            let start = memories[i].count
            for (j, t) in item.tokens.enumerated() {
                ws.rowPosition[row] = start + j
                ws.attentionPosition[row] = start + j - memories[i].droppedPositions
                ws.rowItem[row] = i
                tokenEmbedding.dequantizeRow(Int(t), into: ws.x + row * dim)
                if cfg.embeddingScale != 1 { VectorOps.scale(ws.x + row * dim, cfg.embeddingScale, count: dim) }
                if item.logitRows.contains(j) { ws.logitSourceRows.append(row) }
                row += 1
            }
            try memories[i].reserve(item.tokens.count)
            ws.lastRowOfItem.append(row - 1)
        }
        ws.attentionMetadata.build(memories: memories, ends: batch.indices.map { memories[$0].count + batch[$0].tokens.count },
                                   sinks: batch.map(\.scoreSink))
        ws.attentionPlan.plan(items: batch.count, lastRowOfItem: ws.lastRowOfItem, rowPosition: ws.attentionPosition,
                              kvHeads: cfg.kvHeadCount, threads: ws.pool.threadCount, maxParts: ws.maxParts,
                              memories: memories, sinks: ws.attentionMetadata.sinks, relay: ws.relayEnabled)
        let pool = ws.pool
        let x = ws.x, xn = ws.xn, q = ws.q, k = ws.k, v = ws.v, att = ws.attention, tmp = ws.tmp
        let gate = ws.gate, up = ws.up, qa = ws.quantized
        ws.prepareRope(model: self, count: m)

        for (li, layer) in layers.enumerated() {
            layer.attnNorm.withUnsafeBufferPointer { VectorOps.rmsNorm(x, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: m, n: dim, output: xn) }
            if quantizesActivations { qa.quantize(xn, rows: m, columns: dim, pool: pool) }
            ws.activationStatistics?.add(xn, rows: m, columns: dim, layer: li, input: .attention)
            Linear.applyMany([(layer.wq, q), (layer.wk, k), (layer.wv, v)], input: xn, rows: m, quantized: qa, pool: pool)
            if let b = layer.bq { addBias(q, b, rows: m) }
            if let b = layer.bk { addBias(k, b, rows: m) }
            if let b = layer.bv { addBias(v, b, rows: m) }
            if let qn = layer.qNorm, let kn = layer.kNorm {
                qn.withUnsafeBufferPointer { VectorOps.rmsNorm(q, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: m * cfg.headCount, n: cfg.headDim, output: q) }
                kn.withUnsafeBufferPointer { VectorOps.rmsNorm(k, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: m * cfg.kvHeadCount, n: cfg.headDim, output: k) }
            }
            ws.applyRope(q, heads: cfg.headCount, rows: m, model: self, table: layer.rope)
            ws.applyRope(k, heads: cfg.kvHeadCount, rows: m, model: self, table: layer.rope)
            for r in 0..<m {
                memories[ws.rowItem[r]].store(layer: li, position: ws.rowPosition[r], key: k + r * kvDim, value: v + r * kvDim)
            }
            Attention.causal(queries: q, rows: m, layer: li, metadata: ws.attentionMetadata, memories: memories,
                             headCount: cfg.headCount, kvHeadCount: cfg.kvHeadCount, headDim: cfg.headDim,
                             scale: cfg.queryScale, output: att, workspace: ws)
            if quantizesActivations { qa.quantize(att, rows: m, columns: qDim, pool: pool) }
            ws.activationStatistics?.add(att, rows: m, columns: qDim, layer: li, input: .attentionOutput)
            Linear.apply(layer.wo, input: att, rows: m, quantized: qa, output: tmp, pool: pool)
            if let pn = layer.postAttentionNorm {
                pn.withUnsafeBufferPointer { VectorOps.rmsNorm(tmp, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: m, n: dim, output: tmp) }
            }
            VectorOps.add(x, tmp, count: m * dim)

            layer.ffnNorm.withUnsafeBufferPointer { VectorOps.rmsNorm(x, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: m, n: dim, output: xn) }
            if quantizesActivations { qa.quantize(xn, rows: m, columns: dim, pool: pool) }
            ws.activationStatistics?.add(xn, rows: m, columns: dim, layer: li, input: .feedForward)
            Linear.applyMany([(layer.gate, gate), (layer.up, up)], input: xn, rows: m, quantized: qa, pool: pool)
            // Split across the pool: run on one thread, a prompt pass's SwiGLU left the other idle (2% of pp4096);
            // a decoding row's few thousand values are not worth waking the other threads for.
            pool.parallelFor(m * cfg.feedForwardLength, granule: 4096) { r in
                switch cfg.activation {
                case .silu: VectorOps.swiglu(gate: gate + r.lowerBound, up: up + r.lowerBound, count: r.count)
                case .geluTanh: tern_geglu_tanh(gate + r.lowerBound, up + r.lowerBound, Int64(r.count))
                }
            }
            if quantizesActivations { qa.quantize(gate, rows: m, columns: cfg.feedForwardLength, pool: pool) }
            ws.activationStatistics?.add(gate, rows: m, columns: cfg.feedForwardLength, layer: li, input: .feedForwardDown)
            Linear.apply(layer.down, input: gate, rows: m, quantized: qa, output: tmp, pool: pool)
            if let pn = layer.postFFNNorm {
                pn.withUnsafeBufferPointer { VectorOps.rmsNorm(tmp, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: m, n: dim, output: tmp) }
            }
            VectorOps.add(x, tmp, count: m * dim)
        }
        for (i, item) in batch.enumerated() { memories[i].commit(item.tokens.count) }

        let n = ws.logitSourceRows.count
        guard n > 0 else { return ws.logits }
        ws.ensureLogitRows(n)
        // Norm and project only the rows that want logits.
        let src = VectorOps.gatherRows(ws.logitSourceRows, from: x, width: dim, spare: tmp)
        outputNorm.withUnsafeBufferPointer { VectorOps.rmsNorm(src, weight: $0.baseAddress!, eps: cfg.rmsEpsilon, rows: n, n: dim, output: xn) }
        if quantizesActivations { qa.quantize(xn, rows: n, columns: dim, pool: pool) }
        Linear.apply(output, input: xn, rows: n, quantized: qa, output: ws.logits, pool: pool)
        if let cap = cfg.finalLogitSoftcap {
            let l = ws.logits
            for i in 0..<(n * cfg.vocabularySize) { l[i] = cap * tanhf(l[i] / cap) }
        }
        return ws.logits
    }

    private func addBias(_ y: UnsafeMutablePointer<Float>, _ b: [Float], rows: Int) {
        b.withUnsafeBufferPointer { bp in
            for r in 0..<rows { VectorOps.add(y + r * bp.count, bp.baseAddress!, count: bp.count) }
        }
    }
}
