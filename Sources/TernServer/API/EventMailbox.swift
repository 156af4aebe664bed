// The hand-off between the engine thread and one response. The engine's event handler must return at once (it
// runs inside the engine step that every running sequence waits on), so it only appends here; formatting,
// gzip and socket writes happen when the response's own serial queue drains the mailbox.
//
// Ownership: `post` is called by the engine thread, `take` by the response queue; both touch the queue of
// events only under `lock`, and neither does any other work while holding it.

import Foundation
import TernCore

final class EventMailbox: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [(prompt: Int, event: EngineEvent)] = []
    private var drainPending = false

    /// Appends an event of prompt `prompt`. True when no drain is pending yet, so the caller must schedule one;
    /// later posts ride on that drain.
    func post(prompt: Int, _ event: EngineEvent) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        events.append((prompt, event))
        if drainPending { return false }
        drainPending = true
        return true
    }

    /// Everything posted so far, in order; the next post schedules a new drain.
    func take() -> [(prompt: Int, event: EngineEvent)] {
        lock.lock()
        defer { lock.unlock() }
        let taken = events
        events.removeAll(keepingCapacity: true)
        drainPending = false
        return taken
    }
}
