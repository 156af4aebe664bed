// The Mamba-1 / Mamba-2 selective state-space language model: a pure function of (weights, a batch of tokens,
// each sequence's recurrent state) → logits. Projections run batched over every token of the batch through
// Linear.apply; the causal conv and the selective scan then walk each sequence's tokens in order, split over
// worker threads by channel (Mamba-1) or head (Mamba-2), which never share state. Decoding costs the same at
// any context length: the state has a fixed size.

import CKernels
import Foundation

public final class MambaModel: LanguageModel {
    public let config: MambaConfig
    public let checkpoint: Checkpoint
    let tokenEmbedding: WeightTensor
    let layers: [Layer]
    let outputNorm: ParameterVector
    let output: WeightTensor

    public init(checkpoint: Checkpoint) throws {
        let cfg: MambaConfig
        if let g = checkpoint.gguf {
            cfg = try MambaConfig(gguf: g)
        } else {
            cfg = try MambaConfig(hf: checkpoint.hfConfig() ?? [:], architecture: checkpoint.architecture, path: checkpoint.path)
        }
        config = cfg
        self.checkpoint = checkpoint
        let r = TensorResolver(checkpoint: checkpoint)
        let dim = cfg.embeddingLength
        let embNames = ["token_embd.weight", "backbone.embeddings.weight", "backbone.embedding.weight"]
        let emb = try r.require(embNames)
        guard emb.shape.count == 2, emb.rows > 0 else {
            throw CheckpointError(file: checkpoint.path, "tensor '\(emb.name)' has shape \(emb.shape), expected [\(dim), vocabulary]")
        }
        tokenEmbedding = try r.matrix(embNames, columns: dim, rows: emb.rows, rowsReadLater: true)
        layers = try Self.loadLayers(r, config: cfg)
        outputNorm = try r.vector(["output_norm.weight", "backbone.norm_f.weight"], shape: [dim])
        if r.find(["output.weight", "lm_head.weight"]) != nil {
            output = try r.matrix(["output.weight", "lm_head.weight"], columns: dim, rows: emb.rows)
        } else {
            output = tokenEmbedding   // tied embeddings
        }
    }

    public var architecture: String { config.architecture }
    /// A fixed-size conv and SSM state per sequence; no KV blocks.
    public var cacheGroups: [CacheGroupSpec] { [CacheGroupSpec(kind: .recurrentState, layers: Array(0..<config.layerCount))] }
    public var vocabularySize: Int { tokenEmbedding.rows }
    /// A recurrent model has no positional limit.
    public var trainedContextLength: Int { 1 << 20 }

    /// Bytes one decoded token reads: every matrix once, one embedding row, and the small per-layer vectors.
    public var weightBytesPerToken: Int {
        var total = tokenEmbedding.rowBytes + output.byteCount + outputNorm.count * 4
        for l in layers {
            total += l.inProj.byteCount + l.outProj.byteCount + (l.xProj?.byteCount ?? 0) + (l.dtProj?.byteCount ?? 0)
            let vectors = [l.norm, l.convWeight, l.convBias, l.dtBias, l.a, l.d] + [l.ssmNorm, l.inBias, l.outBias].compactMap { $0 }
            total += vectors.reduce(0) { $0 + $1.count * 4 }
        }
        return total
    }

    public func makeMemory(capacity: Int) -> SequenceMemory {
        MambaState(config: config, capacity: capacity)
    }

    public func makeWorkspace(maxTokens: Int, maxContext: Int, pool: WorkerPool) -> ModelWorkspace {
        MambaWorkspace(model: self, maxTokens: maxTokens, pool: pool)
    }

