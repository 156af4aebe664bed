// The speculative-decoding options `tern serve` and `tern generate` share (one option group, so both commands
// spell and check them the same way).

import ArgumentParser
import TernCore

struct SpeculationOptions: ParsableArguments {
    static let environmentOptions: [EnvironmentOption] = [
        .value("spec"), .value("draft-model"), .value("draft-max"), .value("spec-ngram-max"), .value("spec-ngram-min"),
        .value("spec-adaptive"),
    ]

    @Option(parsing: .unconditional, help: .tern(
        "Speculative decoding: off, ngram (prompt lookup), draft (a draft model), or auto (predicted outputs when a request gives one, the draft model when one is loaded, prompt lookup otherwise).",
        env: "spec", valueName: "off|ngram|draft|auto"))
    var spec = "auto"
    @Option(parsing: .unconditional, help: .tern("Draft model (same vocabulary) for speculative decoding.", env: "draft-model",
                                                  default: "none", valueName: "path"))
    var draftModel: String?
    @Option(parsing: .unconditional, help: .tern("Most tokens drafted per request and step (0 turns speculation off).", env: "draft-max", valueName: "k"))
    var draftMax = 8
    @Option(parsing: .unconditional, help: .tern("Longest context suffix prompt lookup matches.", env: "spec-ngram-max", valueName: "n"))
    var specNgramMax = 3
    @Option(parsing: .unconditional, help: .tern("Shortest context suffix prompt lookup matches.", env: "spec-ngram-min", valueName: "n"))
    var specNgramMin = 2
    @Option(parsing: .unconditional, help: .tern(
        "Choose each draft's length per step from acceptance and the measured step cost (on), or verify every proposal whole, up to the most tokens drafted (off).",
        env: "spec-adaptive", valueName: "on|off"))
    var specAdaptive = "on"

    /// The checked configuration.
    func configuration() throws -> SpeculationConfiguration {
        guard let mode = SpeculationMode(rawValue: spec) else {
            throw UsageError("--spec must be off, ngram, draft or auto, got '\(spec)'")
        }
        if mode == .draft && draftModel == nil { throw UsageError("--spec draft needs --draft-model PATH") }
        guard specAdaptive == "on" || specAdaptive == "off" else {
            throw UsageError("--spec-adaptive must be on or off, got '\(specAdaptive)'")
        }
        var c = SpeculationConfiguration(mode: mode)
        c.maxDraft = try atLeast(draftMax, 0, "draft-max")
        guard c.maxDraft <= 32 else { throw UsageError("--draft-max must be at most 32, got \(draftMax)") }
        let minN = try atLeast(specNgramMin, 1, "spec-ngram-min")
        let maxN = try atLeast(specNgramMax, minN, "spec-ngram-max")
        c.lookup = NgramLookup(maxN: maxN, minN: minN)
        c.adaptive = specAdaptive == "on"
        return c
    }
}
