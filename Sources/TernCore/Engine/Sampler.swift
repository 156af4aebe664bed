// Turns a row of logits into the next token in two stages: logits processors edit the row (logit bias,
// presence/frequency and repetition penalties; grammars later), then the sampler turns the row into the
// distribution it draws from (greedy, or temperature restricted by top-k, top-p and min-p) and draws. Speculative
// verification uses none of this apart from the draw itself (its drafts are single tokens, so drawing as a plain
// decode does is the exact rule; SpeculativeDecoder explains); the distribution as a value (p(x) for a draft's
// min(1, p/q)) and snapshot/restore of the per-request state (random stream, processors' counts) are there for a
// draft that samples, which Tern does not have yet. Seeded runs are reproducible: the random stream is Tern's own xoshiro256**, so the same
// seed and inputs give the same tokens on every machine.

import CKernels
import Foundation

public struct SamplingParameters: Sendable, Equatable {
    /// 0 means greedy (argmax).
    public var temperature: Float = 1
    /// 0 disables.
    public var topK: Int = 0
    public var topP: Float = 1
    public var minP: Float = 0
    /// OpenAI-style, over generated tokens: logit -= presence·[count > 0] + frequency·count.
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    /// CTRL/HF-style over the whole context: positive logits divided, negative multiplied. 1 disables.
    public var repetitionPenalty: Float = 1
    public var seed: UInt64?
    /// OpenAI-style logit bias: added to the token's logit before penalties and sampling (−100…100).
    public var logitBias: [Int32: Float] = [:]

    public init(temperature: Float = 1, topK: Int = 0, topP: Float = 1, minP: Float = 0,
                presencePenalty: Float = 0, frequencyPenalty: Float = 0, repetitionPenalty: Float = 1,
                seed: UInt64? = nil) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.repetitionPenalty = repetitionPenalty
        self.seed = seed
    }

    public static let greedy = SamplingParameters(temperature: 0)
}

