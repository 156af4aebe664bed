// How long a forward pass takes as a function of the tokens it carries, measured on this machine: the price
// side of SmartSpec's goodput. On a CPU a decode step is bound by reading the weights, so a few more rows cost
// little until the matrix products turn compute-bound — where exactly depends on the kernels, the weight type
// and the core count, so it is measured (a short calibration, then every real step) rather than assumed.
// Engine-thread only.

import Foundation

struct StepCostModel {
    /// Seconds per pass by token count, as calibrated (sparse): the shape of the cost curve.
    private var seconds: [Int: Double] = [:]
    private var sizes: [Int] = []
    /// What real steps cost relative to the calibrated shape (a longer context, a busier machine), smoothed.
    private(set) var scale = 1.0
    /// Weight of a new observation in the moving average.
    static let smoothing = 0.2

    var isCalibrated: Bool { sizes.count >= 2 }

    /// Token counts a calibration times beside the decodes already seen: verifications of 1, 4 and `maxDraft`
    /// drafted tokens (about 16 tokens in all, one pass each; larger batches follow the slope of the last two).
    func calibrationSizes(maxDraft: Int, maxTokens: Int) -> [Int] {
        let wanted = [1, 2, 5, maxDraft + 1]
        return Array(Set(wanted.filter { $0 >= 1 && $0 <= maxTokens })).sorted()
    }

    /// A step seen before calibration: small ones count as calibration, others are ignored.
    mutating func observeUncalibrated(tokens n: Int, seconds t: Double, largest: Int) {
        if n <= largest { calibrate(tokens: n, seconds: t) }
    }

    /// A calibration pass: `n` tokens took `t` seconds (the fastest pass of a size counts).
    mutating func calibrate(tokens n: Int, seconds t: Double) {
        guard n > 0, t > 0, t.isFinite else { return }
        if let old = seconds[n] {
            seconds[n] = min(old, t)
        } else {
            let i = sizes.firstIndex(where: { $0 > n }) ?? sizes.count
            sizes.insert(n, at: i)
            seconds[n] = t
        }
    }

    /// A real step of `n` tokens took `t` seconds. Until two sizes are known (no calibration could run) steps
    /// draw the curve; then they only move the scale, so that sizes the adaptive policy stopped choosing keep
    /// their calibrated relation to the ones it chooses.
    mutating func observe(tokens n: Int, seconds t: Double) {
        guard n > 0, t > 0, t.isFinite else { return }
        guard isCalibrated else {
            calibrate(tokens: n, seconds: t)
            return
        }
        let ratio = min(4, max(0.25, t / shape(n)))
        scale += Self.smoothing * (ratio - scale)
    }

    /// Estimated seconds of a pass with `n` tokens.
    func estimate(tokens n: Int) -> Double { shape(n) * scale }

    /// The calibrated curve: interpolated between the nearest sizes, extended linearly past the largest, never
    /// less for more tokens.
    private func shape(_ n: Int) -> Double {
        guard let first = sizes.first else { return Double(n) }
        if n <= first { return seconds[first]! * Double(max(n, 1)) / Double(first) }
        var lo = first
        for s in sizes {
            if s == n { return seconds[s]! }
            if s > n {
                let a = seconds[lo]!, b = max(seconds[s]!, a)
                return a + (b - a) * Double(n - lo) / Double(s - lo)
            }
            lo = s
        }
        // Past the largest size: the slope of the last two sizes (at least half the average cost per token).
        let last = sizes[sizes.count - 1], tl = seconds[last]!
        var slope = tl / Double(last)
        if sizes.count >= 2 {
            let prev = sizes[sizes.count - 2]
            slope = max(slope * 0.5, (tl - seconds[prev]!) / Double(last - prev))
        }
        return tl + slope * Double(n - last)
    }
}
