// The engine: the only owner of model state. One dedicated thread runs the loop (docs/ARCHITECTURE.md) — take
// new requests, let the Scheduler decide the step (tokens per sequence under a budget), run one forward pass for
// the whole batch, sample through each sequence's pipeline, emit events, free what finished or was cancelled.
// Events are handed to the caller's handler on the engine thread, so handlers only enqueue (the server formats
// and writes on its own queues). KV memory is paged (KVBlockPool) in the model's cache groups.
//
// Threading: `inbox`, `cancelledIDs`, `sharedMetrics`, `waitingCount` and `stopping` are shared with callers and
// guarded by `lock`; everything else (the scheduler, sequences, the pool, the model workspace) belongs to the
// engine thread alone.

import CKernels
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
    private let scheduler: Scheduler
    private var liveRequests: [Int: RequestState] = [:]
    private var local = EngineMetrics()
    /// Seconds per step as measured, for sizing prefill chunks under the decoding step target.
    private var stepTime = StepTimeEstimate()
    /// The most rows a pass has written into the workspace since its pages were last given back.
    private var workspaceRowsTouched = 0
    /// Drafting policy and statistics; nil when speculation is off or the model cannot roll back (Mamba).
    private let speculator: SpeculativeDecoder?
    /// Signalled when the loop has returned (stop joins on it).
    private let exited = DispatchSemaphore(value: 0)
    private var started = false

    public typealias EventHandler = @Sendable (EngineEvent) -> Void

    /// `draft`: a draft model for speculative decoding (same vocabulary; checked here).
    public init(loaded: LoadedModel, configuration: EngineConfiguration, draft: LoadedModel? = nil) throws {
        self.loaded = loaded
        self.configuration = configuration
        if let llama = loaded.llama {
            if configuration.kvStorage == .q8_0 && llama.config.headDim % 32 != 0 {
                throw CheckpointError(file: loaded.checkpoint.path, "q8_0 KV storage needs a head dimension that is a multiple of 32 (this model's is \(llama.config.headDim))")
            }
            kvPool = try KVBlockPool(layers: llama.cacheLayout.layersPerBlock, rowWidth: llama.kvDim, blockSize: configuration.blockSize,
                                     storage: configuration.kvStorage, bytes: configuration.kvCacheBytes,
                                     kvHeads: llama.config.kvHeadCount)
            if let cap = configuration.prefixCacheMaxBytes { kvPool?.maxIdleCachedBlocks = max(0, cap / kvPool!.blockBytes) }
        } else {
            kvPool = nil
        }
        workspace = loaded.model.makeWorkspace(maxTokens: configuration.maxBatchTokens, maxContext: configuration.contextLength,
                                               pool: WorkerPool(threads: configuration.threads))
        workspace.relayEnabled = configuration.relay && loaded.llama != nil
        let speculates = configuration.speculation.mode != .off && configuration.speculation.maxDraft > 0 && kvPool != nil
        var draftRunner: DraftModelRunner?
        if let draft {
            guard let target = loaded.llama else {
                throw CheckpointError(file: loaded.checkpoint.path, "a draft model needs a transformer to draft for; '\(loaded.model.architecture)' keeps a recurrent state, which cannot roll back rejected tokens")
            }
            // The draft's KV store in proportion to its per-token KV size (at least 16 MiB; mapped lazily).
            let ratio = draft.llama.map { Double($0.config.layerCount * $0.kvDim) / Double(target.config.layerCount * target.kvDim) } ?? 1
            draftRunner = try DraftModelRunner(draft: draft, target: loaded, contextLength: configuration.contextLength,
                                               kvBytes: max(16 << 20, Int(Double(configuration.kvCacheBytes) * ratio)),
                                               maxBatchTokens: configuration.maxBatchTokens, workers: workspace.pool)
        }
        speculator = speculates ? SpeculativeDecoder(configuration: configuration.speculation, draftModel: draftRunner) : nil
        let pool = kvPool, layout = loaded.llama?.cacheLayout, model = loaded.model, context = configuration.contextLength
        let slack = speculates ? configuration.speculation.maxDraft : 0
        let evicts = Engine.canEvict(loaded), serverEviction = configuration.eviction, publishes = configuration.prefixCaching
        let heads = loaded.llama?.config.kvHeadCount ?? 0, headDim = loaded.llama?.config.headDim ?? 0
        scheduler = Scheduler(limits: .init(maxBatchTokens: configuration.maxBatchTokens, maxRunning: configuration.maxRunning,
                                            prefixCaching: configuration.prefixCaching),
                              pool: kvPool, tokenizer: loaded.tokenizer) { request in
            if let pool {
                let memory = PagedKVMemory(pool: pool, capacity: context, layout: layout)
                memory.windowSlack = slack
                memory.publishesBlocks = publishes
                if evicts {
                    memory.enableEviction(request.eviction ?? serverEviction, kvHeads: heads, headDim: headDim,
                                          longest: request.promptTokens.count + request.maxTokens)
                }
                return memory
            }
            return model.makeMemory(capacity: context)
        }
        local.kvBlocksTotal = kvPool?.blockCount ?? 0
        sharedMetrics = local
    }

    /// Whether KV eviction applies to this model: transformers whose layers all attend fully (one cache group).
    /// Mamba keeps a fixed-size state; a model with sliding-window layers (Gemma 3) keeps its fixed window there
    /// and everything in its global layers.
    public static func canEvict(_ loaded: LoadedModel) -> Bool {
        guard let llama = loaded.llama else { return false }
        return llama.cacheLayout.groups.count == 1 && llama.cacheLayout.groups[0].window == nil
    }

    public func start() {
        lock.lock()
        defer { lock.unlock() }
        guard !started else { return }
        started = true
        // The thread holds the engine until the loop returns; after `stop` the engine can be freed.
        let t = Thread { [self] in
            tern_set_thread_name("tern-engine")
            self.loop()
            self.exited.signal()
        }
        t.name = "tern-engine"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Stops the loop after the current step and waits for the engine thread to end; requests still queued or
    /// running get `.failed`. Safe to call more than once.
    public func stop() {
        lock.lock()
        let wasStopping = stopping
        stopping = true
        let join = started && !wasStopping
        lock.signal()
        lock.unlock()
        if join {
            exited.wait()
            // The Thread keeps its closure, which holds the engine: let go of it so the engine can be freed.
            lock.lock()
            thread = nil
            lock.unlock()
        }
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
            while inbox.isEmpty && cancelledIDs.isEmpty && !stopping && scheduler.isIdle {
                // Idle, but free blocks are still resident: wake when the oldest is due to be given back.
                guard let due = kvReleaseDue() else { lock.wait(); continue }
                let wait = Double(Int64(due) - Int64(DispatchTime.now().uptimeNanoseconds)) / 1e9
                if wait > 0 && lock.wait(until: Date().addingTimeInterval(wait)) { continue }
                lock.unlock()
                if releaseIdleKVMemory() { publishMetrics() }
                lock.lock()
            }
            let incoming = inbox
            inbox.removeAll()
            let cancels = cancelledIDs
            cancelledIDs.removeAll()
            let stop = stopping
            lock.unlock()

            for r in incoming {
                liveRequests[r.id] = r
                scheduler.enqueue(r)
            }
            for id in cancels { if let r = liveRequests[id] { drop(r) } }
            if stop {
                for r in Array(liveRequests.values) {
                    r.onEvent(.failed("the server is shutting down", .unavailable))
                    drop(r)
                }
                publishMetrics()
                return
            }
            step()
            _ = releaseIdleKVMemory()
            publishMetrics()
        }
    }

    /// The configured release delay in nanoseconds (nil: free blocks keep their pages).
    private var kvReleaseDelayNanos: UInt64? { configuration.kvReleaseDelay.map { UInt64(max(0, $0) * 1e9) } }

    /// When the KV block free longest (and still resident) is due to be given back (monotonic nanoseconds).
    private func kvReleaseDue() -> UInt64? {
        guard let d = kvReleaseDelayNanos, let since = kvPool?.oldestResidentFreeTime else { return nil }
        return since + d
    }

    /// Gives back the pages of KV blocks free for longer than the configured delay; true if any were.
    private func releaseIdleKVMemory() -> Bool {
        guard let d = kvReleaseDelayNanos, let pool = kvPool else { return false }
        let now = DispatchTime.now().uptimeNanoseconds
        return now >= d && pool.releaseIdleMemory(freedBefore: now - d) > 0
    }

    private func publishMetrics() {
        var ids = Set<Int>()
        for s in scheduler.running where !s.finished { ids.insert(s.request.id) }
        for s in scheduler.preempted { ids.insert(s.request.id) }
        local.requestsRunning = ids.count
        if let spec = speculator { local.speculation = spec.metrics }
        local.kvKeptTokens = [:]
        for s in scheduler.running where !s.finished {
            if let paged = s.paged, paged.tables.count == 1 {
                local.kvKeptTokens[paged.eviction?.settings.policy ?? .none, default: 0] += paged.storedRows(group: 0)
            }
        }
        if let pool = kvPool {
            local.kvBlocksUsed = pool.usedBlocks
            local.kvBlocksResident = pool.residentBlocks
            local.prefixCacheQueries = pool.prefixQueries
            local.prefixCacheHits = pool.prefixHits
        }
        lock.lock()
        local.requestsWaiting = waitingCount
        sharedMetrics = local
        lock.unlock()
    }

    private func step() {
        if let spec = speculator { prepareDrafts(spec) }
        if let target = configuration.decodingStepTarget {
            scheduler.decodingCostLimit = stepTime.costUnits(within: target)
        }
        let plan = scheduler.schedule()
        local.preemptions += plan.preemptions
        let now = Date()
        if !plan.admitted.isEmpty {
            lock.lock()
            waitingCount -= plan.admitted.count
            lock.unlock()
            for r in plan.admitted {
                r.startedAt = now
                local.cachedPromptTokens += r.cachedTokens
                local.promptTokens += r.request.promptTokens.count
                r.onEvent(.started(cachedTokens: r.cachedTokens))
            }
        }
        for s in plan.endedForLength { finishSequence(s, reason: .length, now: now) }
        for r in plan.rejected {
            lock.lock(); waitingCount -= 1; lock.unlock()
            r.onEvent(.failed("the prompt needs more KV cache than the server has (\((kvPool?.blockCount ?? 0) * (kvPool?.blockSize ?? 0)) tokens)", .unavailable))
            r.done = true
            liveRequests[r.id] = nil
        }
        guard !plan.chunks.isEmpty else {
            scheduler.compact()
            return
        }

        // One forward pass for the whole batch.
        let vocab = loaded.model.vocabularySize
        var items: [ForwardItem] = []
        items.reserveCapacity(plan.chunks.count)
        for c in plan.chunks {
            let s = c.sequence
            let wantAll = s.request.request.promptLogprobs && s.choice == 0 && !s.promptDone
            let rows = wantAll ? 0..<c.count : (c.sample ? (c.count - 1)..<(c.count + c.draft.count) : 0..<0)
            // A policy that scores positions gets the kernels' attention weights for every row it will hold.
            let sink = s.paged?.scoreSink(forPass: c.count + c.draft.count)
            items.append(ForwardItem(tokens: Array(s.tokens[c.start..<(c.start + c.count)]) + c.draft, memory: s.memory,
                                     logitRows: rows, scoreSink: sink))
        }
        let logits: UnsafeMutablePointer<Float>
        let forwardStart = DispatchTime.now().uptimeNanoseconds
        do {
            logits = try loaded.model.forward(items, workspace: workspace)
        } catch {
            for c in plan.chunks where !c.sequence.request.done {
                c.sequence.request.onEvent(.failed("forward pass failed: \(error)", .internalError))
                drop(c.sequence.request)
            }
            scheduler.compact()
            return
        }
        scheduler.didCompute(plan)
        // Prompt chunks leave the workspace's prompt-sized rows resident; once no prompt can run until a sequence
        // ends (always so for `tern generate`'s single seat), they sit idle for the whole generation.
        workspaceRowsTouched = max(workspaceRowsTouched, plan.tokenCount)
        if workspaceRowsTouched > 32, scheduler.promptWorkBlocked {
            workspace.releaseIdlePages()
            workspaceRowsTouched = 0
        }
        let attention = workspace.attentionStats
        let forwardSeconds = Double(DispatchTime.now().uptimeNanoseconds - forwardStart) / 1e9
        if let spec = speculator { spec.observeStep(tokens: plan.tokenCount, seconds: forwardSeconds) }
        stepTime.observe(cost: plan.cost, seconds: forwardSeconds)
        local.relayGroups = attention.relayGroups
        local.relayPrefixTokensRead += attention.relayPrefixTokensRead
        local.relayPrefixTokensPerSequence += attention.relayPrefixTokensPerSequence
        local.steps += 1
        local.batchSize.observe(Double(plan.chunks.count))

        // Sample and report.
        var row = 0
        var forked: [SequenceState] = []
        for (k, c) in plan.chunks.enumerated() {
            let s = c.sequence
            let rows = items[k].logitRows
            if c.draft.isEmpty && (rows.count > 1 || (rows.count == 1 && !c.sample)) {
                s.collectPromptLogprobs(logits: logits + row * vocab, rows: rows, start: c.start, vocab: vocab)
            }
            row += rows.count
            guard c.sample, !s.finished else { continue }
            let chunkLogits = logits + (row - rows.count) * vocab
            // Corrupt weights or an overflow upstream: sampling NaN would emit arbitrary tokens as if all were well.
            if let bad = firstNonFinite(chunkLogits, count: rows.count * vocab) {
                s.request.onEvent(.failed("the model produced a non-finite logit (\(bad)) at position \(c.start + c.count - 1)", .internalError))
                drop(s.request)
                continue
            }
            if !c.draft.isEmpty {
                verify(s, chunk: c, rows: chunkLogits, vocab: vocab, now: now)
                continue
            }
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
            if s.choice == 0 && s.request.sequences.count == 1 && s.request.request.n > 1 && s.generatedCount == 0 {
                for choice in 1..<s.request.request.n {
                    let f = s.fork(choice: choice, tokenizer: loaded.tokenizer)
                    forked.append(f)
                    s.request.sequences.append(f)
                    scheduler.addRunning(f)
                    sample(f, logits: rowLogits, vocab: vocab, copy: true, now: now)
                }
            }
            sample(s, logits: rowLogits, vocab: vocab, copy: false, now: now)
        }
        // Eviction after verification's rollback, so only kept rows are scored and moved; forks made this step
        // evict with their parent (they carry its scores and this pass's weights), so greedy choices stay equal.
        for s in plan.chunks.map(\.sequence) + forked where !s.finished {
            guard let paged = s.paged, let e = paged.eviction else { continue }
            let dropped = paged.applyEviction()
            if dropped > 0 { local.kvEvictedTokens[e.settings.policy, default: 0] += dropped }
        }
        scheduler.compact()
    }

    // MARK: speculation

    /// Proposes drafts for the decoding sequences before the scheduler sizes the step.
    private func prepareDrafts(_ spec: SpeculativeDecoder) {
        var decoding: [SequenceState] = []
        var other = 0
        for s in scheduler.running where !s.finished {
            // A sequence whose eviction policy scores positions does not speculate: its scores would count the
            // attention of rejected draft rows, and forks with different drafts would evict differently.
            let scores = s.paged?.eviction?.settings.policy.needsScores == true
            if s.promptDone && s.pending == 1 { if !scores { decoding.append(s) } } else if !s.promptDone { other += s.pending }
        }
        guard !decoding.isEmpty else { return }
        // Prompts about to start fill the step with prefill: drafts would only take its room.
        if !scheduler.waiting.isEmpty || !scheduler.preempted.isEmpty { other = configuration.maxBatchTokens }
        other = min(other, configuration.maxBatchTokens - decoding.count)
        spec.prepareDrafts(decoding, otherTokens: other, budget: configuration.maxBatchTokens) {
            self.calibrate(spec, sample: decoding[0].tokens)
        }
    }

    /// Times forward passes of the sizes speculation chooses between, on a scratch sequence, so the first
    /// drafts are sized by measurement; real steps refine the table from then on.
    private func calibrate(_ spec: SpeculativeDecoder, sample tokens: [Int32]) {
        guard let pool = kvPool, !tokens.isEmpty else { return }
        let memory = PagedKVMemory(pool: pool, capacity: configuration.contextLength, layout: loaded.llama?.cacheLayout)
        defer { memory.releaseAll() }
        // Three interleaved rounds, the fastest of each size kept: a stall in one pass must not price a size out
        // (real steps later move the whole curve, not its shape).
        let sizes = spec.cost.calibrationSizes(maxDraft: configuration.speculation.maxDraft, maxTokens: configuration.maxBatchTokens)
        var best = [Double](repeating: .infinity, count: sizes.count)
        for _ in 0..<3 {
            for (i, n) in sizes.enumerated() {
                guard (try? memory.reserve(n)) != nil else { return }
                let batch = (0..<n).map { tokens[$0 % tokens.count] }
                let t0 = DispatchTime.now().uptimeNanoseconds
                guard (try? loaded.model.forward(tokens: batch, memory: memory, workspace: workspace, logitRows: 0..<n)) != nil else { return }
                best[i] = min(best[i], Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
                _ = memory.rollback(to: 0)
            }
        }
        for (n, t) in zip(sizes, best) { spec.calibrate(tokens: n, seconds: t) }
    }

    /// Verification of a drafted chunk: row i of `rows` is the target's next-token row after the pending token
    /// and draft[0..<i]. Each row draws a token exactly as a plain decode would (SpeculativeDecoder explains why
    /// this is the exact accept/reject rule); the draft token is accepted while the draw equals it, and the first
    /// draw that differs — or the draw after the whole draft — is the step's last token. Rejected rows' KV goes.
    private func verify(_ s: SequenceState, chunk c: ScheduledChunk, rows: UnsafeMutablePointer<Float>, vocab: Int, now: Date) {
        let base = c.start + c.count
        var accepted = 0
        for i in 0...c.draft.count {
            let token = sample(s, logits: rows + i * vocab, vocab: vocab, copy: false, now: now)
            guard !s.finished, i < c.draft.count, token == c.draft[i] else { break }
            accepted += 1
        }
        speculator?.record(s, drafted: c.draft.count, accepted: accepted)
        guard !s.finished else { return }
        s.computed = base + accepted
        if s.memory.rollback(to: s.computed) {
            s.paged?.appendTokens(s.tokens[base..<s.computed])
        } else {
            // A window group already handed back rows the rollback needs: recompute the sequence, as after a
            // preemption (windowSlack makes this unreachable for drafts up to maxDraft).
            s.release()
            s.promptDone = false
        }
    }

    // MARK: sampling

    /// The first NaN or infinity among `count` floats, if any.
    private func firstNonFinite(_ p: UnsafePointer<Float>, count: Int) -> Float? {
        // The largest exponent field in one integer pass (vectorizes); all ones means NaN or infinity.
        var top: UInt32 = 0
        p.withMemoryRebound(to: UInt32.self, capacity: count) { bits in
            for i in 0..<count { top = max(top, bits[i] & 0x7f80_0000) }
        }
        guard top == 0x7f80_0000 else { return nil }
        return (0..<count).lazy.map { p[$0] }.first { !$0.isFinite }
    }

    /// Draws the next token of `s` from its logits row and emits it (or ends the sequence); returns the token.
    @discardableResult
    private func sample(_ s: SequenceState, logits: UnsafeMutablePointer<Float>, vocab: Int, copy: Bool, now: Date) -> Int32 {
        let r = s.request
        var row = logits
        if copy || r.request.logprobs != nil {
            // Siblings share the row, and logprobs need it unprocessed: sample from a private copy.
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
            finishSequence(s, reason: .stop, now: now, stopToken: token)
            return token
        }
        s.sampler.accept(token)
        s.appendOutput(token)
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
        } else if s.generatedCount >= r.request.maxTokens || s.tokens.count >= s.memory.capacity {
            finishSequence(s, reason: .length, now: now)
        }
        return token
    }

    private func finishSequence(_ s: SequenceState, reason: FinishReason, now: Date, stopToken: Int32? = nil) {
        let r = s.request
        // The scheduler marks sequences it ends as finished; `reported` says whether the caller heard of it.
        guard !r.done, !s.reported else { return }
        s.reported = true
        s.finished = true
        s.stopToken = stopToken
        let tail = s.stops.stopped ? "" : s.stops.append(s.detokenizer.finish()) + s.stops.finish()
        s.release()
        r.onEvent(.finished(choice: s.choice, reason: reason, text: tail))
        r.finishedChoices += 1
        if r.finishedChoices == r.request.n || (r.request.maxTokens == 0 && s.choice == 0) {
            let completion = r.sequences.reduce(0) { $0 + $1.generatedCount }
            var usage = EngineUsage(promptTokens: r.request.promptTokens.count, cachedPromptTokens: r.cachedTokens,
                                    completionTokens: completion, stopTokens: r.sequences.map(\.stopToken))
            for seq in r.sequences {
                usage.draftedTokens += seq.speculation.drafted
                usage.acceptedDraftTokens += seq.speculation.accepted
                if let cursor = seq.speculation.prediction {
                    usage.acceptedPredictionTokens += cursor.matched
                    usage.rejectedPredictionTokens += cursor.tokens.count - cursor.matched
                }
            }
            r.onEvent(.completed(usage))
            local.requestLatency.observe(now.timeIntervalSince(r.submittedAt))
            local.requestsFinished += 1
            r.done = true
            liveRequests[r.id] = nil
            for other in r.sequences where !other.finished { other.finished = true; other.release() }
        }
    }

    /// Drops a request wherever it is (cancel, shutdown, failure), returning its memory.
    private func drop(_ r: RequestState) {
        if scheduler.waiting.contains(where: { $0 === r }) {
            lock.lock(); waitingCount -= 1; lock.unlock()
        }
        scheduler.remove(r)
        for s in r.sequences {
            s.finished = true
            s.release()
        }
        r.done = true
        liveRequests[r.id] = nil
    }
}
