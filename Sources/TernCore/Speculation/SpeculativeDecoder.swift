// Speculative decoding's policy: which decoding sequences draft how many tokens this step, and what was learnt
// from the last verification. The engine runs the drafted rows inside its normal batched step and verifies them
// (Engine.verify); this type owns everything else.
//
// Verification is exact because every proposer here is deterministic (prompt lookup, predicted outputs, a draft
// model's argmax): the draft distribution q is one token x with q(x) = 1, so the standard rule — accept x with
// probability min(1, p(x)/q(x)) = p(x), else draw from normalize(max(0, p − q)), which is p without x — is the same
// as drawing t from the target p exactly as a plain decode would and accepting iff t == x; on a mismatch t itself
// is the resampled token. So a speculating sequence draws one random number per emitted token, like a plain one,
// and a seeded request yields the same tokens with and without speculation.
//
// The length of each draft follows SmartSpec (arXiv 2406.14066): with a per-sequence acceptance rate α (a moving
// average) a draft of k tokens yields (1 − α^(k+1)) / (1 − α) tokens on average, and a step's time is the measured
// cost of its token count (StepCostModel); drafts grow one token at a time, to the sequence whose next token is
// likeliest accepted, while expected tokens per second of the whole step still improve. A compute-bound batch
// stops at k = 0.
//
// Engine-thread only.

import Foundation

public enum SpeculationMode: String, Sendable, CaseIterable {
    /// No speculation.
    case off
    /// Prompt lookup and predicted outputs.
    case ngram
    /// The draft model only (predicted outputs still count).
    case draft
    /// Predicted outputs when given, the draft model when one is loaded, prompt lookup otherwise.
    case auto
}

public struct SpeculationConfiguration: Sendable {
    public var mode: SpeculationMode = .auto
    /// Most tokens drafted per sequence and step.
    public var maxDraft = 8
    public var lookup = NgramLookup()
    /// false: every proposal is verified whole (up to maxDraft), whatever it is expected to yield — for tests and
    /// for measuring what adaptation buys.
    public var adaptive = true

    public init(mode: SpeculationMode = .auto) { self.mode = mode }
}

/// Where a sequence's current draft came from.
enum DraftSource: Int, Sendable {
    case lookup = 0, prediction, model
}

/// Acceptance of one sequence's drafts from one source, as a per-token rate (the geometric model's MLE:
/// accepted tokens over accepted tokens plus rejections), smoothed so it follows a changing text.
struct AcceptanceRate {
    private var accepted: Double
    private var rejected: Double
    /// How much of the past each new verification keeps.
    let decay: Double

    /// A prior worth two observations.
    init(prior: Double, decay: Double = 0.7) {
        accepted = 2 * prior
        rejected = 2 * (1 - prior)
        self.decay = decay
    }

    var value: Double { accepted / max(accepted + rejected, 1e-9) }

    mutating func record(drafted: Int, accepted a: Int) {
        guard drafted > 0 else { return }
        accepted = accepted * decay + Double(a)
        rejected = rejected * decay + (a < drafted ? 1 : 0)
    }
}

/// A sequence's speculation state (held by SequenceState).
struct SequenceSpeculation {
    var enabled: Bool
    var prediction: PredictionCursor?
    /// Per draft source; empty until the sequence first drafts, then started from the server-wide rates.
    var rates: [AcceptanceRate] = []
    /// The proposal for the next step (before the length is chosen) and the draft that step verifies.
    var proposal: [Int32] = []
    var draft: [Int32] = []
    var source: DraftSource = .lookup
    /// Tokens drafted and accepted over the sequence's life.
    var drafted = 0
    var accepted = 0
    /// The draft model's KV of this sequence and the tokens it holds (draft-model speculation only).
    var draftMemory: PagedKVMemory?
    var draftTokens: [Int32] = []
}

public struct SpeculationMetrics: Sendable {
    public var draftedTokens = 0
    public var acceptedTokens = 0
    /// Verification steps a sequence took part in with a draft.
    public var verifications = 0
    /// Per draft position (0 = first drafted token): how often a token was drafted there and accepted.
    public var draftedByPosition: [Int] = []
    public var acceptedByPosition: [Int] = []

