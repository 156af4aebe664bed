// Per-sequence recurrent memory of a Mamba model (conv and SSM states of every layer: constant size, whatever the
// context length) and the scratch buffers of one forward pass, sized once so the pass allocates nothing per token.

import Foundation

/// One sequence's Mamba memory: per layer, the last d_conv − 1 inputs of every conv channel
/// ([channel][tap], oldest first) and the SSM state ([channel][state]; Mamba-2's channels are head × head_dim).
/// Owned by the engine thread; the forward pass writes it from worker threads, each its own channels.
public final class MambaState: SequenceMemory {
    public let capacity: Int
    public private(set) var count = 0
    let layerCount: Int
    let convStride: Int
    let ssmStride: Int
    let conv: UnsafeMutablePointer<Float>
    let ssm: UnsafeMutablePointer<Float>

    init(config c: MambaConfig, capacity: Int) {
        self.capacity = capacity
        layerCount = c.layerCount
        convStride = c.convStateSize
        ssmStride = c.ssmStateSize
        conv = .allocate(capacity: max(1, layerCount * convStride))
        ssm = .allocate(capacity: max(1, layerCount * ssmStride))
        reset()
    }

    private init(copying other: MambaState) {
        capacity = other.capacity
        layerCount = other.layerCount
        convStride = other.convStride
        ssmStride = other.ssmStride
        conv = .allocate(capacity: max(1, layerCount * convStride))
        ssm = .allocate(capacity: max(1, layerCount * ssmStride))
        conv.initialize(from: other.conv, count: max(1, layerCount * convStride))
        ssm.initialize(from: other.ssm, count: max(1, layerCount * ssmStride))
        count = other.count
    }

    /// An independent copy (n > 1 choices continue from one prompt's state).
    public func duplicate() -> MambaState { MambaState(copying: self) }

    deinit {
        conv.deallocate()
        ssm.deallocate()
    }

    /// Bytes of state, the same for any context length.
    public var byteCount: Int { layerCount * (convStride + ssmStride) * MemoryLayout<Float>.size }

    func reset() {
        conv.initialize(repeating: 0, count: max(1, layerCount * convStride))
        ssm.initialize(repeating: 0, count: max(1, layerCount * ssmStride))
        count = 0
    }

    func advance(_ n: Int) { count += n }

    func matches(_ c: MambaConfig) -> Bool {
        layerCount == c.layerCount && convStride == c.convStateSize && ssmStride == c.ssmStateSize
    }

    /// A recurrent state cannot forget single tokens: it can only start over (0) or keep everything.
    public func rollback(to newCount: Int) -> Bool {
        if newCount <= 0 { reset(); return true }
        return newCount >= count
    }
}

public final class MambaWorkspace: ModelWorkspace {
    /// Recurrent models have no attention: nothing to relay.
    public var relayEnabled = false
    public var attentionStats: AttentionStats { AttentionStats() }

    public let maxTokens: Int
    public let pool: WorkerPool
    let config: MambaConfig
    /// Identity of the model the buffers were sized for.
    let modelID: ObjectIdentifier
    let x, xn, tmp, proj, conv, y: UnsafeMutablePointer<Float>
    /// Mamba-1: x_proj output [dt_raw | B | C], dt_raw gathered contiguously for dt_proj, and dt per channel.
    let dbc, dtIn, dt: UnsafeMutablePointer<Float>
    let quantized: QuantizedActivations
    public private(set) var logits: UnsafeMutablePointer<Float>
    private var logitRowCapacity: Int
    private let vocabulary: Int
    private let scratch: FloatScratch
    /// Per batch item with tokens (at most one per token): first row, token count, and its state's layer-0 bases.
    let itemStart, itemLength: UnsafeMutablePointer<Int>
    let itemConv, itemSSM: UnsafeMutablePointer<UnsafeMutablePointer<Float>>
    var logitSourceRows: [Int] = []

    init(model: MambaModel, maxTokens: Int, pool: WorkerPool) {
        let c = model.config
        config = c
        modelID = ObjectIdentifier(model)
        self.maxTokens = max(1, maxTokens)
        self.pool = pool
        vocabulary = model.vocabularySize
        let scratch = FloatScratch()
        func buffer(_ n: Int) -> UnsafeMutablePointer<Float> { scratch.make(n) }
        let t = self.maxTokens
        x = buffer(t * c.embeddingLength)
        xn = buffer(t * c.embeddingLength)
        tmp = buffer(t * c.embeddingLength)
        proj = buffer(t * c.inProjRows)
        conv = buffer(t * c.convChannels)
        y = buffer(t * c.innerSize)
        let v1 = c.version == .mamba1
        dbc = buffer(v1 ? t * c.xProjRows : 0)
        dtIn = buffer(v1 ? t * c.timeStepRank : 0)
        dt = buffer(v1 ? t * c.innerSize : 0)
        self.scratch = scratch
        quantized = QuantizedActivations(maxRows: t, maxColumns: max(c.embeddingLength, c.innerSize, c.timeStepRank))
        logitRowCapacity = 1
        logits = .allocate(capacity: max(1, vocabulary))
        itemStart = .allocate(capacity: t)
        itemLength = .allocate(capacity: t)
        itemConv = .allocate(capacity: t)
        itemSSM = .allocate(capacity: t)
        logitSourceRows.reserveCapacity(t)
    }

    deinit {
        logits.deallocate()
        itemStart.deallocate()
        itemLength.deallocate()
        itemConv.deallocate()
        itemSSM.deallocate()
    }

    public func releaseIdlePages() { scratch.releasePages() }

    func ensureLogitRows(_ n: Int) {
        guard n > logitRowCapacity else { return }
        logits.deallocate()
        logits = .allocate(capacity: n * vocabulary)
        logitRowCapacity = n
    }
}
