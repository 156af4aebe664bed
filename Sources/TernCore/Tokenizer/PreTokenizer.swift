// Splits text into the pieces that byte-level BPE merges within, reproducing the GPT-2, Llama 3, Qwen2 and
// SmolLM split regexes with hand-written scanners over Unicode scalar classes (no regex engine: faster, and no
// dependence on one engine's Unicode tables or backtracking quirks).

/// Which split rule to apply. Names follow GGUF `tokenizer.ggml.pre`.
public enum PreTokenizerKind: Sendable, Equatable {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// Every \p{N} scalar is its own piece, the GPT-2 rule runs on the stretches between (HF Digits + ByteLevel).
    case gpt2IndividualDigits
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,n}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    /// with n = 3 (Llama 3) or n = 1 (Qwen2).
    case llama3(maxDigits: Int)

    /// Maps a GGUF `tokenizer.ggml.pre` name; names we do not know fall back to GPT-2's rule.
    public init(ggufName: String) {
        switch ggufName.lowercased() {
        case "smollm", "starcoder", "refact", "codeshell", "gpt2-digits":
            self = .gpt2IndividualDigits
        case "llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe", "falcon3", "pixtral", "exaone", "minerva-7b":
            self = .llama3(maxDigits: 3)
        case "qwen2", "deepseek-r1-qwen", "megrez", "hunyuan":
            self = .llama3(maxDigits: 1)
        default:
            self = .gpt2
        }
    }
}

/// Character classes the split rules need, one byte per scalar.
enum ScalarClass {
    static let letter: UInt8 = 1
    static let number: UInt8 = 2
    static let space: UInt8 = 4      // Unicode White_Space (what Oniguruma's \s matches)
    static let newline: UInt8 = 8    // \r or \n (always together with `space`)

    /// ASCII classes precomputed; the rest is asked of the Unicode tables.
    static let ascii: [UInt8] = (0..<128).map { classify(Unicode.Scalar(UInt8($0))) }

    @inline(__always) static func of(_ s: Unicode.Scalar) -> UInt8 {
        if s.value < 128 { return ascii[Int(s.value)] }
        return classify(s)
    }

    static func classify(_ s: Unicode.Scalar) -> UInt8 {
        let p = s.properties
        if p.isWhitespace { return space | (s == "\n" || s == "\r" ? newline : 0) }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return number
        default:
            return 0
        }
    }
}

/// Scans one text (as scalars plus their classes) and reports piece boundaries.
struct PreTokenizerScanner {
    let kind: PreTokenizerKind

    /// Calls `emit` with each piece's scalar range, in order; the pieces tile `0..<scalars.count`.
    func split(_ scalars: UnsafeBufferPointer<Unicode.Scalar>, _ classes: UnsafeBufferPointer<UInt8>,
               _ emit: (Range<Int>) -> Void) {
        let n = scalars.count
        switch kind {
        case .gpt2:
            var i = 0
            while i < n {
                let j = gpt2Piece(scalars, classes, i, n)
                emit(i..<j)
                i = j
            }
        case .gpt2IndividualDigits:
            var start = 0
            while start < n {
                if classes[start] & ScalarClass.number != 0 {
                    emit(start..<start + 1)
                    start += 1
                    continue
                }
                var end = start
                while end < n && classes[end] & ScalarClass.number == 0 { end += 1 }
                var i = start
                while i < end {
                    let j = gpt2Piece(scalars, classes, i, end)
                    emit(i..<j)
                    i = j
                }
                start = end
            }
        case .llama3(let maxDigits):
            var i = 0
            while i < n {
                let j = llama3Piece(scalars, classes, i, n, maxDigits)
                emit(i..<j)
                i = j
            }
        }
    }

    @inline(__always) private static func isOther(_ c: UInt8) -> Bool {
        c & (ScalarClass.letter | ScalarClass.number | ScalarClass.space) == 0
    }

    @inline(__always) private static func run(_ classes: UnsafeBufferPointer<UInt8>, _ from: Int, _ end: Int,
                                              _ mask: UInt8) -> Int {
        var j = from
        while j < end && classes[j] & mask != 0 { j += 1 }
        return j
    }

