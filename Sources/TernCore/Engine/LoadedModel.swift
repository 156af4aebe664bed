// A checkpoint opened and made ready to run: config, weights, tokenizer and chat template together.
// This is what the command-line tools and (later) the server's engine hold.

import Foundation

public final class LoadedModel: Sendable {
    public let checkpoint: Checkpoint
    public let model: LanguageModel
    public let tokenizer: Tokenizer
    public let chatTemplate: ChatTemplate?
    /// A name for API responses: the file or directory name without extension.
    public let name: String

    /// `chatTemplate` replaces the checkpoint's own template (`--chat-template`), or supplies one it lacks.
    /// `weights`: `.mapped` (the default) maps the file zero-copy, its pages shared with the page cache and other
    /// processes; `.privateCopy` (`tern serve --no-mmap`) reads it into memory of its own, so a file truncated or
    /// rewritten in place while the server runs cannot fault it (MappedFile explains both).
    public init(path: String, chatTemplate override: ChatTemplate? = nil, weights: MappedFile.Backing = .mapped) throws {
        let ck = try Checkpoint.open(path: path, backing: weights)
        checkpoint = ck
        model = try ModelLoader.load(ck)
        do {
            tokenizer = try Tokenizer(spec: ck.tokenizerSpec)
        } catch {
            throw CheckpointError(file: path, "tokenizer: \(error)")
        }
        if let override {
            chatTemplate = override
        } else if let source = ck.chatTemplate {
            do {
                chatTemplate = try ChatTemplate(source: source)
            } catch {
                throw CheckpointError(file: path, "chat template: \(error)")
            }
        } else {
            chatTemplate = nil
        }
        let last = (path as NSString).lastPathComponent
        name = last.hasSuffix(".gguf") ? String(last.dropLast(5)) : last
    }

    /// The transformer, when the checkpoint is one.
    public var llama: LlamaModel? { model as? LlamaModel }

    /// Prompt tokens for raw text. `addSpecial`: BOS first when the tokenizer asks for it (never twice, when the
    /// text already starts with it). `parseSpecial`: special-token text such as "<|im_start|>" becomes its id, as
    /// llama-server and vLLM do for completion prompts; off by default for the command-line tools.
    public func promptTokens(text: String, parseSpecial: Bool = false, addSpecial: Bool = true) -> [Int32] {
        withBOS(tokenizer.encode(text, parseSpecial: parseSpecial), addSpecial: addSpecial)
    }

    private func withBOS(_ ids: [Int32], addSpecial: Bool) -> [Int32] {
        guard addSpecial, tokenizer.spec.addBOS, let bos = tokenizer.spec.bosID, ids.first != bos else { return ids }
        return [bos] + ids
    }

    public enum ChatError: Error, CustomStringConvertible {
        case noTemplate
        public var description: String { "this checkpoint has no chat template" }
    }

    /// Renders messages with the checkpoint's chat template and tokenizes the result: the template's own text
    /// with special tokens parsed, message content without, so no message can forge a turn marker
    /// (see MarkedChatRendering.swift).
    public func chatPromptTokens(messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> [Int32] {
        guard let template = chatTemplate else { throw ChatError.noTemplate }
        let bosText = tokenizer.spec.bosID.map { tokenizer.tokenText($0) } ?? ""
        let eosText = tokenizer.spec.eosID.map { tokenizer.tokenText($0) } ?? ""
        let marked = try template.renderMarkingContent(messages: messages, addGenerationPrompt: addGenerationPrompt,
                                                       bosToken: bosText, eosToken: eosText,
                                                       specialRanges: { [tokenizer] in tokenizer.controlTokenRanges(in: $0) })
        let ids = tokenizer.encode(marked.text, parseSpecial: true, literalRanges: marked.contentRanges)
        // Templates that print the BOS text themselves must not get a second one.
        return withBOS(ids, addSpecial: true)
    }
}
