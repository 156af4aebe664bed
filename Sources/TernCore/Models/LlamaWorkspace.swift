// Scratch memory for one forward pass of a Llama-family model, sized once for the largest batch, so the
// forward pass allocates nothing per token. Owned by one thread (the engine's) at a time.

import CKernels
import Foundation

public final class LlamaWorkspace: ModelWorkspace {
    public let maxTokens: Int
    public let pool: WorkerPool
    /// When set, every forward pass adds each matrix's inputs here (calibration for Wanda pruning).
    public var activationStatistics: ActivationStatistics?
    let x, xn, q, k, v, attention, tmp, gate, up: UnsafeMutablePointer<Float>
    let quantized: QuantizedActivations
    /// Logits of the rows asked for, vocabulary floats per row; grows when more rows are asked for.
    public private(set) var logits: UnsafeMutablePointer<Float>
    private var logitRowCapacity: Int
    private let vocabulary: Int
    /// cos/sin per rotation table, batch row and rotated pair, for the positions of the current batch.
    private let ropeCos, ropeSin: UnsafeMutablePointer<Float>
    private let ropeTableStride: Int
    /// One attention-score row per worker thread, as long as the longest context.
    let scores: UnsafeMutablePointer<Float>
    let scoreStride: Int
    /// Log-sum-exp of each query of one task (at most a row tile × the group's query heads), per worker thread.
    let lse: UnsafeMutablePointer<Float>
    let lseStride: Int
    /// The tiled kernel's scratch, per worker thread.
    let attentionWork: UnsafeMutablePointer<Float>
    let attentionWorkStride: Int
    /// Outputs and log-sum-exps of split (flash-decoding) tasks before they are merged.
    let partials: UnsafeMutablePointer<Float>
    let partialLse: UnsafeMutablePointer<Float>
    let maxParts: Int
    var attentionPlan = AttentionPlan()
    /// RelayAttention buffers: gathered queries, shared-prefix outputs, and both passes' log-sum-exps.
    /// Relay groups: members' queries gathered, the shared passes' softmax states per (member, query head) as
    /// [max, sum, output[headDim]], and per-thread room for one shared pass's states.
    let relayQ, relayState, relayStateScratch: UnsafeMutablePointer<Float>
    let relayStateScratchStride: Int
    /// Whether decoding sequences that share prefix blocks go through RelayAttention.
    public var relayEnabled = true
    public var attentionStats: AttentionStats { attentionPlan.stats }
    /// What each row may read this pass (rebuilt by every forward pass, buffers reused).
    var attentionMetadata: AttentionMetadata
    /// For each batch item, its last row.
    var lastRowOfItem: [Int] = []
    private let scratch: FloatScratch
    /// For each batch row: its absolute position, and which batch item it belongs to.
    var rowPosition: [Int]
    var rowItem: [Int]
    /// For each batch row: the position the attention kernels compare (rowPosition minus what its memory evicted).
    var attentionPosition: [Int]
    /// Batch rows whose logits were asked for, in output order.
    var logitSourceRows: [Int] = []
    let ropeHalf: Int

