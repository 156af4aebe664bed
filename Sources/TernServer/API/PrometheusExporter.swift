// /metrics in Prometheus text format (version 0.0.4).

import Foundation
import TernCore

enum PrometheusExporter {
    static func render(_ m: EngineMetrics?, uptime: Double, cancelledRequests: Int = 0) -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: Double) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(format(value))\n"
        }
        func labelled(_ name: String, _ type: String, _ help: String, _ label: String, _ values: [Int]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (i, v) in values.enumerated() { out += "\(name){\(label)=\"\(i)\"} \(v)\n" }
        }
        func histogram(_ name: String, _ help: String, _ h: Histogram) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
            for (b, c) in zip(h.bounds, h.counts) { out += "\(name)_bucket{le=\"\(format(b))\"} \(c)\n" }
            out += "\(name)_bucket{le=\"+Inf\"} \(h.count)\n\(name)_sum \(format(h.sum))\n\(name)_count \(h.count)\n"
        }
        metric("tern_up", "gauge", "1 once the model is loaded.", m == nil ? 0 : 1)
        metric("tern_uptime_seconds", "gauge", "Seconds since the server started.", uptime)
        metric("tern_requests_cancelled_total", "counter", "Completion requests whose client disconnected before the response was complete.",
               Double(cancelledRequests))
        guard let m else { return out }
        metric("tern_requests_running", "gauge", "Requests being processed by the engine.", Double(m.requestsRunning))
        metric("tern_requests_waiting", "gauge", "Requests queued for the engine.", Double(m.requestsWaiting))
        metric("tern_requests_finished_total", "counter", "Requests completed.", Double(m.requestsFinished))
        metric("tern_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", Double(m.promptTokens))
        metric("tern_prompt_tokens_cached_total", "counter", "Prompt tokens served from the prefix cache.", Double(m.cachedPromptTokens))
        metric("tern_generation_tokens_total", "counter", "Generated tokens.", Double(m.generatedTokens))
        metric("tern_kv_cache_blocks_used", "gauge", "KV cache blocks in use.", Double(m.kvBlocksUsed))
        metric("tern_kv_cache_blocks_total", "gauge", "KV cache blocks in the pool.", Double(m.kvBlocksTotal))
        metric("tern_kv_cache_blocks_resident", "gauge", "KV cache blocks whose memory may be resident: in use, idle in the prefix cache, or freed and not yet given back to the kernel.", Double(m.kvBlocksResident))
        metric("tern_kv_cache_usage_ratio", "gauge", "Share of KV cache blocks in use.", m.kvBlocksTotal > 0 ? Double(m.kvBlocksUsed) / Double(m.kvBlocksTotal) : 0)
        metric("tern_prefix_cache_queries_total", "counter", "Prompt blocks looked up in the prefix cache.", Double(m.prefixCacheQueries))
        metric("tern_prefix_cache_hits_total", "counter", "Prompt blocks found in the prefix cache.", Double(m.prefixCacheHits))
        metric("tern_prefix_cache_hit_rate", "gauge", "Share of looked-up prompt blocks found in the prefix cache.",
               m.prefixCacheQueries > 0 ? Double(m.prefixCacheHits) / Double(m.prefixCacheQueries) : 0)
        metric("tern_preemptions_total", "counter", "Sequences preempted for lack of KV blocks.", Double(m.preemptions))
        metric("tern_relay_groups", "gauge", "Relay groups (decoding sequences sharing prefix blocks) in the last engine step.", Double(m.relayGroups))
        metric("tern_relay_prefix_tokens_read_total", "counter", "Shared-prefix positions RelayAttention read, once per group and step.", Double(m.relayPrefixTokensRead))
        metric("tern_relay_prefix_tokens_per_sequence_total", "counter", "Shared-prefix positions the relay groups' members would have read one by one.", Double(m.relayPrefixTokensPerSequence))
        // Every policy is listed, so a dashboard sees zeros rather than missing series.
        func byPolicy(_ name: String, _ type: String, _ help: String, _ values: [EvictionPolicy: Int]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for p in EvictionPolicy.allCases { out += "\(name){policy=\"\(p.rawValue)\"} \(values[p] ?? 0)\n" }
        }
        byPolicy("tern_kv_evicted_tokens_total", "counter", "Positions evicted from the KV cache, counted once per position for every layer and KV head.",
                 m.kvEvictedTokens)
        byPolicy("tern_kv_kept_tokens", "gauge", "Positions the running sequences keep per layer and KV head, by eviction policy.", m.kvKeptTokens)
        metric("tern_engine_steps_total", "counter", "Engine steps (batched forward passes).", Double(m.steps))
        let spec = m.speculation
        metric("tern_spec_decode_draft_tokens_total", "counter", "Speculative tokens drafted and verified.", Double(spec.draftedTokens))
        metric("tern_spec_decode_accepted_tokens_total", "counter", "Speculative tokens accepted.", Double(spec.acceptedTokens))
        metric("tern_spec_decode_verifications_total", "counter", "Drafts verified (one per speculating sequence and step).", Double(spec.verifications))
        metric("tern_spec_decode_acceptance_ratio", "gauge", "Share of drafted tokens accepted.",
               spec.draftedTokens > 0 ? Double(spec.acceptedTokens) / Double(spec.draftedTokens) : 0)
        labelled("tern_spec_decode_draft_tokens_by_position_total", "counter", "Tokens drafted at each draft position (0 = first).",
                 "position", spec.draftedByPosition)
        labelled("tern_spec_decode_accepted_tokens_by_position_total", "counter", "Tokens accepted at each draft position (0 = first).",
                 "position", spec.acceptedByPosition)
        histogram("tern_time_to_first_token_seconds", "Time from request arrival to its first token.", m.timeToFirstToken)
        histogram("tern_inter_token_latency_seconds", "Time between consecutive tokens of a sequence.", m.interTokenLatency)
        histogram("tern_request_latency_seconds", "Time from arrival to completion.", m.requestLatency)
        histogram("tern_batch_size", "Sequences per engine step.", m.batchSize)
        return out
    }

    static func format(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v)
    }
}
