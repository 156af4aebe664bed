// A request as the engine thread tracks it, and each of its choices (sequences). A sequence counts tokens the
// way the scheduler thinks (vLLM v1's num_computed_tokens): `tokens` is everything known (prompt, output, later
// drafted tokens) and `computed` how many of them are in the sequence's memory. A step may compute any number of
// the rest — a prefill chunk, one decode, or k+1 verification rows (the pending token and a draft kept apart in
// `speculation.draft` until verification accepts part of it) are the same thing to the scheduler.

import Foundation

/// A submitted request (engine thread only, after submission).
final class RequestState {
    let id: Int
    let request: EngineRequest
    let onEvent: Engine.EventHandler
    var sequences: [SequenceState] = []
    var finishedChoices = 0
    var cachedTokens = 0
    let submittedAt = Date()
    var startedAt: Date?
    /// Ended (finished, cancelled or failed): later events are not sent.
    var done = false
    private var blockHashes: [UInt64]?

    /// The prefix-cache hashes of the prompt's full blocks (computed once).
    func promptBlockHashes(blockSize bs: Int) -> [UInt64] {
        if let h = blockHashes { return h }
        var out: [UInt64] = []
        let prompt = request.promptTokens
        var parent: UInt64 = 0
        for i in 0..<(prompt.count / bs) {
            parent = KVBlockPool.blockHash(parent: parent, tokens: prompt[(i * bs)..<((i + 1) * bs)])
            out.append(parent)
        }
        blockHashes = out
        return out
    }

    init(id: Int, request: EngineRequest, onEvent: @escaping Engine.EventHandler) {
        self.id = id
        self.request = request
        self.onEvent = onEvent
    }
}

/// One choice of a request: its tokens, KV memory, sampler and text state (engine thread only).
final class SequenceState {
    unowned let request: RequestState
    let choice: Int
    let memory: SequenceMemory
    /// The same memory when it is paged KV (prefix cache, copy-on-write forks, block accounting).
    let paged: PagedKVMemory?
    var sampler: Sampler
    var detokenizer: StreamingDetokenizer
    var stops: StopMatcher
    /// Prompt followed by the output so far.
    private(set) var tokens: [Int32]
    let promptCount: Int
    /// Leading tokens whose keys and values (or state) are in `memory`.
    var computed = 0
    /// The prompt (or, after a preemption, prompt and output) has been computed up to its last token and
    /// sampled from: what is left is decoding.
    var promptDone = false
    var finished = false
    /// The caller was told this sequence finished.
    var reported = false
    /// The end-of-generation or stop token that ended it, if one did (not part of the output).
    var stopToken: Int32?
    var lastTokenAt: Date?
    var promptLogprobs: [TokenLogprob?] = []
    /// Draft, acceptance rates and predicted-output cursor (used when the engine speculates).
    var speculation: SequenceSpeculation
    /// A private copy of a logits row when siblings share one (allocated on first use).
    private var scratch: UnsafeMutablePointer<Float>?

    var generatedCount: Int { tokens.count - promptCount }
    /// Tokens known but not yet computed.
    var pending: Int { tokens.count - computed }

    init(request: RequestState, choice: Int, memory: SequenceMemory, tokenizer: Tokenizer) {
        self.request = request
        self.choice = choice
        self.memory = memory
        paged = memory as? PagedKVMemory
        var params = request.request.sampling
        if choice > 0, let seed = params.seed { params.seed = seed &+ UInt64(choice) }
        sampler = Sampler(parameters: params, context: request.request.promptTokens)
        detokenizer = StreamingDetokenizer(tokenizer: tokenizer)
        stops = StopMatcher(stops: request.request.stopStrings)
        tokens = request.request.promptTokens
        promptCount = tokens.count
        speculation = SequenceSpeculation(enabled: request.request.speculative,
                                          prediction: request.request.prediction.map { PredictionCursor(tokens: $0) })
    }

    deinit { scratch?.deallocate() }

    func scratchRow(_ vocab: Int) -> UnsafeMutablePointer<Float> {
        if let p = scratch { return p }
        let p = UnsafeMutablePointer<Float>.allocate(capacity: vocab)
        scratch = p
        return p
    }

    func appendOutput(_ token: Int32) {
        tokens.append(token)
        speculation.prediction?.advance(past: token)
    }

    /// Makes room for `n` more tokens: KV blocks for paged memory, a capacity check for recurrent state.
    func reserve(_ n: Int) -> Bool {
        if let paged { return (try? paged.reserve(n)) != nil }
        return memory.count + n <= memory.capacity
    }

    /// Gives the memory back (KV blocks to the pool; a recurrent state starts over) and forgets what was computed.
    func release() {
        if let paged { paged.releaseAll() } else { _ = memory.rollback(to: 0) }
        speculation.draftMemory?.releaseAll()
        speculation.draftTokens = []
        computed = 0
    }

    /// A sibling choice continuing from this sequence's current state (same tokens, shared or copied memory).
    func fork(choice: Int, tokenizer: Tokenizer) -> SequenceState {
        let mem: SequenceMemory
        if let paged { mem = paged.fork() } else if let state = memory as? MambaState { mem = state.duplicate() } else {
            preconditionFailure("this memory cannot be forked")
        }
        let f = SequenceState(request: request, choice: choice, memory: mem, tokenizer: tokenizer)
        f.tokens = tokens
        f.computed = computed
        f.promptDone = promptDone
        f.speculation.prediction = speculation.prediction
        return f
    }

    /// Logprobs of the prompt's next tokens from the rows of one prefill chunk that started at `start`.
    func collectPromptLogprobs(logits: UnsafeMutablePointer<Float>, rows: Range<Int>, start: Int, vocab: Int) {
        if promptLogprobs.isEmpty { promptLogprobs.append(nil) }
        let prompt = request.request.promptTokens
        for r in rows {
            let next = start + r + 1
            guard next < prompt.count else { continue }
            let top = request.request.logprobs ?? 0
            let row = logits + (r - rows.lowerBound) * vocab
            var lp = TokenLogprobs.compute(row, vocab: vocab, top: top)
            lp.token = prompt[next]
            lp.logprob = TokenLogprobs.logprob(row, vocab: vocab, token: prompt[next], reference: lp)
            promptLogprobs.append(lp)
        }
    }
}
