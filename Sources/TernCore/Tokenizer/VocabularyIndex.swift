// Token text (UTF-8 bytes) -> id, for vocabularies of hundreds of thousands of tokens. A Dictionary keyed by
// [UInt8] holds a heap array per token besides its buckets: for Gemma 3's 262 144 tokens about 18 MiB, resident
// for the tokenizer's life. This index keeps every token's bytes in one buffer and open-addressed slots of ids,
// about 4 MiB for the same vocabulary, and looks up a slice of the text without copying it into an array.

struct VocabularyIndex: Sendable {
    /// Token i's bytes are bytes[offsets[i]..<offsets[i + 1]].
    private let bytes: [UInt8]
    private let offsets: [Int32]
    /// Ids, -1 where empty; at least twice as many slots as tokens, a power of two, probed linearly.
    private let slots: [Int32]
    private let mask: Int

    /// The first id of each distinct text is kept (a later duplicate is unreachable, as with the Dictionary).
    init(tokens: [String]) {
        var bytes: [UInt8] = []
        var offsets: [Int32] = [0]
        offsets.reserveCapacity(tokens.count + 1)
        for t in tokens {
            bytes.append(contentsOf: t.utf8)
            offsets.append(Int32(bytes.count))
        }
        var size = 16
        while size < 2 * tokens.count { size *= 2 }
        var slots = [Int32](repeating: -1, count: size)
        let mask = size - 1
        bytes.withUnsafeBufferPointer { all in
            for i in 0..<tokens.count {
                let key = UnsafeBufferPointer(rebasing: all[Int(offsets[i])..<Int(offsets[i + 1])])
                var s = Self.hash(key) & mask
                var duplicate = false
                while slots[s] >= 0 {
                    let j = Int(slots[s])
                    if Self.equal(key, UnsafeBufferPointer(rebasing: all[Int(offsets[j])..<Int(offsets[j + 1])])) {
                        duplicate = true
                        break
                    }
                    s = (s + 1) & mask
                }
                if !duplicate { slots[s] = Int32(i) }
            }
        }
        self.bytes = bytes
        self.offsets = offsets
        self.slots = slots
        self.mask = mask
    }

    subscript(key: UnsafeBufferPointer<UInt8>) -> Int32? {
        bytes.withUnsafeBufferPointer { all in
            var s = Self.hash(key) & mask
            while true {
                let id = slots[s]
                if id < 0 { return nil }
                if Self.equal(key, UnsafeBufferPointer(rebasing: all[Int(offsets[Int(id)])..<Int(offsets[Int(id) + 1])])) {
                    return id
                }
                s = (s + 1) & mask
            }
        }
    }

    subscript(key: [UInt8]) -> Int32? {
        key.withUnsafeBufferPointer { self[$0] }
    }

    /// FNV-1a, then a multiply to spread the low bits the mask keeps.
    @inline(__always) private static func hash(_ key: UnsafeBufferPointer<UInt8>) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        h = (h ^ (h >> 29)) &* 0xbf58_476d_1ce4_e5b9
        return Int(truncatingIfNeeded: h ^ (h >> 32))
    }

    @inline(__always) private static func equal(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        for k in 0..<a.count where a[k] != b[k] { return false }
        return true
    }
}