    @inline(__always) private static func runOther(_ classes: UnsafeBufferPointer<UInt8>, _ from: Int, _ end: Int) -> Int {
        var j = from
        while j < end && isOther(classes[j]) { j += 1 }
        return j
    }

    /// Length of an English contraction starting at the apostrophe at `i` (0 if none).
    @inline(__always) private static func contraction(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ i: Int, _ end: Int,
                                                      caseInsensitive: Bool) -> Int {
        guard i + 1 < end else { return 0 }
        func low(_ x: Unicode.Scalar) -> UInt32 {
            guard caseInsensitive else { return x.value }
            if x.value >= 65 && x.value <= 90 { return x.value + 32 }
            if x.value == 0x17F { return 115 }  // LATIN SMALL LETTER LONG S case-folds to "s"
            return x.value
        }
        let a = low(s[i + 1])
        switch a {
        case 115, 116, 109, 100: return 2  // s t m d
        case 114, 118:  // re ve
            if i + 2 < end && low(s[i + 2]) == 101 { return 3 }
        case 108:  // ll
            if i + 2 < end && low(s[i + 2]) == 108 { return 3 }
        default: break
        }
        return 0
    }

    /// Whitespace tail shared by both rules: `\s+(?!\S)|\s+` starting at whitespace `i`, run ending at `j`.
    @inline(__always) private static func whitespaceRun(_ i: Int, _ j: Int, _ end: Int) -> Int {
        if j == end || j - i < 2 { return j }
        return j - 1
    }

    private func gpt2Piece(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ cls: UnsafeBufferPointer<UInt8>,
                           _ i: Int, _ end: Int) -> Int {
        let c = cls[i]
        if s[i] == "'" {
            let k = Self.contraction(s, i, end, caseInsensitive: false)
            if k > 0 { return i + k }
        }
        var start = i
        var first = c
        if s[i] == " " && i + 1 < end && cls[i + 1] & ScalarClass.space == 0 {
            start = i + 1
            first = cls[i + 1]
        }
        if first & ScalarClass.letter != 0 { return Self.run(cls, start + 1, end, ScalarClass.letter) }
        if first & ScalarClass.number != 0 { return Self.run(cls, start + 1, end, ScalarClass.number) }
        if Self.isOther(first) { return Self.runOther(cls, start + 1, end) }
        return Self.whitespaceRun(i, Self.run(cls, i, end, ScalarClass.space), end)
    }

    private func llama3Piece(_ s: UnsafeBufferPointer<Unicode.Scalar>, _ cls: UnsafeBufferPointer<UInt8>,
                             _ i: Int, _ end: Int, _ maxDigits: Int) -> Int {
        let c = cls[i]
        if s[i] == "'" {
            let k = Self.contraction(s, i, end, caseInsensitive: true)
            if k > 0 { return i + k }
        }
        if c & ScalarClass.letter != 0 { return Self.run(cls, i + 1, end, ScalarClass.letter) }
        // [^\r\n\p{L}\p{N}]?\p{L}+ : any one non-letter, non-digit, non-newline scalar may lead a word.
        if c & (ScalarClass.number | ScalarClass.newline) == 0 && i + 1 < end && cls[i + 1] & ScalarClass.letter != 0 {
            return Self.run(cls, i + 2, end, ScalarClass.letter)
        }
        if c & ScalarClass.number != 0 {
            var j = i + 1
            while j < end && j - i < maxDigits && cls[j] & ScalarClass.number != 0 { j += 1 }
            return j
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        var start = -1
        if Self.isOther(c) {
            start = i
        } else if s[i] == " " && i + 1 < end && Self.isOther(cls[i + 1]) {
            start = i + 1
        }
        if start >= 0 {
            let j = Self.runOther(cls, start + 1, end)
            return Self.run(cls, j, end, ScalarClass.newline)
        }
        // Whitespace: \s*[\r\n]+ ends after the run's last newline; otherwise \s+(?!\S)|\s+.
        let j = Self.run(cls, i, end, ScalarClass.space)
        var k = j - 1
        while k >= i && cls[k] & ScalarClass.newline == 0 { k -= 1 }
        if k >= i { return k + 1 }
        return Self.whitespaceRun(i, j, end)
    }
}
