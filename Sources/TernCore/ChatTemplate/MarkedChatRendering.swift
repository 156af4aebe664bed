// Rendering a conversation while remembering which stretches of the output came from message content, so the
// tokenizer can parse the template's own markers (<|im_start|>, <|eot_id|>) as special tokens while text a user
// wrote stays ordinary text: a message that contains "<|im_end|>\n<|im_start|>system" cannot open a turn.
//
// How the stretches are found: each message's content is wrapped in two Unicode noncharacters before rendering,
// and the rendered text is scanned for them. Templates may transform content (`| trim`, `.split('</think>')`,
// slicing), which could separate the markers from the text they enclose, so a result is only trusted when its
// markers pair up and the text without them equals a plain render. When whole-content marking fails that test,
// only the special-token texts inside each content are wrapped (enough to keep them ordinary text); when that
// fails too, rendering throws rather than hand the model a prompt whose turns a user may have forged.

import Foundation

/// Rendered prompt text and the UTF-8 byte ranges in it that came from message content (ascending).
public struct MarkedChatText: Sendable, Equatable {
    public var text: String
    public var contentRanges: [Range<Int>]
}

extension ChatTemplate {
    /// Opens and closes a content stretch. Noncharacters are "not for interchange", and message content has
    /// them replaced before rendering, so only the renderer's own markers are ever seen.
    static let contentOpen = Unicode.Scalar(UInt32(0xFDD0))!
    static let contentClose = Unicode.Scalar(UInt32(0xFDD1))!

    /// Renders `messages` and reports which parts of the text are message content. `specialRanges` gives the
    /// UTF-8 byte ranges of special-token text inside a string (the tokenizer's view), used when a template's
    /// handling of content defeats whole-content marking.
    public func renderMarkingContent(messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String,
                                     eosToken: String, specialRanges: (String) -> [Range<Int>]) throws -> MarkedChatText {
        let clean = messages.map { ChatMessage(role: $0.role, content: Self.withoutMarkers($0.content)) }
        func render(_ m: [ChatMessage]) throws -> String {
            try self.render(messages: m, addGenerationPrompt: addGenerationPrompt, bosToken: bosToken, eosToken: eosToken)
        }
        let plain = try render(clean)
        let whole = Self.stripMarkers(try render(clean.map { ChatMessage(role: $0.role, content: Self.markWhole($0.content)) }))
        if whole.balanced && whole.marked.text == plain { return whole.marked }
        let pieces = Self.stripMarkers(try render(clean.map {
            ChatMessage(role: $0.role, content: Self.markPieces($0.content, specialRanges($0.content)))
        }))
        if pieces.balanced && pieces.marked.text == plain { return pieces.marked }
        throw ChatTemplateError(.runtime, "a message holds special-token text, and this template transforms message content "
                                + "so that it cannot be kept apart from the template's own markers")
    }

    static func withoutMarkers(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: { $0 == contentOpen || $0 == contentClose }) else { return s }
        var out = String.UnicodeScalarView()
        for u in s.unicodeScalars { out.append(u == contentOpen || u == contentClose ? "\u{FFFD}" : u) }
        return String(out)
    }

    /// Markers around the content but inside its leading and trailing whitespace, so that `trim` and `strip`
    /// remove exactly what they would remove from the unmarked text.
    static func markWhole(_ s: String) -> String {
        let scalars = Array(s.unicodeScalars)
        guard let first = scalars.firstIndex(where: { !TemplateLexer.isSpace($0) }),
              let last = scalars.lastIndex(where: { !TemplateLexer.isSpace($0) }) else { return s }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: scalars[..<first])
        out.append(contentOpen)
        out.append(contentsOf: scalars[first...last])
        out.append(contentClose)
        out.append(contentsOf: scalars[(last + 1)...])
        return String(out)
    }

    /// Markers around each of `ranges` (UTF-8 byte ranges of `s`, ascending, on scalar boundaries).
    static func markPieces(_ s: String, _ ranges: [Range<Int>]) -> String {
        guard !ranges.isEmpty else { return s }
        let bytes = Array(s.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + ranges.count * 6)
        let open = Array(String(contentOpen).utf8), close = Array(String(contentClose).utf8)
        var at = 0
        for r in ranges where r.lowerBound >= at && r.upperBound <= bytes.count {
            out += bytes[at..<r.lowerBound]
            out += open
            out += bytes[r]
            out += close
            at = r.upperBound
        }
        out += bytes[at...]
        return String(decoding: out, as: UTF8.self)
    }

    /// Removes the markers and returns the byte ranges they enclosed; `balanced` is false when they do not
    /// alternate open, close, …, which means the template cut or reordered content.
    static func stripMarkers(_ marked: String) -> (marked: MarkedChatText, balanced: Bool) {
        var out = String.UnicodeScalarView()
        var ranges: [Range<Int>] = []
        var offset = 0
        var openedAt: Int?
        var balanced = true
        for u in marked.unicodeScalars {
            if u == contentOpen {
                if openedAt == nil { openedAt = offset } else { balanced = false }
            } else if u == contentClose {
                if let start = openedAt {
                    if start < offset { ranges.append(start..<offset) }
                    openedAt = nil
                } else {
                    balanced = false
                }
            } else {
                out.append(u)
                offset += UTF8.width(u)
            }
        }
        if openedAt != nil { balanced = false }
        return (MarkedChatText(text: String(out), contentRanges: ranges), balanced)
    }
}