    public func forward(_ batch: [ForwardItem], workspace: ModelWorkspace) throws -> UnsafeMutablePointer<Float> {
        guard let ws = workspace as? MambaWorkspace, ws.modelID == ObjectIdentifier(self) else { throw ModelError.wrongWorkspace }
        let cfg = config
        let dim = cfg.embeddingLength
        let vocab = vocabularySize
        var m = 0
        for item in batch {
            guard let st = item.memory as? MambaState, st.matches(cfg) else { throw ModelError.wrongMemory }
            for t in item.tokens where t < 0 || Int(t) >= vocab {
                throw ModelError.tokenOutOfRange(t, vocabulary: vocab)
            }
            guard st.count + item.tokens.count <= st.capacity else { throw ModelError.memoryFull(capacity: st.capacity) }
            precondition(item.logitRows.lowerBound >= 0 && item.logitRows.upperBound <= item.tokens.count)
            m += item.tokens.count
        }
        ws.logitSourceRows.removeAll(keepingCapacity: true)
        guard m > 0 else { return ws.logits }
        guard m <= ws.maxTokens else { throw ModelError.batchTooLarge(m, max: ws.maxTokens) }

        // Lay the batch out row by row; remember each sequence's rows and state.
        var row = 0, items = 0
        for item in batch where !item.tokens.isEmpty {
            let st = item.memory as! MambaState
            ws.itemStart[items] = row
            ws.itemLength[items] = item.tokens.count
            ws.itemConv[items] = st.conv
            ws.itemSSM[items] = st.ssm
            items += 1
            for (j, t) in item.tokens.enumerated() {
                tokenEmbedding.dequantizeRow(Int(t), into: ws.x + row * dim)   // from the packed copy when it can
                if item.logitRows.contains(j) { ws.logitSourceRows.append(row) }
                row += 1
            }
        }

        let pool = ws.pool, qa = ws.quantized
        let x = ws.x, xn = ws.xn, tmp = ws.tmp
        for (li, layer) in layers.enumerated() {
            VectorOps.rmsNorm(x, weight: layer.norm.base, eps: cfg.rmsEpsilon, rows: m, n: dim, output: xn)
            qa.quantize(xn, rows: m, columns: dim, pool: pool)
            Linear.apply(layer.inProj, input: xn, rows: m, quantized: qa, output: ws.proj, pool: pool)
            if let b = layer.inBias { addBias(ws.proj, b, rows: m) }
            convolve(layer: layer, index: li, items: items, workspace: ws)
            switch cfg.version {
            case .mamba1: scanMamba1(layer: layer, index: li, rows: m, items: items, workspace: ws)
            case .mamba2: scanMamba2(layer: layer, index: li, rows: m, items: items, workspace: ws)
            }
            qa.quantize(ws.y, rows: m, columns: cfg.innerSize, pool: pool)
            Linear.apply(layer.outProj, input: ws.y, rows: m, quantized: qa, output: tmp, pool: pool)
            if let b = layer.outBias { addBias(tmp, b, rows: m) }
            VectorOps.add(x, tmp, count: m * dim)
        }
        for item in batch { (item.memory as! MambaState).advance(item.tokens.count) }

        let n = ws.logitSourceRows.count
        guard n > 0 else { return ws.logits }
        ws.ensureLogitRows(n)
        // Norm and project only the rows that want logits.
        let src = VectorOps.gatherRows(ws.logitSourceRows, from: x, width: dim, spare: tmp)
        VectorOps.rmsNorm(src, weight: outputNorm.base, eps: cfg.rmsEpsilon, rows: n, n: dim, output: xn)
        qa.quantize(xn, rows: n, columns: dim, pool: pool)
        Linear.apply(output, input: xn, rows: n, quantized: qa, output: ws.logits, pool: pool)
        return ws.logits
    }

    /// Causal depthwise conv + SiLU over the conv channels of in_proj's output, continuing each sequence's
    /// conv state; writes ws.conv [rows][channels].
    private func convolve(layer: Layer, index li: Int, items: Int, workspace ws: MambaWorkspace) {
        let cfg = config
        let channels = cfg.convChannels, k = cfg.convKernel, kept = k - 1
        let inStride = cfg.inProjRows
        // Mamba-1's in_proj emits [x, z]; Mamba-2's [z, xBC, dt].
        let inOffset = cfg.version == .mamba1 ? 0 : cfg.innerSize
        let w = layer.convWeight.base, bias = layer.convBias.base
        let proj = ws.proj, out = ws.conv
        let starts = ws.itemStart, lengths = ws.itemLength, states = ws.itemConv
        let layerOffset = li * cfg.convStateSize
        // A decode step's conv is a few microseconds: cheaper on this thread than waking the others.
        var rows = 0
        for i in 0..<items { rows += lengths[i] }
        let work = channels * rows
        ws.pool.parallelFor(channels, granule: work < 32768 ? channels : 16) { range in
            for it in 0..<items {
                let start = starts[it], count = lengths[it]
                let state = states[it] + layerOffset
                for c in range {
                    let s = state + c * kept
                    let wc = w + c * k
                    for t in 0..<count {
                        let r = start + t
                        let input = proj[r * inStride + inOffset + c]
                        var v = bias[c] + wc[kept] * input
                        for j in 0..<kept { v += wc[j] * s[j] }
                        if kept > 0 {
                            for j in 0..<(kept - 1) { s[j] = s[j + 1] }
                            s[kept - 1] = input
                        }
                        out[r * channels + c] = v / (1 + expf(-v))
                    }
                }
            }
        }
    }

