// The KV-eviction options `tern serve`, `tern bench` and `tern perplexity` share (one option group, so every
// command spells and checks them the same way).

import ArgumentParser
import TernCore

struct EvictionOptions: ParsableArguments {
    static let environmentOptions: [EnvironmentOption] = [.value("kv-policy"), .value("kv-budget")]

    @Option(parsing: .unconditional, help: .tern(
        "KV eviction: none, window (attention sinks + recent positions), alisa (recent + most attended) or dms (delayed eviction of the least attended). Requests may choose their own (kv_policy).",
        env: "kv-policy", valueName: "none|window|alisa|dms"))
    var kvPolicy = "none"
    @Option(parsing: .unconditional, help: .tern(
        "Positions each layer and KV head keeps under an eviction policy (at least 16). Requests may choose their own (kv_budget).",
        env: "kv-budget", valueName: "tokens"))
    var kvBudget = EvictionSettings.defaultBudget

    /// The checked settings.
    func settings() throws -> EvictionSettings {
        guard let policy = EvictionPolicy(rawValue: kvPolicy) else {
            throw UsageError("--kv-policy must be none, window, alisa or dms, got '\(kvPolicy)'")
        }
        let budget = try atLeast(kvBudget, EvictionSettings.minimumBudget, "kv-budget")
        return EvictionSettings(policy: policy, budget: budget)
    }
}
