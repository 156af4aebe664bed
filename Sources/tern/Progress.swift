// One self-overwriting status line on stderr for work that takes seconds to minutes (loading a model,
// converting, perplexity). Only on a terminal: when stderr is a file or a pipe, scripts and tests read it, so
// nothing is printed and the output stays what it always was.

import Foundation
import TernCore

final class ProgressLine: @unchecked Sendable {
    private let lock = NSLock()
    private var timer: DispatchSourceTimer?
    private var finished = false
    private let start = Date()

    /// nil when stderr is not a terminal.
    static func onTerminal() -> ProgressLine? {
        isatty(STDERR_FILENO) == 1 ? ProgressLine() : nil
    }

    private init() {}

    var elapsed: Double { Date().timeIntervalSince(start) }

    func update(_ text: String) {
        lock.lock()
        defer { lock.unlock() }
        guard !finished else { return }
        // Carriage return and erase-to-end-of-line: the line is rewritten in place.
        FileHandle.standardError.write(Data(("\r\u{1B}[K" + text).utf8))
    }

    /// Redraws the line every 200 ms from `text`, for work that reports no progress of its own.
    func tick(_ text: @escaping @Sendable (ProgressLine) -> String) {
        let t = DispatchSource.makeTimerSource(queue: .global())
        t.schedule(deadline: .now(), repeating: .milliseconds(200))
        // weak: cancelling does not wait for a tick already running, which may outlive the line.
        t.setEventHandler { [weak self] in
            guard let self else { return }
            self.update(text(self))
        }
        lock.lock()
        timer = t
        lock.unlock()
        t.resume()
    }

    /// Stops ticking and erases the line, so that whatever is printed next starts on a clean line.
    func finish() {
        lock.lock()
        let t = timer
        timer = nil
        lock.unlock()
        t?.cancel()
        lock.lock()
        if !finished { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        finished = true
        lock.unlock()
    }
}

/// Resident set size of this process, from /proc (0 where there is none).
func residentMemoryBytes() -> Int {
    guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = statm.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

func mebibytes(_ bytes: Int) -> String { String(format: "%.0f MiB", Double(bytes) / 1_048_576) }

/// Loads a model, with elapsed time and resident memory on the progress line: the loader reports nothing, but
/// the weights' pages becoming resident is what loading does, so memory growth is a fair measure of it.
func loadModel(_ path: String, chatTemplate: ChatTemplate? = nil, weights: MappedFile.Backing = .mapped) throws -> (model: LoadedModel, seconds: Double) {
    let progress = ProgressLine.onTerminal()
    let name = (path as NSString).lastPathComponent
    progress?.tick { p in
        String(format: "loading %@: %.1f s, %@ resident", name, p.elapsed, mebibytes(residentMemoryBytes()))
    }
    defer { progress?.finish() }
    let start = Date()
    let loaded = try LoadedModel(path: path, chatTemplate: chatTemplate, weights: weights)
    return (loaded, Date().timeIntervalSince(start))
}
