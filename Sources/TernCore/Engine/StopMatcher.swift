// Stop strings over streamed text: emits text as soon as it can no longer be the start of a stop string,
// and reports the first stop string found (text from it on is never emitted).

public struct StopMatcher {
    public let stops: [String]
    private var pending = ""
    public private(set) var stopped = false

    public init(stops: [String]) {
        self.stops = stops.filter { !$0.isEmpty }
    }

    /// Adds text; returns what is safe to emit now.
    public mutating func append(_ text: String) -> String {
        guard !stopped else { return "" }
        pending += text
        if stops.isEmpty { defer { pending = "" }; return pending }
        // Earliest occurrence of any stop string wins.
        var cut: String.Index?
        for s in stops {
            if let r = pending.range(of: s), cut == nil || r.lowerBound < cut! { cut = r.lowerBound }
        }
        if let cut {
            stopped = true
            let out = String(pending[..<cut])
            pending = ""
            return out
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        var hold = 0
        let chars = Array(pending)
        for s in stops {
            let sc = Array(s)
            var k = min(sc.count - 1, chars.count)
            while k > hold {
                if Array(chars[(chars.count - k)...]) == Array(sc[..<k]) { hold = k; break }
                k -= 1
            }
        }
        let emit = String(chars[..<(chars.count - hold)])
        pending = String(chars[(chars.count - hold)...])
        return emit
    }

    /// Text still held back when generation ends for another reason.
    public mutating func finish() -> String {
        defer { pending = "" }
        return stopped ? "" : pending
    }
}
