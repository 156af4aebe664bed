// The engine: the only owner of model state. One dedicated thread runs the loop of DESIGN.md §1 — take new
// requests, decide the step's batch under a token budget (every running sequence decodes one token; prompt
// prefills are chunked into what is left), run one forward pass for the whole batch, sample, emit events,
// free what finished or was cancelled. KV memory is paged (KVBlockPool); prompts reuse cached prefix blocks;
// when blocks run out the most recently admitted sequence is preempted and later recomputed.
//
// Threading: `inbox`, `cancelled`, `metrics` and `stopping` are shared with callers and guarded by `lock`;
// everything else (sequences, the pool, the model workspace) belongs to the engine thread alone.

import Foundation

public final class Engine: @unchecked Sendable {
    public let loaded: LoadedModel
    public let configuration: EngineConfiguration
    /// The paged KV store of transformer models; nil for recurrent models (Mamba), whose per-sequence state
    /// has a fixed size and is allocated with the sequence.
    public let kvPool: KVBlockPool?
    /// The KV pool (transformers only; tests and metrics).
    public var pool: KVBlockPool { kvPool! }

    private let lock = NSCondition()
    private var inbox: [RequestState] = []
    private var cancelledIDs: Set<Int> = []
    private var stopping = false
    private var sharedMetrics = EngineMetrics()
    private var nextID = 0
    private var waitingCount = 0
    private var thread: Thread?
    private let finishedSignal = NSCondition()

    // Engine-thread state.
    private let workspace: ModelWorkspace
    private var waiting: [RequestState] = []
    private var running: [SequenceState] = []
    private var preempted: [SequenceState] = []
    private var liveRequests: [Int: RequestState] = [:]
    private var admissionCounter = 0
    private var local = EngineMetrics()
    /// The batch being assembled in the current step.
    private var batch: [(seq: SequenceState, tokens: [Int32], sample: Bool)] = []

    public typealias EventHandler = @Sendable (EngineEvent) -> Void

    public init(loaded: LoadedModel, configuration: EngineConfiguration) throws {
        self.loaded = loaded
        self.configuration = configuration
        if let llama = loaded.llama {
            if configuration.kvStorage == .q8_0 && llama.config.headDim % 32 != 0 {
                throw CheckpointError(file: loaded.checkpoint.path, "q8_0 KV storage needs a head dimension that is a multiple of 32 (this model's is \(llama.config.headDim))")
            }
            kvPool = try KVBlockPool(layers: llama.config.layerCount, rowWidth: llama.kvDim, blockSize: configuration.blockSize,
                                     storage: configuration.kvStorage, bytes: configuration.kvCacheBytes)
        } else {
            kvPool = nil
        }
        workspace = loaded.model.makeWorkspace(maxTokens: configuration.maxBatchTokens, maxContext: configuration.contextLength,
                                               pool: WorkerPool(threads: configuration.threads))
        local.kvBlocksTotal = kvPool?.blockCount ?? 0
        sharedMetrics = local
    }

    public func start() {
        let t = Thread { [self] in self.loop() }
        t.name = "tern-engine"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Stops the loop after the current step; requests still running get `.failed`.
    public func stop() {
        lock.lock()
        stopping = true
        lock.signal()
        lock.unlock()
    }

    public struct Ticket: Sendable {
        public let id: Int
        let engine: Engine
        /// Ends the request at the next step and frees its memory; no further events are sent.
        public func cancel() { engine.cancel(id) }
    }

    /// Queues a request; events arrive on the engine thread, so the handler must return quickly.
    public func submit(_ request: EngineRequest, onEvent: @escaping EventHandler) throws -> Ticket {
        guard !request.promptTokens.isEmpty else { throw EngineSubmitError.emptyPrompt }
        guard request.promptTokens.count < configuration.contextLength else {
            throw EngineSubmitError.promptTooLong(tokens: request.promptTokens.count, context: configuration.contextLength)
        }
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { throw EngineSubmitError.stopped }
        guard waitingCount < configuration.maxQueue else { throw EngineSubmitError.queueFull(waiting: waitingCount) }
        nextID += 1
        let state = RequestState(id: nextID, request: request, onEvent: onEvent)
        inbox.append(state)
        waitingCount += 1
        sharedMetrics.requestsWaiting = waitingCount
        lock.signal()
        return Ticket(id: state.id, engine: self)
    }

    func cancel(_ id: Int) {
        lock.lock()
        cancelledIDs.insert(id)
        lock.signal()
        lock.unlock()
    }

    public func metrics() -> EngineMetrics {
        lock.lock()
        defer { lock.unlock() }
        return sharedMetrics
    }

    /// Blocks until no request is queued or running (for graceful shutdown and tests).
    public func waitUntilIdle(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let m = metrics()
            if m.requestsRunning == 0 && m.requestsWaiting == 0 { return true }
            Thread.sleep(forTimeInterval: 0.01)
        }
        return false
    }

