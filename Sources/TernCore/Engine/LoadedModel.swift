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

    public init(path: String) throws {
        let ck = try Checkpoint.open(path: path)
        checkpoint = ck
        model = try ModelLoader.load(ck)
        do {
            tokenizer = try Tokenizer(spec: ck.tokenizerSpec)
        } catch {
            throw CheckpointError(file: path, "tokenizer: \(error)")
        }
        if let source = ck.chatTemplate {
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

    /// Prompt tokens for raw text: BOS first when the tokenizer asks for it; special-token text is not parsed.
    public func promptTokens(text: String) -> [Int32] {
        var ids: [Int32] = []
        if tokenizer.spec.addBOS, let bos = tokenizer.spec.bosID { ids.append(bos) }
        ids += tokenizer.encode(text, parseSpecial: false)
        return ids
    }

    public enum ChatError: Error, CustomStringConvertible {
        case noTemplate
        public var description: String { "this checkpoint has no chat template" }
    }

    /// Renders messages with the checkpoint's chat template and tokenizes the result (special tokens parsed).
    public func chatPromptTokens(messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> [Int32] {
        guard let template = chatTemplate else { throw ChatError.noTemplate }
        let bosText = tokenizer.spec.bosID.map { tokenizer.tokenText($0) } ?? ""
        let eosText = tokenizer.spec.eosID.map { tokenizer.tokenText($0) } ?? ""
        let text = try template.render(messages: messages, addGenerationPrompt: addGenerationPrompt,
                                       bosToken: bosText, eosToken: eosText)
        var ids = tokenizer.encode(text, parseSpecial: true)
        // Templates that print the BOS text themselves must not get a second one.
        if tokenizer.spec.addBOS, let bos = tokenizer.spec.bosID, ids.first != bos { ids.insert(bos, at: 0) }
        return ids
    }
}
