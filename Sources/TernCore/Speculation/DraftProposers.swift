// Where draft tokens come from when no draft model runs: the request's own text (prompt lookup) and the text
// the client says the answer will resemble (OpenAI's predicted outputs). Both are deterministic — a proposal is
// one token per position, not a distribution — which is what lets verification draw from the target exactly as a
// plain decode would (SpeculativeDecoder explains). Pure functions over token arrays; no model, no memory.

/// Prompt lookup (n-gram) drafting: find the most recent earlier occurrence of the context's last n tokens and
/// propose the tokens that followed it, trying the longest n first.
public struct NgramLookup: Sendable, Equatable {
    /// Longest and shortest suffix matched (a longer match predicts better; a 1-token match proposes often).
    public var maxN: Int
    public var minN: Int

    public init(maxN: Int = 3, minN: Int = 2) {
        precondition(minN >= 1 && maxN >= minN, "n-gram lookup needs 1 ≤ minN ≤ maxN")
        self.maxN = maxN
        self.minN = minN
    }

    /// Up to `limit` tokens that followed the latest earlier occurrence of `context`'s suffix in `source`
    /// (`source` may be `context` itself: the suffix's own position does not count).
    public func propose(context: [Int32], source: [Int32], limit: Int) -> [Int32] {
        guard limit > 0, let end = match(context: context, source: source) else { return [] }
        return Array(source[end..<min(source.count, end + limit)])
    }

    /// Where in `source` the proposal starts: just after the latest occurrence of the longest matching suffix of
    /// `context` that leaves at least one token to propose.
    public func match(context: [Int32], source: [Int32]) -> Int? {
        let sameText = source.count == context.count && source == context
        return context.withUnsafeBufferPointer { ctx in
            source.withUnsafeBufferPointer { src in
                let lastEnd = (sameText ? ctx.count : src.count) - 1
                for n in stride(from: min(maxN, ctx.count), through: minN, by: -1) {
                    if let end = Self.latestMatch(of: ctx, suffix: n, in: src, endingAtMost: lastEnd) { return end }
                }
                return nil
            }
        }
    }

    /// The largest `end ≤ lastEnd` with src[end−n..<end] == the last n tokens of ctx, scanning backwards.
    private static func latestMatch(of ctx: UnsafeBufferPointer<Int32>, suffix n: Int, in src: UnsafeBufferPointer<Int32>,
                                    endingAtMost lastEnd: Int) -> Int? {
        guard n > 0, ctx.count >= n, lastEnd >= n else { return nil }
        let last = ctx[ctx.count - 1]
        var end = lastEnd
        while end >= n {
            if src[end - 1] == last {
                var i = 1
                while i < n && src[end - 1 - i] == ctx[ctx.count - 1 - i] { i += 1 }
                if i == n { return end }
            }
            end -= 1
        }
        return nil
    }
}

/// Predicted outputs: the client's expected text, followed while the output agrees with it and found again by
/// n-gram lookup after the output departs from it (an edit in the middle of an otherwise unchanged document).
struct PredictionCursor {
    let tokens: [Int32]
    /// Where the output currently stands in `tokens`; nil after a departure, until lookup finds the place again.
    private(set) var position: Int? = 0
    /// Output tokens that followed the prediction (OpenAI's accepted_prediction_tokens), at most its length.
    private(set) var matched = 0

    init(tokens: [Int32]) { self.tokens = tokens }

    /// Follows one token of output.
    mutating func advance(past token: Int32) {
        if let p = position, p < tokens.count, tokens[p] == token {
            position = p + 1
            matched = min(matched + 1, tokens.count)
        } else {
            position = nil
        }
    }

    /// The next `limit` predicted tokens after `context` (prompt and output so far).
    mutating func propose(context: [Int32], lookup: NgramLookup, limit: Int) -> [Int32] {
        guard limit > 0, !tokens.isEmpty else { return [] }
        if position == nil {
            // Lost: find the place in the prediction that matches the output's last tokens; a single token is
            // enough (a prediction is given on purpose, so even a weak match is worth verifying).
            position = NgramLookup(maxN: max(lookup.maxN, 4), minN: 1).match(context: context, source: tokens)
        }
        guard let p = position, p < tokens.count else { return [] }
        return Array(tokens[p..<min(tokens.count, p + limit)])
    }
}
