// Log-softmax over a row of logits: the chosen token's logprob and the most likely alternatives.

import Foundation

/// Log-softmax over a logits row.
enum TokenLogprobs {
    /// The k most likely tokens with their logprobs; `logprob` holds the log-sum-exp until a token is chosen.
    /// The row's largest logit and log Σ exp(logit − largest), summed in Double: the log-sum-exp is their sum.
    static func logSumExpParts(_ logits: UnsafePointer<Float>, vocab: Int) -> (max: Float, logSum: Double) {
        var maxL = -Float.infinity
        for i in 0..<vocab where logits[i] > maxL { maxL = logits[i] }
        var sum: Double = 0
        for i in 0..<vocab { sum += Double(expf(logits[i] - maxL)) }
        return (maxL, log(sum))
    }

    static func compute(_ logits: UnsafePointer<Float>, vocab: Int, top k: Int) -> TokenLogprob {
        let (maxL, logSum) = logSumExpParts(logits, vocab: vocab)
        let lse = maxL + Float(logSum)
        var best: [(token: Int32, logprob: Float)] = []
        if k > 0 {
            for i in 0..<vocab {
                let l = logits[i]
                if best.count < k || l - lse > best.last!.logprob {
                    let entry = (Int32(i), l - lse)
                    let at = best.firstIndex { $0.logprob < entry.1 } ?? best.count
                    best.insert(entry, at: at)
                    if best.count > k { best.removeLast() }
                }
            }
        }
        return TokenLogprob(token: -1, logprob: lse, top: best)
    }

    /// Logprob of `token`, given `reference.logprob` = the row's log-sum-exp from `compute`.
    static func logprob(_ logits: UnsafePointer<Float>, vocab: Int, token: Int32, reference: TokenLogprob) -> Float {
        logits[Int(token)] - reference.logprob
    }
}
