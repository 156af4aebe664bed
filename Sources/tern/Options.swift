// Command-line options: `--name value`, `--name=value` and boolean `--flag`, each also settable through the
// environment as TERN_NAME (dashes become underscores). A flag given on the command line wins.

import Foundation

struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

struct Options {
    private var values: [String: String] = [:]
    /// Every value of options that may repeat (e.g. --api-key), in order.
    private var repeated: [String: [String]] = [:]
    private var flags: Set<String> = []
    private(set) var positionals: [String] = []
    private let valueNames: Set<String>
    private let flagNames: Set<String>

    init(_ args: [String], values valueNames: [String], flags flagNames: [String]) throws {
        self.valueNames = Set(valueNames)
        self.flagNames = Set(flagNames)
        var i = 0
        while i < args.count {
            let a = args[i]
            if a.hasPrefix("--") {
                var name = String(a.dropFirst(2))
                var inline: String?
                if let eq = name.firstIndex(of: "=") {
                    inline = String(name[name.index(after: eq)...])
                    name = String(name[..<eq])
                }
                if self.flagNames.contains(name) {
                    if let inline {
                        guard let b = Self.parseBool(inline) else { throw UsageError("--\(name) takes no value (or true/false), got '\(inline)'") }
                        if b { flags.insert(name) } else { flags.remove(name) }
                    } else {
                        flags.insert(name)
                    }
                } else if self.valueNames.contains(name) {
                    let value: String
                    if let inline {
                        value = inline
                    } else {
                        guard i + 1 < args.count else { throw UsageError("--\(name) needs a value") }
                        value = args[i + 1]
                        i += 1
                    }
                    values[name] = value
                    repeated[name, default: []].append(value)
                } else {
                    throw UsageError("unknown option --\(name)")
                }
            } else {
                positionals.append(a)
            }
            i += 1
        }
    }

    static func envName(_ name: String) -> String {
        "TERN_" + name.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    static func parseBool(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off", "": return false
        default: return nil
        }
    }

    func string(_ name: String) -> String? {
        if let v = values[name] { return v }
        if let v = ProcessInfo.processInfo.environment[Self.envName(name)], !v.isEmpty { return v }
        return nil
    }

    /// All values of a repeatable option; from the environment, a comma-separated list.
    func strings(_ name: String) -> [String] {
        if let v = repeated[name] { return v }
        if let v = ProcessInfo.processInfo.environment[Self.envName(name)], !v.isEmpty {
            return v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        return []
    }

    func flag(_ name: String) throws -> Bool {
        if flags.contains(name) { return true }
        if let v = ProcessInfo.processInfo.environment[Self.envName(name)] {
            guard let b = Self.parseBool(v) else { throw UsageError("\(Self.envName(name)) must be true or false, got '\(v)'") }
            return b
        }
        return false
    }

    func int(_ name: String, default d: Int? = nil, min lo: Int? = nil) throws -> Int? {
        guard let s = string(name) else { return d }
        guard let v = Int(s) else { throw UsageError("--\(name) must be an integer, got '\(s)'") }
        if let lo, v < lo { throw UsageError("--\(name) must be at least \(lo), got \(v)") }
        return v
    }

    func float(_ name: String, default d: Float? = nil) throws -> Float? {
        guard let s = string(name) else { return d }
        guard let v = Float(s), v.isFinite else { throw UsageError("--\(name) must be a number, got '\(s)'") }
        return v
    }
}