    // MARK: engine thread

    private func loop() {
        while true {
            lock.lock()
            while inbox.isEmpty && cancelledIDs.isEmpty && !stopping && waiting.isEmpty && running.isEmpty && preempted.isEmpty {
                lock.wait()
            }
            let incoming = inbox
            inbox.removeAll()
            let cancels = cancelledIDs
            cancelledIDs.removeAll()
            let stop = stopping
            lock.unlock()

            waiting.append(contentsOf: incoming)
            for r in incoming { liveRequests[r.id] = r }
            for id in cancels { if let r = liveRequests[id] { finishRequest(r, notify: false) } }
            if stop {
                for r in Array(liveRequests.values) {
                    r.onEvent(.failed("the server is shutting down"))
                    finishRequest(r, notify: false)
                }
                publishMetrics()
                return
            }
            step()
            publishMetrics()
        }
    }

    private func publishMetrics() {
        local.requestsRunning = Set(running.map { $0.request.id }).count + Set(preempted.map { $0.request.id }).count
        if let pool = kvPool {
            local.kvBlocksUsed = pool.usedBlocks
            local.prefixCacheQueries = pool.prefixQueries
            local.prefixCacheHits = pool.prefixHits
        }
        lock.lock()
        local.requestsWaiting = waitingCount
        sharedMetrics = local
        lock.unlock()
    }

    private func step() {
        var budget = configuration.maxBatchTokens
        batch.removeAll(keepingCapacity: true)
        let vocab = loaded.model.vocabularySize

        // 1. Every decoding sequence advances one token; make room, preempting the youngest when full.
        for s in running where !s.finished && s.pendingPrefill.isEmpty && budget > 0 {
            guard running.contains(where: { $0 === s }), ensureBlocks(for: s, tokens: 1) else { continue }
            batch.append((s, [s.generated.last!], true))
            budget -= 1
        }
        // 2. Continue chunked prefills of running sequences, then recompute preempted ones, then admit new.
        for s in running where !s.pendingPrefill.isEmpty && budget > 0 {
            let n = min(budget, s.pendingPrefill.count)
            if !s.reserve(n) { continue }
            let chunk = Array(s.pendingPrefill.prefix(n))
            batch.append((s, chunk, n == s.pendingPrefill.count))
            budget -= n
        }
        while budget > 0, let s = preempted.first, running.count < configuration.maxRunning {
            guard admit(sequence: s, budget: &budget) else { break }
            preempted.removeFirst()
        }
        while budget > 0, running.count < configuration.maxRunning, let r = waiting.first {
            let s = SequenceState(request: r, choice: 0, memory: makeMemory(), tokenizer: loaded.tokenizer)
            if configuration.prefixCaching && !r.request.promptLogprobs, let paged = s.paged {
                // Keep at least one prompt token to compute: its logits start the generation.
                let cached = paged.attachCachedPrefix(r.request.promptTokens, limit: r.request.promptTokens.count - 1)
                s.pendingPrefill = Array(r.request.promptTokens[cached...])
                r.cachedTokens = cached
            }
            guard admit(sequence: s, budget: &budget) else {
                s.release()
                break
            }
            waiting.removeFirst()
            lock.lock()
            waitingCount -= 1
            lock.unlock()
            r.sequences = [s]
            r.startedAt = Date()
            local.cachedPromptTokens += r.cachedTokens
            local.promptTokens += r.request.promptTokens.count
            r.onEvent(.started(cachedTokens: r.cachedTokens))
        }
        guard !batch.isEmpty else {
            if running.isEmpty, let s = preempted.first {
                // Cannot be re-admitted even into an empty pool (it grew past the KV store): end it.
                preempted.removeFirst()
                finishSequence(s, reason: .length, now: Date())
                return
            }
            if running.isEmpty && !waiting.isEmpty {
                // Nothing fits even in an empty pool: the prompt is larger than the KV store.
                let r = waiting.removeFirst()
                lock.lock(); waitingCount -= 1; lock.unlock()
                r.onEvent(.failed("the prompt needs more KV cache than the server has (\((kvPool?.blockCount ?? 0) * (kvPool?.blockSize ?? 0)) tokens)"))
                liveRequests[r.id] = nil
            }
            return
        }

        // 3. One forward pass for the whole batch.
        var items: [ForwardItem] = []
        items.reserveCapacity(batch.count)
        for b in batch {
            let wantAll = b.seq.request.request.promptLogprobs && b.seq.choice == 0 && !b.seq.promptDone
            let rows = wantAll ? 0..<b.tokens.count : (b.sample ? (b.tokens.count - 1)..<b.tokens.count : 0..<0)
            items.append(ForwardItem(tokens: b.tokens, memory: b.seq.memory, logitRows: rows))
        }
        let logits: UnsafeMutablePointer<Float>
        do {
            logits = try loaded.model.forward(items, workspace: workspace)
        } catch {
            for b in batch { b.seq.request.onEvent(.failed("forward pass failed: \(error)")); finishRequest(b.seq.request, notify: false) }
            return
        }
        local.steps += 1
        local.batchSize.observe(Double(batch.count))

        // 4. Sample and report.
        var row = 0
        let now = Date()
        for (k, b) in batch.enumerated() {
            let s = b.seq
            s.paged?.appendTokens(b.tokens)
            let rows = items[k].logitRows
            if rows.count > 1 || (rows.count == 1 && !b.sample) {
                s.collectPromptLogprobs(logits: logits + row * vocab, rows: rows, chunk: b.tokens, vocab: vocab)
            }
            if !s.promptDone { s.pendingPrefill.removeFirst(b.tokens.count) }
            row += rows.count
            guard b.sample else { continue }
            if !s.promptDone {
                s.promptDone = true
                if s.request.request.promptLogprobs && s.choice == 0 {
                    s.request.onEvent(.promptLogprobs(s.promptLogprobs))
                }
            }
            let rowLogits = logits + (row - 1) * vocab
            if s.request.request.maxTokens == 0 {
                finishSequence(s, reason: .length, now: now)
                continue
            }
            // n > 1: the other choices fork here, sharing the prompt's blocks, and sample from the same logits.
            if s.choice == 0 && s.request.sequences.count == 1 && s.request.request.n > 1 && s.generated.isEmpty {
                for c in 1..<s.request.request.n {
                    let f = SequenceState(request: s.request, choice: c, memory: s.forkMemory(), tokenizer: loaded.tokenizer)
                    f.promptDone = true
                    f.pendingPrefill = []
                    f.admission = s.admission
                    s.request.sequences.append(f)
                    running.append(f)
                    sample(f, logits: rowLogits, vocab: vocab, copy: true, now: now)
                }
            }
            sample(s, logits: rowLogits, vocab: vocab, copy: false, now: now)
        }
        running.removeAll { $0.finished }
    }

