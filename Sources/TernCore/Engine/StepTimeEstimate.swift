// How long an engine step takes as a function of its estimated cost (Scheduler.cost units): a fixed part (the
// weights streamed once per step, thread wake-ups) plus a part per cost unit, both measured from real steps and
// smoothed. The engine turns a target step time into a cost budget with it, so that while streams are generating
// a long prompt is computed in steps that keep their inter-token latency near the target on whatever machine,
// model and kernels this is. Engine-thread only.

struct StepTimeEstimate {
    /// Seconds of a step with almost no work (smoothed over small steps).
    private(set) var fixedSeconds: Double?
    /// Seconds per cost unit beyond the fixed part (smoothed over steps large enough to measure it).
    private(set) var secondsPerUnit: Double?
    /// Until a large step has been seen: the whole time of small steps per cost unit, an overestimate (it counts
    /// the fixed part too), so the first long prompt among streams starts in small steps rather than one huge one.
    private(set) var coarseSecondsPerUnit: Double?
    static let smoothing = 0.2
    /// Steps below this cost measure the fixed part; at or above `perUnitFrom`, the per-unit part.
    static let fixedBelow = 8.0, perUnitFrom = 32.0

    mutating func observe(cost: Double, seconds: Double) {
        guard seconds > 0, seconds.isFinite, cost > 0 else { return }
        func smooth(_ old: Double?, _ new: Double) -> Double { old.map { $0 + Self.smoothing * (new - $0) } ?? new }
        if cost < Self.perUnitFrom { coarseSecondsPerUnit = smooth(coarseSecondsPerUnit, seconds / cost) }
        if cost < Self.fixedBelow {
            fixedSeconds = smooth(fixedSeconds, seconds)
        } else if cost >= Self.perUnitFrom {
            secondsPerUnit = smooth(secondsPerUnit, max(seconds - (fixedSeconds ?? 0), seconds / 2) / cost)
        }
    }

    /// The cost a step may carry to take about `seconds`, or nil before any step has been measured.
    func costUnits(within seconds: Double) -> Double? {
        if let perUnit = secondsPerUnit, perUnit > 0 { return max(0, seconds - (fixedSeconds ?? 0)) / perUnit }
        guard let coarse = coarseSecondsPerUnit, coarse > 0 else { return nil }
        return seconds / coarse
    }
}
