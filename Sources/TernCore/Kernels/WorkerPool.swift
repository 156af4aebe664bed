// A persistent pool of compute threads for the forward pass. `run` hands the same closure to every thread
// (the caller is thread 0) and returns when all have finished. Workers spin briefly between jobs, because a
// decode step issues hundreds of small jobs and a condition-variable wake-up per job would cost more than the
// work; then they spin with sched_yield (so a busy machine's other threads, or our own descheduled worker, get
// the core), and after a longer idle spell they sleep on a condition variable. No Dispatch queue is involved.
//
// Lifecycle: worker threads hold only the pool's shared state, never the pool, so dropping the last reference to
// the pool stops and joins them (its deinit), and an engine that is freed takes its threads with it.

import Foundation
import Synchronization
import CKernels
#if canImport(Glibc)
import Glibc
#endif

public final class WorkerPool: @unchecked Sendable {
    public let threadCount: Int
    private let shared: WorkerPoolState
    private var threads: [pthread_t] = []
    /// One `run` at a time.
    private let runLock = NSLock()

    public init(threads: Int) {
        threadCount = max(1, threads)
        shared = WorkerPoolState(workers: threadCount - 1)
        for index in 1..<threadCount {
            let box = Unmanaged.passRetained(WorkerStart(state: shared, index: index))
            var tid = pthread_t()
            let rc = pthread_create(&tid, nil, { raw in
                let start = Unmanaged<WorkerStart>.fromOpaque(raw!).takeRetainedValue()
                tern_set_thread_name("tern-worker")
                start.state.workerLoop(index: start.index)
                return nil
            }, box.toOpaque())
            precondition(rc == 0, "cannot start a worker thread")
            self.threads.append(tid)
        }
    }

    deinit {
        shared.stop()
        for t in threads { pthread_join(t, nil) }
    }

    /// Runs `body(threadIndex)` once on each of `threadCount` threads and waits for all of them.
    public func run(_ body: (Int) -> Void) {
        if threadCount == 1 { body(0); return }
        runLock.lock()
        defer { runLock.unlock() }
        shared.run(body)
    }

    /// Splits `0..<count` into one contiguous range per thread (multiples of `granule`) and runs them.
    public func parallelFor(_ count: Int, granule: Int = 1, _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let n = threadCount
        if n == 1 || count <= granule { body(0..<count); return }
        let units = (count + granule - 1) / granule
        run { t in
            let lo = min(count, units * t / n * granule)
            let hi = min(count, units * (t + 1) / n * granule)
            if lo < hi { body(lo..<hi) }
        }
    }
}

/// What the pool's threads share. `job` is written only by the thread inside `run` before it publishes a new
/// `generation` (release) and read by workers after they observe it (acquire); `remaining` counts unfinished
/// workers. `mutex`/`wake` guard sleeping only.
private final class WorkerPoolState: @unchecked Sendable {
    typealias Job = (Int) -> Void
    let workers: Int
    private let generation = Atomic<Int>(0)
    private let remaining = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    private var job: UnsafeRawPointer?
    private var mutex = pthread_mutex_t()
    private var wake = pthread_cond_t()

    init(workers: Int) {
        self.workers = workers
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&wake, nil)
    }

    deinit {
        pthread_cond_destroy(&wake)
        pthread_mutex_destroy(&mutex)
    }

    func stop() {
        stopping.store(true, ordering: .releasing)
        pthread_mutex_lock(&mutex)
        _ = generation.add(1, ordering: .releasing)
        pthread_cond_broadcast(&wake)
        pthread_mutex_unlock(&mutex)
    }

    func run(_ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { escapable in
            var closure: Job = escapable
            withUnsafePointer(to: &closure) { ptr in
                job = UnsafeRawPointer(ptr)
                remaining.store(workers, ordering: .relaxed)
                pthread_mutex_lock(&mutex)
                _ = generation.add(1, ordering: .releasing)
                pthread_cond_broadcast(&wake)
                pthread_mutex_unlock(&mutex)
                escapable(0)
                var spins = 0
                while remaining.load(ordering: .acquiring) > 0 {
                    spins += 1
                    // On a busy machine a worker may be descheduled: stop burning its core and let it run.
                    if spins < 4_000 { spinPause() } else { sched_yield() }
                }
                job = nil
            }
        }
    }

    func workerLoop(index: Int) {
        var seen = 0
        while true {
            var spins = 0
            var current = generation.load(ordering: .acquiring)
            while current == seen {
                spins += 1
                if spins < 4_000 {
                    spinPause()
                } else if spins < 60_000 {
                    // Still likely to get work soon (the next matrix of this token), but give the core
                    // away if anyone else wants it.
                    sched_yield()
                } else {
                    pthread_mutex_lock(&mutex)
                    while generation.load(ordering: .acquiring) == seen { pthread_cond_wait(&wake, &mutex) }
                    pthread_mutex_unlock(&mutex)
                    spins = 0
                }
                current = generation.load(ordering: .acquiring)
            }
            seen = current
            if stopping.load(ordering: .acquiring) { return }
            if let j = job {
                j.assumingMemoryBound(to: Job.self).pointee(index)
            }
            _ = remaining.subtract(1, ordering: .releasing)
        }
    }
}

private final class WorkerStart {
    let state: WorkerPoolState
    let index: Int
    init(state: WorkerPoolState, index: Int) { self.state = state; self.index = index }
}

@inline(__always) func spinPause() {
    tern_cpu_relax()
}