    public init() {}
}

final class SpeculativeDecoder {
    let configuration: SpeculationConfiguration
    private(set) var cost = StepCostModel()
    private(set) var metrics = SpeculationMetrics()
    /// Acceptance per draft source over every sequence: where a new sequence's own rates start, so each request
    /// does not pay for learning again that, say, free text is a poor source of lookups.
    private var serverRates = [0.5, 0.8, 0.6].map { AcceptanceRate(prior: $0, decay: 0.95) }
    /// Set once calibration was tried (it needs free KV blocks, so it may be skipped).
    private(set) var calibrationAttempted = false
    /// The draft model, when one is loaded and the mode uses it.
    let draftModel: DraftModelRunner?

    init(configuration: SpeculationConfiguration, draftModel: DraftModelRunner? = nil) {
        self.configuration = configuration
        self.draftModel = configuration.mode == .draft || configuration.mode == .auto ? draftModel : nil
        metrics.draftedByPosition = Array(repeating: 0, count: configuration.maxDraft)
        metrics.acceptedByPosition = Array(repeating: 0, count: configuration.maxDraft)
    }

    var usesLookup: Bool { configuration.mode == .ngram || configuration.mode == .auto }

    /// A real step's time. Before calibration, decodes and small steps are calibration data (a first prefill is
    /// not).
    func observeStep(tokens: Int, seconds: Double) {
        if calibrationAttempted {
            cost.observe(tokens: tokens, seconds: seconds)
        } else {
            cost.observeUncalibrated(tokens: tokens, seconds: seconds, largest: configuration.maxDraft + 1)
        }
    }
    func calibrate(tokens: Int, seconds: Double) { cost.calibrate(tokens: tokens, seconds: seconds) }

    /// Most tokens `s` may draft: never past max_tokens or the context (the last emitted token comes from the
    /// target anyway).
    private func draftRoom(_ s: SequenceState) -> Int {
        min(configuration.maxDraft, s.request.request.maxTokens - s.generatedCount - 1, s.memory.capacity - s.tokens.count - 1)
    }

    /// Sets the draft of each of `sequences` (decoding, one pending token each), with lengths chosen for a step
    /// that also carries `otherTokens` tokens and may carry `budget` tokens in all; sequences with nothing to look
    /// up get the draft model's proposals, when there is one. `calibrate` runs once, the first time a proposal
    /// exists and the step cost is not yet known.
    func prepareDrafts(_ sequences: [SequenceState], otherTokens: Int, budget: Int, calibrate: () -> Void) {
        let (modelDrafting, k) = chooseDrafts(sequences, otherTokens: otherTokens, budget: budget, calibrate: calibrate)
        guard k > 0, let draftModel else { return }
        draftModel.propose(modelDrafting, count: k)
        for s in modelDrafting where s.speculation.draft.count > draftRoom(s) {
            s.speculation.draft.removeLast(s.speculation.draft.count - max(0, draftRoom(s)))
        }
    }

