// Turns a row of logits into the next token: penalties, then greedy or temperature sampling restricted by
// top-k, top-p and min-p. Seeded runs are reproducible: the random stream is Tern's own xoshiro256**,
// so the same seed and inputs give the same tokens on every machine.

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

public struct Sampler {
    public let parameters: SamplingParameters
    private var random: RandomStream
    /// How often each token was generated so far (presence/frequency penalties).
    private var generatedCounts: [Int32: Int] = [:]
    /// Tokens seen in the context (repetition penalty).
    private var contextTokens: Set<Int32> = []
    private var candidates: [(id: Int32, p: Float)] = []

    public init(parameters: SamplingParameters, context: [Int32] = []) {
        self.parameters = parameters
        random = RandomStream(seed: parameters.seed ?? UInt64.random(in: 0...UInt64.max))
        if parameters.repetitionPenalty != 1 { contextTokens = Set(context) }
    }

    /// Records a token that became part of the output (after sampling, or forced).
    public mutating func accept(_ token: Int32) {
        generatedCounts[token, default: 0] += 1
        if parameters.repetitionPenalty != 1 { contextTokens.insert(token) }
    }

    public mutating func sample(logits: UnsafeMutablePointer<Float>, count n: Int) -> Int32 {
        let p = parameters
        for (t, b) in p.logitBias where Int(t) >= 0 && Int(t) < n { logits[Int(t)] += b }
        if p.presencePenalty != 0 || p.frequencyPenalty != 0 {
            for (t, c) in generatedCounts where Int(t) < n {
                logits[Int(t)] -= p.presencePenalty + p.frequencyPenalty * Float(c)
            }
        }
        if p.repetitionPenalty != 1 {
            for t in contextTokens where Int(t) < n {
                let l = logits[Int(t)]
                logits[Int(t)] = l > 0 ? l / p.repetitionPenalty : l * p.repetitionPenalty
            }
        }
        if p.temperature <= 0 { return Self.argmax(logits, n) }

        var maxLogit = -Float.infinity
        for i in 0..<n where logits[i] > maxLogit { maxLogit = logits[i] }
        let invT = 1 / p.temperature
        // Unnormalised probabilities relative to the best token (which has weight 1).
        let minWeight = p.minP > 0 ? p.minP : 0
        candidates.removeAll(keepingCapacity: true)
        for i in 0..<n {
            let w = expf((logits[i] - maxLogit) * invT)
            if w >= minWeight && w > 0 { candidates.append((Int32(i), w)) }
        }
        let restrict = p.topK > 0 || p.topP < 1
        if restrict {
            candidates.sort { $0.p > $1.p || ($0.p == $1.p && $0.id < $1.id) }
            if p.topK > 0 && candidates.count > p.topK { candidates.removeLast(candidates.count - p.topK) }
            if p.topP < 1 {
                var total: Float = 0
                for c in candidates { total += c.p }
                var cumulative: Float = 0
                var keep = candidates.count
                for (i, c) in candidates.enumerated() {
                    cumulative += c.p
                    if cumulative >= p.topP * total { keep = i + 1; break }
                }
                candidates.removeLast(candidates.count - keep)
            }
        }
        var total: Double = 0
        for c in candidates { total += Double(c.p) }
        var target = random.nextUnit() * total
        for c in candidates {
            target -= Double(c.p)
            if target < 0 { return c.id }
        }
        return candidates.last?.id ?? Self.argmax(logits, n)
    }

    public static func argmax(_ logits: UnsafePointer<Float>, _ n: Int) -> Int32 {
        var best = 0
        var bestValue = -Float.infinity
        for i in 0..<n where logits[i] > bestValue {
            bestValue = logits[i]
            best = i
        }
        return Int32(best)
    }
}
