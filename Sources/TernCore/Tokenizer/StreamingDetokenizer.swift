// Incremental detokenization for streamed generation: emits text as soon as it is complete, holding back the
// bytes of a UTF-8 character that is split across tokens, so that the concatenated output equals decode(all ids).

public struct StreamingDetokenizer {
    private let tokenizer: Tokenizer
    private var pending: [UInt8] = []
    private var atStart = true

    public init(tokenizer: Tokenizer) {
        self.tokenizer = tokenizer
    }

    /// Feeds one token; returns the text that became complete (possibly empty).
    public mutating func append(_ id: Int32) -> String {
        tokenizer.appendBytes(of: id, to: &pending)
        if atStart && !pending.isEmpty {
            atStart = false
            if tokenizer.stripsLeadingSpace && pending[0] == 0x20 { pending.removeFirst() }
        }
        let cut = Self.completePrefixLength(pending)
        if cut == 0 { return "" }
        let text = String(decoding: pending[0..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Returns whatever is held back (an unfinished character becomes U+FFFD) and resets.
    public mutating func finish() -> String {
        let text = String(decoding: pending, as: UTF8.self)
        pending.removeAll()
        atStart = true
        return text
    }

    /// Bytes safe to decode now. Cutting just before a byte that is not a continuation byte never changes how
    /// either side decodes, so we hold back only from the last lead byte when its sequence is still short.
    static func completePrefixLength(_ b: [UInt8]) -> Int {
        let n = b.count
        var k = n - 1
        let lowest = max(0, n - 4)
        while k >= lowest && b[k] & 0xC0 == 0x80 { k -= 1 }
        if k < lowest { return n }
        let lead = b[k]
        let need: Int
        switch lead {
        case 0xC2...0xDF: need = 2
        case 0xE0...0xEF: need = 3
        case 0xF0...0xF4: need = 4
        default: need = 1
        }
        return n - k < need ? k : n
    }
}