    /// Mamba-1: [dt_raw, B, C] = x_proj(u); dt = softplus(dt_proj(dt_raw) + b); per channel
    /// s = exp(dt·A) ⊙ s + dt·u·B, y = s·C + D·u, gated by silu(z). Writes ws.y [rows][d_inner].
    private func scanMamba1(layer: Layer, index li: Int, rows m: Int, items: Int, workspace ws: MambaWorkspace) {
        let cfg = config
        let inner = cfg.innerSize, ds = cfg.stateSize, rank = cfg.timeStepRank
        let dbcStride = cfg.xProjRows, inStride = cfg.inProjRows
        let pool = ws.pool, qa = ws.quantized
        let u = ws.conv, dbc = ws.dbc, dt = ws.dt, proj = ws.proj, y = ws.y
        qa.quantize(u, rows: m, columns: inner, pool: pool)
        Linear.apply(layer.xProj!, input: u, rows: m, quantized: qa, output: dbc, pool: pool)
        for r in 0..<m { (ws.dtIn + r * rank).update(from: dbc + r * dbcStride, count: rank) }
        qa.quantize(ws.dtIn, rows: m, columns: rank, pool: pool)
        Linear.apply(layer.dtProj!, input: ws.dtIn, rows: m, quantized: qa, output: dt, pool: pool)

        let a = layer.a.base, d = layer.d.base, dtBias = layer.dtBias.base
        let starts = ws.itemStart, lengths = ws.itemLength, states = ws.itemSSM
        let layerOffset = li * cfg.ssmStateSize
        pool.parallelFor(inner, granule: 16) { range in
            // dt for this thread's channels of every row at once, 8 channels at a time.
            for r in 0..<m {
                let row = dt + r * inner
                var c = range.lowerBound
                while c + 8 <= range.upperBound {
                    Self.store8(Self.softplus8(Self.load8(row + c) + Self.load8(dtBias + c)), row + c)
                    c += 8
                }
                while c < range.upperBound {
                    row[c] = Self.softplus(row[c] + dtBias[c])
                    c += 1
                }
            }
            for it in 0..<items {
                let start = starts[it], count = lengths[it]
                let state = states[it] + layerOffset
                for t in 0..<count {
                    let r = start + t
                    let b = dbc + r * dbcStride + rank
                    tern_ssm1_step(Int64(range.lowerBound), Int64(range.upperBound), Int64(ds),
                                   dt + r * inner, u + r * inner, proj + r * inStride + inner,
                                   a, b, b + ds, d, state, y + r * inner)
                }
            }
        }
    }

    /// Mamba-2: per head h (B/C group g = h / (heads / groups)): dt = softplus(dt_raw + b), the scalar decay
    /// exp(dt·A_h) for the whole head, s = decay·s + dt·u·Bᵀ, y = s·C + D_h·u; then y ⊙ silu(z) through an
    /// RMSNorm per group. Writes ws.y [rows][d_inner].
    private func scanMamba2(layer: Layer, index li: Int, rows m: Int, items: Int, workspace ws: MambaWorkspace) {
        let cfg = config
        let inner = cfg.innerSize, ds = cfg.stateSize, heads = cfg.headCount, hd = cfg.headDim
        let groups = cfg.groupCount, perGroup = heads / groups
        let channels = cfg.convChannels, inStride = cfg.inProjRows
        let dtOffset = inner + channels
        let u = ws.conv, proj = ws.proj, y = ws.y
        let a = layer.a.base, d = layer.d.base, dtBias = layer.dtBias.base
        let starts = ws.itemStart, lengths = ws.itemLength, states = ws.itemSSM
        let layerOffset = li * cfg.ssmStateSize
        ws.pool.parallelFor(heads) { range in
            for it in 0..<items {
                let start = starts[it], count = lengths[it]
                let state = states[it] + layerOffset
                for t in 0..<count {
                    let r = start + t
                    let ur = u + r * channels
                    for h in range {
                        let g = h / perGroup
                        let b = ur + inner + g * ds
                        let cv = ur + inner + groups * ds + g * ds
                        let delta = Self.softplus(proj[r * inStride + dtOffset + h] + dtBias[h])
                        let decay = expf(delta * a[h])
                        for p in 0..<hd {
                            let ch = h * hd + p
                            let xv = ur[ch]
                            let dx = delta * xv
                            let s = state + ch * ds
                            var accV = SIMD8<Float>()
                            let decayV = SIMD8<Float>(repeating: decay), dxV = SIMD8<Float>(repeating: dx)
                            var n = 0
                            while n + 8 <= ds {
                                let v = decayV * Self.load8(s + n) + dxV * Self.load8(b + n)
                                Self.store8(v, s + n)
                                accV += v * Self.load8(cv + n)
                                n += 8
                            }
                            var acc = accV.sum()
                            while n < ds {
                                let v = decay * s[n] + dx * b[n]
                                s[n] = v
                                acc += v * cv[n]
                                n += 1
                            }
                            y[r * inner + ch] = acc + d[h] * xv
                        }
                    }
                }
            }
        }
        let norm = layer.ssmNorm!.base
        let groupWidth = inner / groups
        let eps = cfg.rmsEpsilon
        for r in 0..<m {
            let yr = y + r * inner
            let z = proj + r * inStride
            for i in 0..<inner { yr[i] *= z[i] / (1 + expf(-z[i])) }
            for g in 0..<groups {
                let yg = yr + g * groupWidth
                var sum: Float = 0
                for i in 0..<groupWidth { sum += yg[i] * yg[i] }
                let scale = 1 / (sum / Float(groupWidth) + eps).squareRoot()
                for i in 0..<groupWidth { yg[i] *= scale * norm[g * groupWidth + i] }
            }
        }
    }

