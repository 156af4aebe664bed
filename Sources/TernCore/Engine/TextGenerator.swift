// Generation for one sequence: prefill the prompt in chunks, then sample token by token until a stop token,
// a stop string or the token limit. Text is streamed through a callback as it becomes final.
// The server's batching engine (a later issue) drives the same model and sampler over many sequences.

import Foundation

/// A single-sequence generation is an engine request with one choice; `n`, `logprobs` and `promptLogprobs`
/// are for the batching engine, and TextGenerator refuses requests that set them.
public typealias GenerationRequest = EngineRequest

public enum FinishReason: String, Sendable {
    case stop, length
}

public struct GenerationResult: Sendable {
    public var text: String
    public var tokens: [Int32]
    public var finishReason: FinishReason
    /// The end-of-generation or stop token that ended generation (not part of `tokens`).
    public var stopToken: Int32?
    public var promptTokenCount: Int
    public var promptSeconds: Double
    public var generationSeconds: Double
}

public enum GenerationError: Error, CustomStringConvertible {
    case emptyPrompt
    case promptTooLong(Int, context: Int)
    public var description: String {
        switch self {
        case .emptyPrompt: return "the prompt is empty"
        case .promptTooLong(let n, let c): return "the prompt has \(n) tokens; the context holds \(c)"
        }
    }
}

public final class TextGenerator {
    public let loaded: LoadedModel
    public let workspace: ModelWorkspace
    public let contextLength: Int

    public init(loaded: LoadedModel, contextLength: Int, threads: Int, batchTokens: Int = 256) {
        self.loaded = loaded
        self.contextLength = contextLength
        let pool = WorkerPool(threads: threads)
        workspace = loaded.model.makeWorkspace(maxTokens: batchTokens, maxContext: contextLength, pool: pool)
    }

    /// Runs the request; `onText` receives final text pieces and returns false to cancel.
    public func generate(_ req: GenerationRequest, onText: (String) -> Bool = { _ in true }) throws -> GenerationResult {
        let model = loaded.model
        let tokenizer = loaded.tokenizer
        precondition(req.n == 1 && req.logprobs == nil && !req.promptLogprobs,
                     "TextGenerator produces one choice without logprobs; use Engine for more")
        guard !req.promptTokens.isEmpty else { throw GenerationError.emptyPrompt }
        guard req.promptTokens.count < contextLength else {
            throw GenerationError.promptTooLong(req.promptTokens.count, context: contextLength)
        }
        let memory = model.makeMemory(capacity: contextLength)
        let vocab = model.vocabularySize
        var sampler = Sampler(parameters: req.sampling, context: req.promptTokens)

        let t0 = Date()
        var logits: UnsafeMutablePointer<Float>?
        var i = 0
        while i < req.promptTokens.count {
            let chunk = Array(req.promptTokens[i..<min(i + workspace.maxTokens, req.promptTokens.count)])
            let last = i + chunk.count == req.promptTokens.count
            logits = try model.forward(tokens: chunk, memory: memory, workspace: workspace,
                                       logitRows: last ? (chunk.count - 1)..<chunk.count : 0..<0)
            i += chunk.count
        }
        let t1 = Date()

        var detok = StreamingDetokenizer(tokenizer: tokenizer)
        var stops = StopMatcher(stops: req.stopStrings)
        var text = ""
        var out: [Int32] = []
        var finish = FinishReason.length
        var cancelled = false
        var stopToken: Int32?
        while out.count < req.maxTokens {
            let token = sampler.sample(logits: logits!, count: vocab)
            if req.stopTokens.contains(token) || (!req.ignoreEOS && tokenizer.isEndOfGeneration(token)) {
                finish = .stop
                stopToken = token
                break
            }
            sampler.accept(token)
            out.append(token)
            let piece = stops.append(detok.append(token))
            if !piece.isEmpty {
                text += piece
                if !onText(piece) { cancelled = true; break }
            }
            if stops.stopped { finish = .stop; break }
            if out.count >= req.maxTokens || memory.count >= contextLength { break }
            logits = try model.forward(tokens: [token], memory: memory, workspace: workspace, logitRows: 0..<1)
        }
        if !cancelled && !stops.stopped {
            let rest = stops.append(detok.finish()) + stops.finish()
            if !rest.isEmpty {
                text += rest
                _ = onText(rest)
            }
        }
        let t2 = Date()
        return GenerationResult(text: text, tokens: out, finishReason: finish,
                                stopToken: stopToken, promptTokenCount: req.promptTokens.count,
                                promptSeconds: t1.timeIntervalSince(t0), generationSeconds: t2.timeIntervalSince(t1))
    }
}
