// `tern`: the command-line face of Tern. Results go to stdout; timings and diagnostics to stderr; a failure while
// running is one line `tern: …` on stderr and exit 1; a command line the parser rejects gets the parser's
// message naming the option, the usage, and exit 64.

import ArgumentParser
import CKernels
import Foundation

let defaultModelPath = "models/SmolLM2-135M-Instruct.Q4_1.gguf"

struct TernCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tern",
        abstract: "LLM inference and an OpenAI-compatible server for CPUs.",
        discussion: """
            Every option can also be set as an environment variable TERN_<NAME> (--max-tokens → TERN_MAX_TOKENS, \
            --api-key → TERN_API_KEY=k1,k2, flags as TERN_IGNORE_EOS=1 or 0); the command line wins. \
            TERN_KERNELS=scalar|avx2|avx512 pins the kernel path.
            """,
        subcommands: [GenerateCommand.self, ServeCommand.self, BenchServeCommand.self, TokenizeCommand.self,
                      InspectCommand.self, BenchCommand.self, ConvertCommand.self, PerplexityCommand.self])
}

func printError(_ message: String) {
    FileHandle.standardError.write(("tern: " + message + "\n").data(using: .utf8)!)
}

func info(_ message: String) {
    FileHandle.standardError.write((message + "\n").data(using: .utf8)!)
}

@main
enum TernMain {
    static func main() {
        // For comparisons between kernel paths; the default is the best the CPU has.
        if let pin = ProcessInfo.processInfo.environment["TERN_KERNELS"] {
            let paths = ["scalar": 0, "avx2": 1, "avx512": 2]
            guard let p = paths[pin] else {
                printError("TERN_KERNELS must be scalar, avx2 or avx512, got '\(pin)'")
                exit(2)
            }
            tern_force_path(Int32(p))
        }

        let arguments = Array(CommandLine.arguments.dropFirst())
        guard !arguments.isEmpty else {
            print(TernCommand.helpMessage())
            exit(2)
        }
        let merged: EnvironmentArguments
        do {
            merged = try environmentArguments(arguments)
        } catch {
            printError("\(error)")
            exit(64)
        }
        do {
            var command = try TernCommand.parseAsRoot(merged.arguments)
            try command.run()
            fflush(nil)
        } catch {
            fflush(nil)
            // Help, completion scripts and parse errors come from the parser, as thrown errors too (some only
            // from run()); everything else failed while running and gets one line.
            guard String(reflecting: type(of: error)).hasPrefix("ArgumentParser.") else {
                printError("\(error)")
                exit(1)
            }
            let code = TernCommand.exitCode(for: error)
            guard code != .success else { TernCommand.exit(withError: error) }
            FileHandle.standardError.write(Data((merged.explain(TernCommand.fullMessage(for: error)) + "\n").utf8))
            exit(code.rawValue)
        }
    }

    /// The command line with the environment's settings for the chosen command; help requests and anything
    /// that is not a command pass through as they are.
    static func environmentArguments(_ arguments: [String]) throws -> EnvironmentArguments {
        let name = arguments[0]
        let helpAsked = arguments.contains { $0 == "--help" || $0 == "-h" }
        let command = TernCommand.configuration.subcommands.first { $0.configuration.commandName == name }
        guard !helpAsked, let readable = command as? EnvironmentReadable.Type else {
            return try EnvironmentArguments(command: nil, commandLine: arguments, options: [], environment: [:])
        }
        return try EnvironmentArguments(command: name, commandLine: Array(arguments.dropFirst()),
                                        options: readable.environmentOptions,
                                        environment: ProcessInfo.processInfo.environment)
    }
}
