// The bytes of a whole file, read-only, as the backing store for checkpoint tensors (tensors point into it and keep
// a reference to it). Three backings:
//
// - `.mapped`: a MAP_PRIVATE read-only map, zero-copy, pages shared with the page cache. If another process
//   truncates the file afterwards, touching a page past the new end raises SIGBUS, and an in-place rewrite changes
//   the bytes under us. Fine for a short-lived reader (`tern inspect`, `convert`, tests).
// - `.privateCopy`: the file read once into anonymous memory of our own. What a server loads its model with:
//   truncating, rewriting or replacing the file while it serves changes nothing it reads, so no SIGBUS and no torn
//   weights (issue 15, model file faults). The cost is reading the file at start (a mapped server faults every page
//   in on its first forward pass anyway) and that replicas on one host do not share the page cache's copy.
// - heap (`init(copying:name:)`): for fuzzing the readers, so AddressSanitizer sees a read one byte past the end.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

public final class MappedFile: @unchecked Sendable {
    // Immutable after init and never written through `base` (the private copy is made read-only once filled), so
    // sharing across threads is safe.
    public let path: String
    public let base: UnsafeRawPointer
    public let size: Int
    /// Whether the bytes are the file's pages (`.mapped`): clean pages that madvise(MADV_DONTNEED) may give back
    /// and that come back from the file when read again. A private copy or heap bytes given back would read as
    /// zeros, so nothing may release them.
    public let isFileBacked: Bool
    private let release: Release

    public enum Backing: Sendable { case mapped, privateCopy }
    private enum Release { case unmap(Int), deallocate }

    public init(path: String, backing: Backing = .mapped) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw CheckpointError(file: path, String(cString: strerror(errno)))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw CheckpointError(file: path, "cannot stat: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw CheckpointError(file: path, "not a regular file") }
        let size = Int(st.st_size)
        guard size > 0 else { throw CheckpointError(file: path, "file is empty") }
        switch backing {
        case .mapped:
            guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
                throw CheckpointError(file: path, "mmap failed: \(String(cString: strerror(errno)))")
            }
            self.base = UnsafeRawPointer(p)
            self.isFileBacked = true
        case .privateCopy:
            guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
                throw CheckpointError(file: path, "cannot allocate \(size) bytes for the model: \(String(cString: strerror(errno)))")
            }
            #if os(Linux)
            // Weights are read whole on every forward pass: huge pages spare TLB misses where the kernel has them.
            _ = madvise(p, size, MADV_HUGEPAGE)
            #endif
            var done = 0
            while done < size {
                let n = pread(fd, p + done, min(size - done, 1 << 30), off_t(done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    let why = n < 0 ? String(cString: strerror(errno)) : "the file shrank to \(done) bytes while being read"
                    munmap(p, size)
                    throw CheckpointError(file: path, "cannot read: \(why)")
                }
                done += n
            }
            mprotect(p, size, PROT_READ)
            self.base = UnsafeRawPointer(p)
            self.isFileBacked = false
        }
        self.size = size
        self.release = .unmap(size)
    }

    /// A copy of `bytes` on the heap, named `name` in errors.
    public init(copying bytes: UnsafeRawBufferPointer, name: String) {
        path = name
        size = bytes.count
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
        if let src = bytes.baseAddress { p.copyMemory(from: src, byteCount: bytes.count) }
        base = UnsafeRawPointer(p)
        isFileBacked = false
        release = .deallocate
    }

    deinit {
        switch release {
        case .unmap(let n): munmap(UnsafeMutableRawPointer(mutating: base), n)
        case .deallocate: UnsafeMutableRawPointer(mutating: base).deallocate()
        }
    }
}

/// A problem with a checkpoint file: always names the file and what is wrong with it.
public struct CheckpointError: Error, CustomStringConvertible, Sendable {
    public let file: String
    public let message: String
    public init(file: String, _ message: String) {
        self.file = file
        self.message = message
    }
    public var description: String { "\(file): \(message)" }
}