    /// Proposes lookup and prediction drafts and sizes them; returns the sequences the draft model should draft
    /// for and how many tokens (none without a draft model).
    private func chooseDrafts(_ sequences: [SequenceState], otherTokens: Int, budget: Int,
                              calibrate: () -> Void) -> (sequences: [SequenceState], count: Int) {
        var candidates: [SequenceState] = []
        var modelCandidates: [SequenceState] = []
        for s in sequences {
            s.speculation.draft.removeAll(keepingCapacity: true)
            guard s.speculation.enabled else { continue }
            if s.speculation.rates.isEmpty { s.speculation.rates = serverRates.map { AcceptanceRate(prior: $0.value) } }
            let limit = draftRoom(s)
            guard limit > 0 else { continue }
            propose(s, limit: limit)
            if !s.speculation.proposal.isEmpty {
                candidates.append(s)
            } else if draftModel != nil {
                s.speculation.source = .model
                modelCandidates.append(s)
            }
        }
        var room = budget - sequences.count - otherTokens
        if configuration.adaptive && !calibrationAttempted && !(candidates.isEmpty && modelCandidates.isEmpty) {
            calibrationAttempted = true
            calibrate()
        }
        if !configuration.adaptive || !cost.isCalibrated {
            for s in candidates where room > 0 {
                let k = min(s.speculation.proposal.count, room)
                s.speculation.draft = Array(s.speculation.proposal.prefix(k))
                room -= k
            }
            let k = modelCandidates.isEmpty ? 0 : min(configuration.maxDraft, room / modelCandidates.count)
            return (modelCandidates, k)
        }
        // Greedy goodput: add the draft token with the highest chance of being used while it pays.
        var k = [Int](repeating: 0, count: candidates.count)
        let alpha = candidates.map { min(0.98, $0.speculation.rates[$0.speculation.source.rawValue].value) }
        var tokens = sequences.count + otherTokens
        var expected = Double(sequences.count)
        var best = expected / cost.estimate(tokens: tokens)
        while room > 0 {
            var pick = -1
            var gain = 0.0
            for i in candidates.indices where k[i] < candidates[i].speculation.proposal.count {
                // E(k+1) − E(k) = α^(k+1): the chance that all k+1 drafted tokens are accepted.
                let g = pow(alpha[i], Double(k[i] + 1))
                if g > gain { gain = g; pick = i }
            }
            guard pick >= 0 else { break }
            let goodput = (expected + gain) / cost.estimate(tokens: tokens + 1)
            guard goodput > best else { break }
            best = goodput
            expected += gain
            tokens += 1
            room -= 1
            k[pick] += 1
        }
        for (i, s) in candidates.enumerated() where k[i] > 0 {
            s.speculation.draft = Array(s.speculation.proposal.prefix(k[i]))
        }
        guard let draftModel, !modelCandidates.isEmpty else { return ([], 0) }
        // The draft model: one length K for all its sequences (their draft passes are batched), the K whose
        // expected tokens per second — the draft passes' time included — beat what the step has without them.
        let modelAlpha = modelCandidates.map { min(0.98, $0.speculation.rates[DraftSource.model.rawValue].value) }
        var bestK = 0
        for kk in 1...configuration.maxDraft {
            var extraTokens = 0
            var extraExpected = 0.0
            for (s, a) in zip(modelCandidates, modelAlpha) {
                let own = min(kk, draftRoom(s))
                extraTokens += own
                // E(k) − E(0) = α + α² + … + α^k.
                if own > 0 { for j in 1...own { extraExpected += pow(a, Double(j)) } }
            }
            guard extraTokens <= room else { break }
            let time = cost.estimate(tokens: tokens + extraTokens)
                + draftModel.estimate(steps: kk, sequences: modelCandidates.count, target: cost)
            let goodput = (expected + extraExpected) / time
            if goodput > best {
                best = goodput
                bestK = kk
            }
        }
        return bestK > 0 ? (modelCandidates, bestK) : ([], 0)
    }

    private func propose(_ s: SequenceState, limit: Int) {
        s.speculation.proposal.removeAll(keepingCapacity: true)
        if s.speculation.prediction != nil {
            let p = s.speculation.prediction!.propose(context: s.tokens, lookup: configuration.lookup, limit: limit)
            if !p.isEmpty {
                s.speculation.proposal = p
                s.speculation.source = .prediction
                return
            }
        }
        if usesLookup {
            s.speculation.proposal = configuration.lookup.propose(context: s.tokens, source: s.tokens, limit: limit)
            s.speculation.source = .lookup
        }
    }

    /// Records a verification: `accepted` of `drafted` tokens were accepted.
    func record(_ s: SequenceState, drafted: Int, accepted: Int) {
        guard drafted > 0 else { return }
        s.speculation.rates[s.speculation.source.rawValue].record(drafted: drafted, accepted: accepted)
        serverRates[s.speculation.source.rawValue].record(drafted: drafted, accepted: accepted)
        s.speculation.drafted += drafted
        s.speculation.accepted += accepted
        metrics.draftedTokens += drafted
        metrics.acceptedTokens += accepted
        metrics.verifications += 1
        for i in 0..<min(drafted, metrics.draftedByPosition.count) {
            metrics.draftedByPosition[i] += 1
            if i < accepted { metrics.acceptedByPosition[i] += 1 }
        }
    }
}
