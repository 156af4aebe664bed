#!/usr/bin/env python3
"""Lower bound on the shared-system-prompt load of issue 10 with exact f32 attention on this machine.

The load: N streams, each a P-token prompt shared by all, an own S-token suffix, and O generated tokens; against the
same load without the shared prompt (S-token prompts). The shared prompt adds work that relay cannot remove: relay
reads the prefix's KV once per step, but every query row still scores and weighs every prefix key (2 * hd
multiply-adds per key and query head), so the extra attention arithmetic is

    extra = layers * q_heads * 4 * hd * [N * (S + O) * P  (suffix rows and decode rows see P more keys)
                                          + P * P / 2 ]   (the prefix's own causal prefill, computed once)

and the prefix's P tokens also go through the weights once (at the short-prompt prefill rate). Even at the cores'
full FMA rate with nothing else in the way, the load cannot reach `target` x the baseline's rate when

    P / pp_rate + extra / (cores * peak) > N * O / (target * baseline) - N * O / baseline.

Usage: scripts/shared_prompt_budget.py BASELINE_TOK_S PP128_TOK_S PEAK_GFLOPS_PER_CORE [--prefix P] [--target T]
       [--efficiency E]
(BASELINE: `tern bench-serve --concurrency 16 --num-requests 16 --output-tokens 128 --prompt-tokens 128`;
PP128: `tern bench`; PEAK: an FMA-throughput probe, 8 lanes x 2 units x 2 flops x clock.)
"""
import argparse

p = argparse.ArgumentParser()
p.add_argument("baseline", type=float)
p.add_argument("pp128", type=float)
p.add_argument("peak", type=float, help="GFLOP/s per core")
p.add_argument("--prefix", type=int, default=1024)
p.add_argument("--target", type=float, default=0.70)
p.add_argument("--streams", type=int, default=16)
p.add_argument("--suffix", type=int, default=128)
p.add_argument("--out", type=int, default=128)
p.add_argument("--cores", type=int, default=2)
p.add_argument("--efficiency", type=float, default=0.40, help="fraction of the FMA peak the attention kernel reaches")
p.add_argument("--layers", type=int, default=30)
p.add_argument("--heads", type=int, default=9)
p.add_argument("--head-dim", type=int, default=64)
a = p.parse_args()

P, N, S, O = a.prefix, a.streams, a.suffix, a.out
per_key = a.layers * a.heads * 4 * a.head_dim
extra_flop = per_key * (N * (S + O) * P + P * P / 2)
base_time = N * O / a.baseline
budget = N * O / (a.target * a.baseline) - base_time
floor = P / a.pp128 + extra_flop / (a.cores * a.peak * 1e9)
print(f"extra attention arithmetic: {extra_flop / 1e9:.0f} GFLOP")
print(f"time the target allows beyond the baseline load ({base_time:.2f} s): {budget:.2f} s")
print(f"floor at {a.peak:.0f} GFLOP/s x {a.cores} cores, no overhead: {floor:.2f} s "
      f"(prefix through the weights {P / a.pp128:.2f} s + attention {extra_flop / (a.cores * a.peak * 1e9):.2f} s)")
best = N * O / (base_time + floor)
print(f"best possible rate: {best:.1f} tok/s = {100 * best / a.baseline:.1f}% of the baseline (target {100 * a.target:.0f}%)")
real = P / a.pp128 + extra_flop / (a.cores * a.peak * a.efficiency * 1e9)
print(f"with the kernel at {100 * a.efficiency:.0f}% of the peak: {real:.2f} s, "
      f"{100 * N * O / (base_time + real) / a.baseline:.1f}% of the baseline")