    /// Puts a new or preempted sequence into the batch with its first prefill chunk, if blocks allow.
    private func admit(sequence s: SequenceState, budget: inout Int) -> Bool {
        // Admit only when the whole remaining prompt fits in free blocks, so admission cannot thrash.
        if let paged = s.paged, let pool = kvPool {
            guard paged.blocksNeeded(for: s.pendingPrefill.count + 1) <= pool.availableBlocks else { return false }
        }
        let n = min(budget, s.pendingPrefill.count)
        guard s.reserve(n) else { return false }
        admissionCounter += 1
        s.admission = admissionCounter
        running.append(s)
        batch.append((s, Array(s.pendingPrefill.prefix(n)), n == s.pendingPrefill.count))
        budget -= n
        return true
    }

    /// Reserves KV room for `tokens` more tokens of `s`, preempting the most recently admitted sequences when
    /// the pool is exhausted. Returns false if `s` itself had to be preempted.
    private func ensureBlocks(for s: SequenceState, tokens: Int) -> Bool {
        while true {
            if s.memory.count + tokens > s.memory.capacity {
                finishSequence(s, reason: .length, now: Date())
                running.removeAll { $0 === s }
                return false
            }
            if s.reserve(tokens) { return true }
            guard let victim = running.filter({ !$0.finished }).max(by: { $0.admission < $1.admission }) else { return false }
            if victim === s && !running.contains(where: { $0 !== s && !$0.finished }) {
                // Alone and still out of blocks: the KV store is smaller than this sequence; recomputing it
                // would only run out again. It ends here, as if its context were full.
                finishSequence(s, reason: .length, now: Date())
                running.removeAll { $0 === s }
                return false
            }
            preempt(victim)
            // A victim already placed in this step's batch must leave it: its blocks are gone.
            batch.removeAll { $0.seq === victim }
            if victim === s { return false }
        }
    }

