// KV eviction policies: which positions a sequence keeps once it holds more than a budget of them, per layer and
// KV head. The budget bounds a sequence's KV memory whatever its length; the policy decides what the kept positions
// are. Scores come from the attention kernels (AttentionScoreSink), never from a second pass over the KV.
//
// - window (StreamingLLM, arXiv 2309.17453): the first `sinkTokens` positions plus the most recent ones.
// - alisa (ALISA's sparse window attention, arXiv 2403.17312): a local window of the `recentWindow` most recent
//   positions plus, from the rest, the positions with the largest attention weight accumulated over recent steps
//   (an exponentially decayed sum, decay 1 − 1/decayHorizon per query row).
// - dms (Dynamic Memory Sparsification, arXiv 2506.05345): delayed eviction — a position stays readable while it
//   is among the `recentWindow` most recent; the decision to keep it is made when it leaves that window. The
//   checkpoints here carry no learned decision, so the training-free mark is the attention mass the position
//   received while it was in the window (while decoding, every position is judged on the same number of queries;
//   a prefill chunk scores its positions by all of its queries); once outside the window its score is frozen and
//   the lowest-scored ones go when the budget is exceeded.

public enum EvictionPolicy: String, Sendable, CaseIterable, Equatable {
    case none, window, alisa, dms

    /// Whether the policy reads attention weights (the sink path of the attention kernels).
    public var needsScores: Bool { self == .alisa || self == .dms }
}

public struct EvictionSettings: Sendable, Equatable {
    public var policy: EvictionPolicy
    /// Positions kept per layer and KV head after each step's eviction.
    public var budget: Int
    /// StreamingLLM's attention sinks (window policy).
    public var sinkTokens: Int
    /// ALISA's local window and DMS's delay window, in positions.
    public var recentWindow: Int
    /// ALISA's scores forget with this horizon: each query row multiplies them by 1 − 1/decayHorizon.
    public var decayHorizon: Int
    /// While decoding, attention weights are gathered on every `decodeScoreInterval`-th one-row pass and counted
    /// that many times: the kernel that gathers them (tern_attn_rows: two passes, one thread per KV head) costs
    /// about a third of a decode step at a 1024-position budget, and a regular sample of the recent queries
    /// estimates their sum. Prefill chunks always gather (all their rows).
    public var decodeScoreInterval: Int

    /// The smallest budget accepted: one block of 16 positions.
    public static let minimumBudget = 16
    public static let defaultBudget = 1024

    /// `recentWindow` defaults to half the budget and `decayHorizon` to four budgets, as measured on SmolLM2 at
    /// context 4096 with a 1024 budget (one window of the README's text): alisa 17.10 against 17.22–17.38 with
    /// local windows of 128–512 and a horizon of one window; dms 17.25 at 512 against 17.37 at 256 and 17.28 at 768.
    public init(policy: EvictionPolicy, budget: Int, sinkTokens: Int = 4, recentWindow: Int? = nil, decayHorizon: Int? = nil,
                decodeScoreInterval: Int = 4) {
        precondition(budget >= Self.minimumBudget, "an eviction budget below \(Self.minimumBudget) positions")
        self.policy = policy
        self.budget = budget
        self.sinkTokens = min(sinkTokens, budget / 2)
        self.recentWindow = max(1, min(recentWindow ?? budget / 2, budget - 1))
        self.decayHorizon = max(1, decayHorizon ?? 4 * budget)
        self.decodeScoreInterval = max(1, decodeScoreInterval)
    }

    /// Whether anything can be evicted.
    public var isActive: Bool { policy != .none }
}
