// Generation for one sequence, as `tern generate` and the tests use it: a request submitted to an Engine of its
// own (one decode loop in the project: the engine's), with its events read back on the caller's thread, so the
// text callback runs there and may cancel. KV blocks are f32, so the numbers equal an unpaged forward pass.

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
    /// Speculative tokens drafted and accepted (0 without speculation).
    public var draftedTokens = 0
    public var acceptedDraftTokens = 0
}

public enum GenerationError: Error, CustomStringConvertible {
    case emptyPrompt
    case promptTooLong(Int, context: Int)
    case failed(String)
    public var description: String {
        switch self {
        case .emptyPrompt: return "the prompt is empty"
        case .promptTooLong(let n, let c): return "the prompt has \(n) tokens; the context holds \(c)"
        case .failed(let m): return m
        }
    }
}

public final class TextGenerator {
    public let loaded: LoadedModel
    public let contextLength: Int
    private let engine: Engine

    /// Speculation is off unless asked for: its verification rows are computed in a batch, so greedy ties could
    /// break differently than in a plain decode.
    /// Without a draft model the engine is sized from the model itself, so only a model it cannot serve at all
    /// could fail here.
    public convenience init(loaded: LoadedModel, contextLength: Int, threads: Int, batchTokens: Int = 256,
                            speculation: SpeculationConfiguration = SpeculationConfiguration(mode: .off)) {
        try! self.init(loaded: loaded, contextLength: contextLength, threads: threads, batchTokens: batchTokens,
                       speculation: speculation, draft: nil)
    }

    /// `draft`: a draft model for speculative decoding; fails when it cannot draft for `loaded`.
    public init(loaded: LoadedModel, contextLength: Int, threads: Int, batchTokens: Int = 256,
                speculation: SpeculationConfiguration, draft: LoadedModel?) throws {
        self.loaded = loaded
        self.contextLength = contextLength
        var config = EngineConfiguration(threads: threads, contextLength: contextLength, kvCacheBytes: 0)
        config.kvStorage = .f32
        config.maxBatchTokens = max(1, batchTokens)
        config.maxRunning = 1
        config.prefixCaching = false
        config.speculation = speculation
        if let llama = loaded.llama {
            // The whole context in f32 blocks, one spare block, and room for drafts and the step-cost calibration.
            let extra = speculation.mode == .off ? 0 : (8 * (speculation.maxDraft + 1)) / config.blockSize + 2
            let blocks = (contextLength + config.blockSize - 1) / config.blockSize + 1 + extra
            config.kvCacheBytes = blocks * config.blockSize * llama.config.layerCount * 2 * llama.kvDim * 4
        }
        engine = try Engine(loaded: loaded, configuration: config, draft: draft)
        engine.start()
    }

    deinit { engine.stop() }

    /// Runs the request; `onText` receives final text pieces and returns false to cancel.
    public func generate(_ req: GenerationRequest, onText: (String) -> Bool = { _ in true }) throws -> GenerationResult {
        precondition(req.n == 1 && req.logprobs == nil && !req.promptLogprobs,
                     "TextGenerator produces one choice without logprobs; use Engine for more")
        guard !req.promptTokens.isEmpty else { throw GenerationError.emptyPrompt }
        guard req.promptTokens.count < contextLength else {
            throw GenerationError.promptTooLong(req.promptTokens.count, context: contextLength)
        }
        let mailbox = GenerationMailbox()
        let t0 = Date()
        let ticket = try engine.submit(req) { mailbox.post($0) }
        var text = ""
        var tokens: [Int32] = []
        var finish = FinishReason.length
        var stopToken: Int32?
        var firstTokenAt: Date?
        var cancelled = false
        var drafted = 0, accepted = 0
        loop: while true {
            for event in mailbox.take() {
                switch event {
                case .started, .promptLogprobs:
                    break
                case .token(_, let token, let piece, _):
                    if firstTokenAt == nil { firstTokenAt = Date() }
                    tokens.append(token)
                    text += piece
                    if !piece.isEmpty && !cancelled && !onText(piece) {
                        cancelled = true
                        ticket.cancel()
                        break loop
                    }
                case .finished(_, let reason, let piece):
                    if firstTokenAt == nil { firstTokenAt = Date() }
                    finish = reason
                    text += piece
                    if !piece.isEmpty { _ = onText(piece) }
                case .completed(let usage):
                    stopToken = usage.stopTokens.first ?? nil
                    drafted = usage.draftedTokens
                    accepted = usage.acceptedDraftTokens
                    break loop
                case .failed(let message, _):
                    throw GenerationError.failed(message)
                }
            }
        }
        let t2 = Date()
        let t1 = firstTokenAt ?? t2
        return GenerationResult(text: text, tokens: tokens, finishReason: finish,
                                stopToken: stopToken, promptTokenCount: req.promptTokens.count,
                                promptSeconds: t1.timeIntervalSince(t0), generationSeconds: t2.timeIntervalSince(t1),
                                draftedTokens: drafted, acceptedDraftTokens: accepted)
    }
}

/// Engine events for a caller's thread: the engine thread posts, the caller takes them in order.
final class GenerationMailbox: @unchecked Sendable {
    // `events` is guarded by `condition`.
    private let condition = NSCondition()
    private var events: [EngineEvent] = []

    func post(_ e: EngineEvent) {
        condition.lock()
        events.append(e)
        condition.signal()
        condition.unlock()
    }

    /// Waits until at least one event is there and takes all of them.
    func take() -> [EngineEvent] {
        condition.lock()
        defer { condition.unlock() }
        while events.isEmpty { condition.wait() }
        let out = events
        events.removeAll()
        return out
    }
}