    /// Fresh per-sequence memory: paged KV for transformers, a recurrent state slot otherwise.
    private func makeMemory() -> SequenceMemory {
        if let pool = kvPool { return PagedKVMemory(pool: pool, capacity: configuration.contextLength) }
        return loaded.model.makeMemory(capacity: configuration.contextLength)
    }

    private func preempt(_ s: SequenceState) {
        s.release()
        // Recompute from scratch later: the prompt plus everything generated (the last token not yet fed).
        s.pendingPrefill = s.request.request.promptTokens + s.generated
        s.promptDone = false
        running.removeAll { $0 === s }
        preempted.append(s)
        local.preemptions += 1
    }

    private func sample(_ s: SequenceState, logits: UnsafeMutablePointer<Float>, vocab: Int, copy: Bool, now: Date) {
        let r = s.request
        var row = logits
        if copy || r.request.logprobs != nil {
            // Siblings share the row, and logprobs need it unpenalised: sample from a private copy.
            row = s.scratchRow(vocab)
            row.update(from: logits, count: vocab)
        }
        var logprob = r.request.logprobs.map { TokenLogprobs.compute(logits, vocab: vocab, top: $0) }
        let token = s.sampler.sample(logits: row, count: vocab)
        if var lp = logprob {
            // `logits` is untouched when logprobs are on (the sampler worked on the copy).
            lp.logprob = TokenLogprobs.logprob(logits, vocab: vocab, token: token, reference: lp)
            lp.token = token
            logprob = lp
        }
        if r.request.stopTokens.contains(token) || (!r.request.ignoreEOS && loaded.tokenizer.isEndOfGeneration(token)) {
            finishSequence(s, reason: .stop, now: now)
            return
        }
        s.sampler.accept(token)
        s.generated.append(token)
        local.generatedTokens += 1
        if let last = s.lastTokenAt {
            local.interTokenLatency.observe(now.timeIntervalSince(last))
        } else if s.choice == 0 {
            local.timeToFirstToken.observe(now.timeIntervalSince(r.submittedAt))
        }
        s.lastTokenAt = now
        let text = s.stops.append(s.detokenizer.append(token))
        r.onEvent(.token(choice: s.choice, token: token, text: text, logprob: logprob))
        if s.stops.stopped {
            finishSequence(s, reason: .stop, now: now)
        } else if s.generated.count >= r.request.maxTokens || s.memory.count + 1 >= s.memory.capacity {
            finishSequence(s, reason: .length, now: now)
        }
    }

    private func finishSequence(_ s: SequenceState, reason: FinishReason, now: Date) {
        guard !s.finished else { return }
        s.finished = true
        let tail = s.stops.stopped ? "" : s.stops.append(s.detokenizer.finish()) + s.stops.finish()
        s.release()
        let r = s.request
        r.onEvent(.finished(choice: s.choice, reason: reason, text: tail))
        r.finishedChoices += 1
        if r.finishedChoices == r.request.n || (r.request.maxTokens == 0 && s.choice == 0) {
            let completion = r.sequences.reduce(0) { $0 + $1.generated.count }
            r.onEvent(.completed(EngineUsage(promptTokens: r.request.promptTokens.count, cachedPromptTokens: r.cachedTokens,
                                             completionTokens: completion)))
            local.requestLatency.observe(now.timeIntervalSince(r.submittedAt))
            local.requestsFinished += 1
            liveRequests[r.id] = nil
            for other in r.sequences where !other.finished { other.finished = true; other.release() }
        }
    }

    /// Drops a request wherever it is (cancel, shutdown, failure), returning its blocks.
    private func finishRequest(_ r: RequestState, notify: Bool) {
        if let i = waiting.firstIndex(where: { $0 === r }) {
            waiting.remove(at: i)
            lock.lock(); waitingCount -= 1; lock.unlock()
        }
        for s in r.sequences {
            s.finished = true
            s.release()
        }
        running.removeAll { $0.request === r }
        preempted.removeAll { $0.request === r }
        liveRequests[r.id] = nil
    }
}

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

    init(id: Int, request: EngineRequest, onEvent: @escaping Engine.EventHandler) {
        self.id = id
        self.request = request
        self.onEvent = onEvent
    }
}

/// One choice of a request: its KV memory, sampler and text state (engine thread only).
final class SequenceState {
    unowned let request: RequestState
    let choice: Int
    private(set) var memory: SequenceMemory
    /// The same memory when it is paged KV (prefix cache, copy-on-write forks, block accounting).
    var paged: PagedKVMemory? { memory as? PagedKVMemory }
    var sampler: Sampler
    var detokenizer: StreamingDetokenizer
    var stops: StopMatcher
    var generated: [Int32] = []
    /// Tokens still to feed before sampling (the prompt, or prompt + output after a preemption).
    var pendingPrefill: [Int32]
    var promptDone = false
    var finished = false
    var admission = 0
    var lastTokenAt: Date?
    var promptLogprobs: [TokenLogprob?] = []
    /// A private copy of a logits row when siblings share one (allocated on first use).
    private var scratch: UnsafeMutablePointer<Float>?