    public init(model: LlamaModel, maxTokens: Int, maxContext: Int, pool: WorkerPool) {
        let c = model.config
        self.maxTokens = max(1, maxTokens)
        self.pool = pool
        vocabulary = c.vocabularySize
        let scratch = FloatScratch()
        func buffer(_ n: Int) -> UnsafeMutablePointer<Float> { scratch.make(n) }
        let t = self.maxTokens
        x = buffer(t * c.embeddingLength)
        xn = buffer(t * c.embeddingLength)
        q = buffer(t * model.qDim)
        k = buffer(t * model.kvDim)
        v = buffer(t * model.kvDim)
        attention = buffer(t * model.qDim)
        tmp = buffer(t * c.embeddingLength)
        gate = buffer(t * c.feedForwardLength)
        up = buffer(t * c.feedForwardLength)
        ropeTableStride = t * c.ropeDimensions / 2
        ropeCos = buffer(ropeTableStride * model.ropeTables.count)
        ropeSin = buffer(ropeTableStride * model.ropeTables.count)
        scoreStride = max(1, maxContext)
        scores = buffer(scoreStride * pool.threadCount)
        let group = c.headCount / max(1, c.kvHeadCount)
        lseStride = AttentionPlan.rowTile * group
        lse = buffer(lseStride * pool.threadCount)
        attentionWorkStride = tern_attn_tiled_work_floats(Int64(c.headDim), Int64(AttentionPlan.rowTile * group))
        attentionWork = buffer(attentionWorkStride * pool.threadCount)
        maxParts = 16 * pool.threadCount
        partials = buffer(maxParts * AttentionPlan.rowTile * group * c.headDim)
        partialLse = buffer(maxParts * AttentionPlan.rowTile * group)
        relayQ = buffer(t * model.qDim)
        relayState = buffer(t * c.headCount * (c.headDim + 2))
        relayStateScratchStride = AttentionPlan.rowTile * group * (c.headDim + 2)
        relayStateScratch = buffer(relayStateScratchStride * pool.threadCount)
        attentionMetadata = AttentionMetadata(layout: model.cacheLayout)
        self.scratch = scratch
        quantized = QuantizedActivations(maxRows: t, maxColumns: max(c.embeddingLength, c.feedForwardLength, model.qDim))
        logitRowCapacity = 1
        logits = .allocate(capacity: c.vocabularySize)
        rowPosition = [Int](repeating: 0, count: t)
        attentionPosition = [Int](repeating: 0, count: t)
        rowItem = [Int](repeating: 0, count: t)
        logitSourceRows.reserveCapacity(t)
        ropeHalf = c.ropeDimensions / 2
    }

    deinit {
        logits.deallocate()
    }

    public func releaseIdlePages() { scratch.releasePages() }

    func ensureLogitRows(_ n: Int) {
        guard n > logitRowCapacity else { return }
        logits.deallocate()
        logits = .allocate(capacity: n * vocabulary)
        logitRowCapacity = n
    }

    /// cos/sin of every rotation table for the positions in `rowPosition[0..<count]`.
    func prepareRope(model: LlamaModel, count: Int) {
        for (ti, table) in model.ropeTables.enumerated() {
            let freqs = table.inverseFrequencies
            let half = freqs.count
            let scale = table.positionScale
            let cosBase = ropeCos + ti * ropeTableStride, sinBase = ropeSin + ti * ropeTableStride
            for r in 0..<count {
                let pos = Float(rowPosition[r]) / scale
                for i in 0..<half {
                    let angle = pos * freqs[i]
                    cosBase[r * half + i] = cosf(angle)
                    sinBase[r * half + i] = sinf(angle)
                }
            }
        }
    }

    /// Rotates the first ropeDimensions of every head of `rows` rows with rotation table `table`, in the
    /// checkpoint's pairing convention.
    func applyRope(_ y: UnsafeMutablePointer<Float>, heads: Int, rows: Int, model: LlamaModel, table: Int) {
        let hd = model.config.headDim
        let half = model.config.ropeDimensions / 2
        let interleaved = model.config.ropeStyle == .interleaved
        let cosBase = ropeCos + table * ropeTableStride, sinBase = ropeSin + table * ropeTableStride
        for r in 0..<rows {
            let cs = cosBase + r * half, sn = sinBase + r * half
            for h in 0..<heads {
                let v = y + (r * heads + h) * hd
                if interleaved {
                    for i in 0..<half {
                        let a = v[2 * i], b = v[2 * i + 1]
                        v[2 * i] = a * cs[i] - b * sn[i]
                        v[2 * i + 1] = a * sn[i] + b * cs[i]
                    }
                } else {
                    for i in 0..<half {
                        let a = v[i], b = v[i + half]
                        v[i] = a * cs[i] - b * sn[i]
                        v[i + half] = a * sn[i] + b * cs[i]
                    }
                }
            }
        }
    }
}
