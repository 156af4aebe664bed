// tern-fuzz: Tern's fuzz targets (Targets.swift), built two ways.
//
// A normal `swift build` makes a replayer: `tern-fuzz TARGET PATH...` runs the target over each file (or each file
// in each directory), so the committed corpora (Tests/FuzzCorpus/TARGET) are regression tests; `tern-fuzz --list`
// names the targets.
//
// Built with `-sanitize=fuzzer,address -D TERN_LIBFUZZER` (scripts/fuzz), libFuzzer supplies `main` and calls
// LLVMFuzzerTestOneInput; the target is chosen by the environment variable TERN_FUZZ_TARGET, because libFuzzer
// owns the command line.

import Foundation

#if TERN_LIBFUZZER

/// Resolved on the first input; a bad name stops the run before libFuzzer gets going.
let selectedTarget: FuzzTarget = {
    let name = ProcessInfo.processInfo.environment["TERN_FUZZ_TARGET"] ?? ""
    guard let t = FuzzTargets.named(name) else {
        fatalError("set TERN_FUZZ_TARGET to one of: \(FuzzTargets.all.map(\.name).joined(separator: ", "))")
    }
    return t
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    selectedTarget.run(bytes)
    return 0
}

/// libFuzzer's driver, for a `main` of our own.
@_silgen_name("LLVMFuzzerRunDriver")
func llvmFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

/// SwiftPM links an executable target with its entry point renamed to `<module>_main` (so tests can link the
/// module), which leaves libFuzzer's own `main` out: this is that entry point, handing over to libFuzzer's driver.
@_cdecl("tern_fuzz_main")
public func ternFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    // Load the target's resources (a model, tokenizers) before the first input, so that their allocations are not
    // charged to it by the leak check.
    selectedTarget.run([])
    selectedTarget.run([0])
    var argc = argc
    var argv = argv
    return llvmFuzzerRunDriver(&argc, &argv, fuzzTestOneInput)
}

#else

@main
enum FuzzReplay {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        if args.first == "--list" {
            for t in FuzzTargets.all { print("\(t.name)\t\(t.summary)") }
            return
        }
        guard args.count >= 2, let target = FuzzTargets.named(args[0]) else {
            let names = FuzzTargets.all.map(\.name).joined(separator: "|")
            FileHandle.standardError.write(Data("usage: tern-fuzz \(names) FILE_OR_DIR...   (or --list)\n".utf8))
            exit(2)
        }
        var files: [String] = []
        for path in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                FileHandle.standardError.write(Data("tern-fuzz: no such file or directory: \(path)\n".utf8))
                exit(2)
            }
            if isDir.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
                files += names.sorted().filter { !$0.hasPrefix(".") }.map { path + "/" + $0 }
            } else {
                files.append(path)
            }
        }
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else {
                FileHandle.standardError.write(Data("tern-fuzz: cannot read \(file)\n".utf8))
                exit(2)
            }
            // Named first, so the input that crashes is the last one printed.
            FileHandle.standardError.write(Data("\(target.name): \(file)\n".utf8))
            target.run([UInt8](data))
        }
        print("\(target.name): \(files.count) inputs replayed, no crash")
    }
}

#endif