/// xoshiro256** seeded through splitmix64.
public struct RandomStream: Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var z = seed
        func splitmix() -> UInt64 {
            z &+= 0x9E37_79B9_7F4A_7C15
            var x = z
            x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
            x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
            return x ^ (x >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }

    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double {
        Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// Edits a row of logits before a token is chosen. Value types: copying the sampler copies their state.
public protocol LogitsProcessor: Sendable {
    /// Applies the processor to `logits[0..<count]`.
    func process(_ logits: UnsafeMutablePointer<Float>, count: Int)
    /// A token became part of the output (sampled, or accepted from a draft).
    mutating func accept(_ token: Int32)
}

/// OpenAI's logit_bias: a fixed amount added to chosen tokens' logits.
public struct LogitBiasProcessor: LogitsProcessor {
    public let bias: [Int32: Float]
    public init(bias: [Int32: Float]) { self.bias = bias }
    public func process(_ logits: UnsafeMutablePointer<Float>, count: Int) {
        for (t, b) in bias where Int(t) >= 0 && Int(t) < count { logits[Int(t)] += b }
    }
    public mutating func accept(_ token: Int32) {}
}

/// OpenAI-style penalties over generated tokens: logit −= presence·[count > 0] + frequency·count.
public struct PresenceFrequencyPenalty: LogitsProcessor {
    public let presence: Float
    public let frequency: Float
    private var counts: [Int32: Int] = [:]
    public init(presence: Float, frequency: Float) {
        self.presence = presence
        self.frequency = frequency
    }
    public func process(_ logits: UnsafeMutablePointer<Float>, count: Int) {
        for (t, c) in counts where Int(t) < count { logits[Int(t)] -= presence + frequency * Float(c) }
    }
    public mutating func accept(_ token: Int32) { counts[token, default: 0] += 1 }
}

/// CTRL/HF-style penalty over the whole context (prompt and output): positive logits divided, negative multiplied.
public struct RepetitionPenalty: LogitsProcessor {
    public let penalty: Float
    private var seen: Set<Int32>
    public init(penalty: Float, context: [Int32]) {
        self.penalty = penalty
        seen = Set(context)
    }
    public func process(_ logits: UnsafeMutablePointer<Float>, count: Int) {
        for t in seen where Int(t) < count {
            let l = logits[Int(t)]
            logits[Int(t)] = l > 0 ? l / penalty : l * penalty
        }
    }
    public mutating func accept(_ token: Int32) { seen.insert(token) }
}

/// The distribution one draw is made from: a single token (greedy), or candidates with unnormalised weights.
public struct SamplingDistribution: Sendable {
    public enum Kind: Sendable { case greedy(Int32), weighted }
    public var kind: Kind
    /// Candidates in draw order with weights relative to the best (weighted only).
    public var candidates: [(id: Int32, weight: Float)]
    public var totalWeight: Double

    /// Probability of `token` under this distribution.
    public func probability(of token: Int32) -> Double {
        switch kind {
        case .greedy(let t): return t == token ? 1 : 0
        case .weighted:
            guard totalWeight > 0 else { return 0 }
            for c in candidates where c.id == token { return Double(c.weight) / totalWeight }
            return 0
        }
    }
}

public struct Sampler {
    public let parameters: SamplingParameters
    private var random: RandomStream
    private var processors: [any LogitsProcessor] = []
    private var candidates: [(id: Int32, weight: Float)] = []

    /// Everything that changes as a request generates: restore it to go back (forks, rejected drafts).
    public struct Snapshot: Sendable {
        fileprivate let random: RandomStream
        fileprivate let processors: [any LogitsProcessor]
    }

    public init(parameters: SamplingParameters, context: [Int32] = []) {
        self.parameters = parameters
        random = RandomStream(seed: parameters.seed ?? UInt64.random(in: 0...UInt64.max))
        if !parameters.logitBias.isEmpty { processors.append(LogitBiasProcessor(bias: parameters.logitBias)) }
        if parameters.presencePenalty != 0 || parameters.frequencyPenalty != 0 {
            processors.append(PresenceFrequencyPenalty(presence: parameters.presencePenalty, frequency: parameters.frequencyPenalty))
        }
        if parameters.repetitionPenalty != 1 {
            processors.append(RepetitionPenalty(penalty: parameters.repetitionPenalty, context: context))
        }
    }

    public func snapshot() -> Snapshot { Snapshot(random: random, processors: processors) }

    public mutating func restore(_ s: Snapshot) {
        random = s.random
        processors = s.processors
    }

    /// Records a token that became part of the output (after sampling, or forced).
    public mutating func accept(_ token: Int32) {
        for i in processors.indices { processors[i].accept(token) }
    }

    /// Runs the logits processors over the row, in place.
    public func process(logits: UnsafeMutablePointer<Float>, count n: Int) {
        for p in processors { p.process(logits, count: n) }
    }

    /// The distribution the next draw would use for a processed row.
    public mutating func distribution(processedLogits logits: UnsafePointer<Float>, count n: Int) -> SamplingDistribution {
        let p = parameters
        if p.temperature <= 0 { return SamplingDistribution(kind: .greedy(Self.argmax(logits, n)), candidates: [], totalWeight: 1) }
        var maxLogit = -Float.infinity
        for i in 0..<n where logits[i] > maxLogit { maxLogit = logits[i] }
        let invT = 1 / p.temperature
        // Unnormalised probabilities relative to the best token (which has weight 1).
        let minWeight = p.minP > 0 ? p.minP : 0
        candidates.removeAll(keepingCapacity: true)
        // A large vocabulary (Gemma's 262k) must not be sorted whole: top-k keeps the k best in a heap as it scans,
        // and top-p alone takes candidates from a heap in order only until the mass is reached.
        if p.topK > 0 && p.topK < n {
            samplerSelectTopK(logits, n, k: p.topK, into: &candidates)
            // The k survivors in draw order; their weights decide, ties to the lower id, as a full sort would.
            var kept = 0
            for c in candidates {
                let w = expf((logits[Int(c.id)] - maxLogit) * invT)
                if w >= minWeight && w > 0 { candidates[kept] = (c.id, w); kept += 1 }
            }
            candidates.removeLast(candidates.count - kept)
            candidates.sort { $0.weight > $1.weight || ($0.weight == $1.weight && $0.id < $1.id) }
        } else {
            for i in 0..<n {
                let w = expf((logits[i] - maxLogit) * invT)
                if w >= minWeight && w > 0 { candidates.append((Int32(i), w)) }
            }
            if p.topK > 0 {
                candidates.sort { $0.weight > $1.weight || ($0.weight == $1.weight && $0.id < $1.id) }
            } else if p.topP < 1 {
                samplerTakeTopP(&candidates, mass: p.topP)
            }
        }
        if p.topK > 0 && p.topP < 1 && !candidates.isEmpty {
            // Sums in Double, so the cut does not depend on the order the weights were added in.
            var total: Double = 0
            for c in candidates { total += Double(c.weight) }
            var cumulative: Double = 0
            var keep = candidates.count
            for (i, c) in candidates.enumerated() {
                cumulative += Double(c.weight)
                if cumulative >= Double(p.topP) * total { keep = i + 1; break }
            }
            candidates.removeLast(candidates.count - keep)
        }
        if candidates.isEmpty { return SamplingDistribution(kind: .greedy(Self.argmax(logits, n)), candidates: [], totalWeight: 1) }
        var total: Double = 0
        for c in candidates { total += Double(c.weight) }
        return SamplingDistribution(kind: .weighted, candidates: candidates, totalWeight: total)
    }

    /// One draw from `d` (greedy takes no random number).
    public mutating func draw(from d: SamplingDistribution) -> Int32 {
        switch d.kind {
        case .greedy(let t): return t
        case .weighted:
            var target = random.nextUnit() * d.totalWeight
            for c in d.candidates {
                target -= Double(c.weight)
                if target < 0 { return c.id }
            }
            return d.candidates.last!.id
        }
    }

    /// Processes the row in place and draws the next token from it.
    public mutating func sample(logits: UnsafeMutablePointer<Float>, count n: Int) -> Int32 {
        process(logits: logits, count: n)
        return draw(from: distribution(processedLogits: logits, count: n))
    }

    /// The first index of the largest logit (NaN never wins; 0 when none exceeds -inf).
    public static func argmax(_ logits: UnsafePointer<Float>, _ n: Int) -> Int32 {
        Int32(tern_argmax_f32(logits, Int64(n)))
    }
}

// Partial selection for Sampler.distribution: the whole vocabulary is scanned once, but only the survivors are
// ordered.

/// Whether candidate a comes before b in draw order: higher weight first, ties to the lower id.
@inline(__always)
private func samplerBefore(_ a: (id: Int32, weight: Float), _ b: (id: Int32, weight: Float)) -> Bool {
    a.weight > b.weight || (a.weight == b.weight && a.id < b.id)
}

/// The k highest logits (ties to the lower id) in `out`, unordered, by one pass with a min-heap of k entries: a
/// logit below the heap's least is rejected with one comparison, which is almost every logit of a large vocabulary.
/// The logit stands in for the weight (exp is monotonic), so no exp is computed for rejected tokens.
private func samplerSelectTopK(_ logits: UnsafePointer<Float>, _ n: Int, k: Int,
                               into out: inout [(id: Int32, weight: Float)]) {
    out.removeAll(keepingCapacity: true)
    out.reserveCapacity(k)
    // The heap's root is the entry every other entry comes before.
    func worse(_ a: (id: Int32, weight: Float), _ b: (id: Int32, weight: Float)) -> Bool { samplerBefore(b, a) }
    func siftDown(_ h: inout [(id: Int32, weight: Float)], _ start: Int) {
        var i = start
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < h.count && worse(h[l], h[m]) { m = l }
            if r < h.count && worse(h[r], h[m]) { m = r }
            if m == i { return }
            h.swapAt(i, m)
            i = m
        }
    }
    for i in 0..<k { out.append((Int32(i), logits[i])) }
    for i in stride(from: k / 2 - 1, through: 0, by: -1) { siftDown(&out, i) }
    for i in k..<n {
        let v = logits[i]
        // Ids only grow, so an equal logit never displaces an entry already held.
        guard v > out[0].weight else { continue }
        out[0] = (Int32(i), v)
        siftDown(&out, 0)
    }
}

/// Keeps the shortest prefix, in draw order, whose weight reaches `mass` of the total, and leaves it in draw order.
/// Heapifies in linear time and pops only as many entries as the prefix holds.
private func samplerTakeTopP(_ c: inout [(id: Int32, weight: Float)], mass: Float) {
    var total: Double = 0
    for x in c { total += Double(x.weight) }
    let target = Double(mass) * total
    var heap = c
    func siftDown(_ h: inout [(id: Int32, weight: Float)], _ start: Int, _ count: Int) {
        var i = start
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < count && samplerBefore(h[l], h[m]) { m = l }
            if r < count && samplerBefore(h[r], h[m]) { m = r }
            if m == i { return }
            h.swapAt(i, m)
            i = m
        }
    }
    var count = heap.count
    for i in stride(from: count / 2 - 1, through: 0, by: -1) { siftDown(&heap, i, count) }
    c.removeAll(keepingCapacity: true)
    var cumulative: Double = 0
    while count > 0 {
        let top = heap[0]
        c.append(top)
        cumulative += Double(top.weight)
        if cumulative >= target { break }
        count -= 1
        heap[0] = heap[count]
        siftDown(&heap, 0, count)
    }
}
