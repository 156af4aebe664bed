// Every `tern` option can also be set as TERN_<NAME>, and the command line wins. swift-argument-parser reads
// only the command line, so before parsing, the settings found in the environment are turned into arguments for
// exactly those options the command line does not name; the parser then sees one source, and the precedence
// command line > environment > default holds by construction instead of by each command reading both.

import ArgumentParser
import Foundation

/// How an option is spelled on the command line, which decides how its variable turns into arguments.
enum EnvironmentOption: Sendable {
    /// `--name VALUE`; `TERN_NAME=VALUE`.
    case value(String)
    /// `--name` (or `--name=true|false`); `TERN_NAME=1|0|true|false|yes|no|on|off`.
    case flag(String)
    /// `--name VALUE`, repeatable; `TERN_NAME=v1,v2`.
    case list(String)

    var name: String {
        switch self {
        case .value(let n), .flag(let n), .list(let n): return n
        }
    }

    var variable: String { Self.variable(for: name) }

    static func variable(for name: String) -> String {
        "TERN_" + name.uppercased().replacingOccurrences(of: "-", with: "_")
    }
}

/// A command whose options can come from the environment. The list must name every option the command has;
/// the CLI tests compare it with `--help`.
protocol EnvironmentReadable {
    static var environmentOptions: [EnvironmentOption] { get }
}

struct EnvironmentArguments {
    /// What the parser sees: the command's name, the environment's arguments, then the command line's.
    private(set) var arguments: [String] = []
    /// Option name → `TERN_NAME=value`, for options whose value came from the environment (named in errors).
    private(set) var sources: [String: String] = [:]

    /// `commandLine` follows the command's name, which is passed as `command`.
    init(command: String?, commandLine: [String], options: [EnvironmentOption], environment: [String: String]) throws {
        var byName: [String: EnvironmentOption] = [:]
        for o in options { byName[o.name] = o }
        var named: Set<String> = []
        var given: [String] = []
        var i = 0
        while i < commandLine.count {
            let a = commandLine[i]
            i += 1
            if a == "--" {
                given += commandLine[(i - 1)...]
                break
            }
            guard a.hasPrefix("--") else { given.append(a); continue }
            var name = String(a.dropFirst(2))
            var inline: String?
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = String(name[..<eq])
            }
            switch byName[name] {
            case .flag?:
                named.insert(name)
                // The parser's flags take no value; `--flag=false` has always been accepted, and it must also
                // override TERN_FLAG=1, so it is resolved here.
                if let inline {
                    guard let on = Self.parseBool(inline) else {
                        throw UsageError("--\(name) takes no value (or true/false), got '\(inline)'")
                    }
                    if on { given.append("--\(name)") }
                } else {
                    given.append(a)
                }
            case .value?, .list?:
                named.insert(name)
                given.append(a)
                // The value is the next argument even when it starts with dashes (as the parser is told too),
                // so it must not be mistaken for an option name here.
                if inline == nil, i < commandLine.count {
                    given.append(commandLine[i])
                    i += 1
                }
            case nil:
                given.append(a)
            }
        }

        var fromEnvironment: [String] = []
        for o in options where !named.contains(o.name) {
            guard let raw = environment[o.variable] else { continue }
            switch o {
            case .value(let name):
                guard !raw.isEmpty else { continue }
                fromEnvironment.append("--\(name)=\(raw)")
            case .flag(let name):
                guard let on = Self.parseBool(raw) else {
                    throw UsageError("\(o.variable) must be true or false, got '\(raw)'")
                }
                if on { fromEnvironment.append("--\(name)") }
            case .list(let name):
                let items = raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                fromEnvironment += items.map { "--\(name)=\($0)" }
            }
            sources[o.name] = "\(o.variable)=\(raw)"
        }
        arguments = (command.map { [$0] } ?? []) + fromEnvironment + given
    }

    static func parseBool(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off", "": return false
        default: return nil
        }
    }

    /// A parse error's message, plus where an offending value came from when it was the environment: the
    /// parser only knows the option, and the user wrote a variable.
    func explain(_ message: String) -> String {
        var notes: [String] = []
        for (name, setting) in sources.sorted(by: { $0.key < $1.key })
        where message.contains("'--\(name)") || message.contains("--\(name) ") || message.contains("--\(name)=") {
            notes.append("(--\(name) came from the environment: \(setting))")
        }
        return ([message] + notes).joined(separator: "\n")
    }
}

extension ArgumentHelp {
    /// Help for an option settable as TERN_<NAME>. `default` describes defaults the parser cannot print itself
    /// (optional options whose default depends on the machine or the model, and flags).
    static func tern(_ abstract: String, env name: String, default description: String? = nil,
                     valueName: String? = nil) -> ArgumentHelp {
        // The parser appends "(default: …)" itself where it knows the default; env first keeps one order.
        var text = abstract + " (env: \(EnvironmentOption.variable(for: name)))"
        if let description { text += " (default: \(description))" }
        return ArgumentHelp(text, valueName: valueName)
    }
}

/// A usage problem found after parsing (a value out of range, options that go together); one line on stderr.
struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A value that must name one case of `E`; the error lists them.
func oneOf<E: RawRepresentable & CaseIterable>(_ value: String, _ option: String) throws -> E where E.RawValue == String {
    guard let v = E(rawValue: value) else {
        throw UsageError("--\(option) \(value) is not one of \(E.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return v
}

/// Range check with the wording the earlier hand-written parser used, which scripts may match.
func atLeast(_ value: Int, _ minimum: Int, _ option: String) throws -> Int {
    guard value >= minimum else { throw UsageError("--\(option) must be at least \(minimum), got \(value)") }
    return value
}