    func scratchRow(_ vocab: Int) -> UnsafeMutablePointer<Float> {
        if let p = scratch { return p }
        let p = UnsafeMutablePointer<Float>.allocate(capacity: vocab)
        scratch = p
        return p
    }

    deinit { scratch?.deallocate() }

    init(request: RequestState, choice: Int, memory: SequenceMemory, tokenizer: Tokenizer) {
        self.request = request
        self.choice = choice
        self.memory = memory
        var params = request.request.sampling
        if choice > 0, let seed = params.seed { params.seed = seed &+ UInt64(choice) }
        sampler = Sampler(parameters: params, context: request.request.promptTokens)
        detokenizer = StreamingDetokenizer(tokenizer: tokenizer)
        stops = StopMatcher(stops: request.request.stopStrings)
        pendingPrefill = request.request.promptTokens
    }

    /// Makes room for `n` more tokens: KV blocks for paged memory, a capacity check for recurrent state.
    func reserve(_ n: Int) -> Bool {
        if let paged { return (try? paged.reserve(n)) != nil }
        return memory.count + n <= memory.capacity
    }

    /// Gives the memory back: KV blocks to the pool; a recurrent state starts over.
    func release() {
        if let paged { paged.releaseAll() } else { _ = memory.rollback(to: 0) }
    }

    /// Memory for a sibling choice that continues from this sequence's current state.
    func forkMemory() -> SequenceMemory {
        if let paged { return paged.fork() }
        if let state = memory as? MambaState { return state.duplicate() }
        preconditionFailure("this memory cannot be forked")
    }

    /// Logprobs of the prompt's next tokens from the rows of one prefill chunk.
    func collectPromptLogprobs(logits: UnsafeMutablePointer<Float>, rows: Range<Int>, chunk: [Int32], vocab: Int) {
        if promptLogprobs.isEmpty { promptLogprobs.append(nil) }
        let prompt = request.request.promptTokens
        for r in rows {
            let position = memory.count - chunk.count + r   // absolute position of this row
            let next = position + 1
            guard next < prompt.count else { continue }
            let top = request.request.logprobs ?? 0
            var lp = TokenLogprobs.compute(logits + (r - rows.lowerBound) * vocab, vocab: vocab, top: top)
            lp.token = prompt[next]
            lp.logprob = TokenLogprobs.logprob(logits + (r - rows.lowerBound) * vocab, vocab: vocab, token: prompt[next], reference: lp)
            promptLogprobs.append(lp)
        }
    }
}

/// Log-softmax over a logits row.
enum TokenLogprobs {
    /// The k most likely tokens with their logprobs; `logprob` holds the log-sum-exp until a token is chosen.
    /// The row's largest logit and log Σ exp(logit − largest), summed in Double: the log-sum-exp is their sum.
    static func logSumExpParts(_ logits: UnsafePointer<Float>, vocab: Int) -> (max: Float, logSum: Double) {
        var maxL = -Float.infinity
        for i in 0..<vocab where logits[i] > maxL { maxL = logits[i] }
        var sum: Double = 0
        for i in 0..<vocab { sum += Double(expf(logits[i] - maxL)) }
        return (maxL, log(sum))
    }

    static func compute(_ logits: UnsafePointer<Float>, vocab: Int, top k: Int) -> TokenLogprob {
        let (maxL, logSum) = logSumExpParts(logits, vocab: vocab)
        let lse = maxL + Float(logSum)
        var best: [(token: Int32, logprob: Float)] = []
        if k > 0 {
            for i in 0..<vocab {
                let l = logits[i]
                if best.count < k || l - lse > best.last!.logprob {
                    let entry = (Int32(i), l - lse)
                    let at = best.firstIndex { $0.logprob < entry.1 } ?? best.count
                    best.insert(entry, at: at)
                    if best.count > k { best.removeLast() }
                }
            }
        }
        return TokenLogprob(token: -1, logprob: lse, top: best)
    }

    /// Logprob of `token`, given `reference.logprob` = the row's log-sum-exp from `compute`.
    static func logprob(_ logits: UnsafePointer<Float>, vocab: Int, token: Int32, reference: TokenLogprob) -> Float {
        logits[Int(token)] - reference.logprob
    }
}