    @inline(__always)
    static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always)
    static func load8(_ p: UnsafeMutablePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always)
    static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    /// eˣ for 8 lanes, within about 1e-7 relative of expf on [−87, 88] (inputs are clamped there): x = n·ln2 + r
    /// with ln2 split in two so r is exact, e^r by its degree-7 Taylor polynomial (|r| ≤ ln2/2), and 2ⁿ built in
    /// the exponent bits. Only adds, multiplies and shifts, so it vectorises on any x86-64.
    @inline(__always)
    static func exp8(_ x: SIMD8<Float>) -> SIMD8<Float> {
        // Masked replace compiles to compare + blend; pointwiseMin/Max stay out-of-line calls across modules.
        var xc = x
        xc.replace(with: SIMD8(repeating: -87), where: x .< -87)
        xc.replace(with: SIMD8(repeating: 88), where: x .> 88)
        // Adding 1.5·2²³ rounds to an integer held in the low mantissa bits.
        let shifter = SIMD8<Float>(repeating: 12582912)
        let t = xc * 1.44269504088896341 + shifter
        let n = t - shifter
        let r = xc - n * 0.693359375 - n * -2.12194440e-4
        var p = SIMD8<Float>(repeating: 1.0 / 5040)
        p = p * r + 1.0 / 720
        p = p * r + 1.0 / 120
        p = p * r + 1.0 / 24
        p = p * r + 1.0 / 6
        p = p * r + 0.5
        p = p * r + 1
        p = p * r + 1
        let exponent = (unsafeBitCast(t, to: SIMD8<UInt32>.self) &+ 127) &<< 23
        return p * unsafeBitCast(exponent, to: SIMD8<Float>.self)
    }

    /// softplus for 8 lanes: max(x, 0) + log(1 + e^−|x|), the log from its atanh series
    /// log(1 + e) = 2·(u + u³/3 + … + u¹⁵/15) with u = e / (2 + e) ≤ 1/3 (truncation below 1e-10).
    @inline(__always)
    static func softplus8(_ x: SIMD8<Float>) -> SIMD8<Float> {
        let magnitude = unsafeBitCast(unsafeBitCast(x, to: SIMD8<UInt32>.self) & 0x7fff_ffff, to: SIMD8<Float>.self)
        let e = exp8(-magnitude)
        let u = e / (e + 2)
        let u2 = u * u
        var p = SIMD8<Float>(repeating: 1.0 / 15)
        p = p * u2 + 1.0 / 13
        p = p * u2 + 1.0 / 11
        p = p * u2 + 1.0 / 9
        p = p * u2 + 1.0 / 7
        p = p * u2 + 1.0 / 5
        p = p * u2 + 1.0 / 3
        p = p * u2 + 1
        var positive = x
        positive.replace(with: 0, where: x .< 0)
        return positive + 2 * u * p
    }

    /// log(1 + eˣ), linear beyond 20 where the exponential would only add rounding (as PyTorch's softplus).
    @inline(__always)
    static func softplus(_ x: Float) -> Float {
        x > 20 ? x : log1pf(expf(x))
    }

    private func addBias(_ out: UnsafeMutablePointer<Float>, _ b: ParameterVector, rows: Int) {
        for r in 0..<rows { VectorOps.add(out + r * b.count, b.base, count: b.count) }
    }
}
