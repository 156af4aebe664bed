#!/usr/bin/env python3
"""Float64 reference for Tern's KV-cache eviction policies (none, window, alisa, dms) on the tiny llama fixture.

Run from anywhere:  python3 scripts/make_eviction_reference.py     (numpy + gguf, see scripts/requirements.txt; ~1 s)
Reads   Tests/Fixtures/llama/llama-f32.gguf   (written by scripts/make_llama_fixtures.py, whose loader, RMSNorm,
        RoPE and plain forward pass are imported from that module; importing it has no side effects)
Writes  Tests/Fixtures/llama/eviction_reference.json   (deterministic: same bytes on every run)

Scenario. 40 token ids, tokens[i] = (37 i + 11) mod 320, fed teacher-forced in chunks of
SCHEDULE = [10, 1 x 6, 5, 1 x 19] rows (27 chunks). Token i always sits at position i: RoPE uses that position and positions
are never renumbered after an eviction. Everything is float64.

Cache. For every layer l and KV head h the cache holds a set K(l,h) of positions, empty at the start. Eviction
works per (l,h) independently, so different heads of one layer may keep different positions, and since later
layers (and later chunks) read the evicted cache, the hidden states themselves depend on the policy.

One chunk, rows at positions [c0, c1):
  1. Each layer first stores the chunk's own K/V, so positions c0..c1-1 join every K(l,h); then each row at
     position q, for query head j (which reads KV head j // 2), attends with softmax(q.k / sqrt(16)) over the
     positions of K(l, j // 2) that are <= q (the chunk is causal inside itself).
  2. The logits of the chunk's last row are recorded (so they see the cache as left by earlier chunks' evictions
     plus this chunk's rows).
  3. Attention mass: for each (l,h), S[p] is the attention weight key p received, summed over the chunk's rows
     and over the two query heads that share KV head h (a key a row cannot see contributes 0).
  4. Eviction, with count = c1 (positions seen so far), budget B = 16, sink tokens 4, recent window W = 8. When
     |K| > B, exactly k = |K| - B positions leave K:
       none    never evicts.
       window  (StreamingLLM) the k smallest positions among those >= 4: the first 4 positions and the newest
               stay.
       alisa   every kept position carries a score, decayed and accumulated once per chunk:
               score[p] <- score[p] * lam^n + S[p], lam = 1 - 1/W, n = c1 - c0 (the chunk's row count);
               a position entering the cache starts at 0, i.e. its first score is its S[p]. Candidates are the
               kept positions p < count - W; the k lowest-scored candidates go.
       dms     a position's score is the sum of S[p] over the chunks whose first query still had it in its recent
               window (p > c0 - W; for a one-row chunk that is p >= count - W); afterwards it is frozen. New
               positions start at 0. Candidates and choice as for alisa: kept p < count - W, the k lowest go.
     Ties go by position: at equal score the smaller position is evicted first. An evicted position's score is
     dropped. (The candidates always number at least k here; the script asserts it.)

Output JSON:
  {"model": "llama-f32.gguf", "tokens": [40 ids], "schedule": [rows per chunk], "budget": 16, "sink_tokens": 4,
   "recent_window": 8,
   "cases": {policy: {"logits": [per chunk: 320 logits of its last row, 7 significant digits, before that chunk's
                                 eviction],
                      "kept": [per layer: [per KV head: sorted positions kept after the last chunk's eviction]],
                      "min_margin": over every eviction decision of the policy, score of the first kept candidate
                                    minus score of the last evicted one (window: the same in positions; none: null)}}}
A small margin means a float32 engine could take the other decision; the summary printed at the end lists the
margins (also relative to the scores' size) and warns when an alisa/dms decision is a near or exact tie.

Checks done on every run: with no eviction the chunked pass reproduces make_llama_fixtures.forward on the full
prefix (last row of every chunk) and, on reference.json's prompt, reference.json's llama-f32.gguf logits up to
their 6-digit rounding.
"""

import json
import math
import os
import sys

import numpy as np

sys.dont_write_bytecode = True   # no __pycache__ in scripts/
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_llama_fixtures as fx  # noqa: E402  (module only defines things; its main() is not run)

FIXTURES = os.path.join(HERE, "..", "Tests", "Fixtures", "llama")
MODEL = "llama-f32.gguf"
OUT = os.path.join(FIXTURES, "eviction_reference.json")

TOKENS = [(i * 37 + 11) % 320 for i in range(40)]
SCHEDULE = [10] + [1] * 6 + [5] + [1] * 19   # 27 chunks, 40 rows
BUDGET, SINK, WINDOW = 16, 4, 8
LAM = 1.0 - 1.0 / WINDOW
POLICIES = ["none", "window", "alisa", "dms"]
GROUP = fx.N_HEAD // fx.N_KV
NEAR_TIE = 1e-6   # relative margin below which a float32 engine might decide differently


# --- model --------------------------------------------------------------------------------------------------------
def load_model():
    """Weights by HF name (float64, q/k rows as stored: interleaved-RoPE layout) and the RoPE base."""
    path = os.path.join(FIXTURES, MODEL)
    r = fx.gguf.GGUFReader(path)
    # read_gguf checks the file's metadata against a tokenizer description; the file's own lists serve as that.
    tok_meta = tuple(fx.field_value(r, k) for k in ["tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                    "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
                                                    "tokenizer.ggml.eos_token_id"])
    names = [fx.gguf_to_hf_name(t.name) for t in r.tensors]
    W, freqs = fx.read_gguf(path, "llama", "f32", names, tok_meta)
    assert freqs is None
    base = float(fx.field_value(r, "llama.rope.freq_base"))
    return W, base


class Cache:
    """K/V of every position ever computed (each position is computed once) plus the kept set per (layer, head)."""

    def __init__(self, n_layer, n_pos):
        self.k = np.zeros((n_layer, n_pos, fx.N_KV, fx.HEAD_DIM))
        self.v = np.zeros((n_layer, n_pos, fx.N_KV, fx.HEAD_DIM))
        self.kept = [[set() for _ in range(fx.N_KV)] for _ in range(n_layer)]


def run_chunk(W, base, cache, tokens, c0, c1):
    """Rows c0..c1-1 through the model with the cache. Returns (logits of the last row, S[layer][kv head] as an
    array over positions: attention weight received, summed over the chunk's rows and the head group)."""
    n_layer = fx.layer_count(W)
    qpos = np.arange(c0, c1)
    x = W["model.embed_tokens.weight"][np.asarray(tokens[c0:c1])]
    S = np.zeros((n_layer, fx.N_KV, cache.k.shape[1]))
    for l in range(n_layer):
        p = f"model.layers.{l}."
        h = fx.rms(x, W[p + "input_layernorm.weight"])
        q = fx.rope((h @ W[p + "self_attn.q_proj.weight"].T).reshape(-1, fx.N_HEAD, fx.HEAD_DIM),
                    qpos.astype(np.float64), base, "interleaved")
        cache.k[l, c0:c1] = fx.rope((h @ W[p + "self_attn.k_proj.weight"].T).reshape(-1, fx.N_KV, fx.HEAD_DIM),
                                    qpos.astype(np.float64), base, "interleaved")
        cache.v[l, c0:c1] = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(-1, fx.N_KV, fx.HEAD_DIM)
        att = np.empty((c1 - c0, fx.N_HEAD, fx.HEAD_DIM))
        for kv in range(fx.N_KV):
            cache.kept[l][kv].update(range(c0, c1))
            P = np.array(sorted(cache.kept[l][kv]))
            hidden = P[None, :] > qpos[:, None]
            for j in range(kv * GROUP, (kv + 1) * GROUP):
                sc = q[:, j] @ cache.k[l, P, kv].T / math.sqrt(fx.HEAD_DIM)
                sc[hidden] = -np.inf
                w = np.exp(sc - sc.max(axis=1, keepdims=True))
                w /= w.sum(axis=1, keepdims=True)
                att[:, j] = w @ cache.v[l, P, kv]
                S[l, kv, P] += w.sum(axis=0)
        x = x + att.reshape(c1 - c0, -1) @ W[p + "self_attn.o_proj.weight"].T
        h = fx.rms(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
    x = fx.rms(x[-1:], W["model.norm.weight"])
    return (x @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T)[0], S


# --- policies -----------------------------------------------------------------------------------------------------
def evict(policy, kept, score, S, c0, c1):
    """One (layer, head) decision after chunk [c0, c1). Mutates kept/score. Returns a decision record or None."""
    count = c1
    if policy == "alisa":
        decay = LAM ** (c1 - c0)
        for p in kept:
            score[p] = score.get(p, 0.0) * decay + S[p]
    elif policy == "dms":
        for p in kept:
            # Scored while in the recent window of the chunk's first query (p > c0 - W): for one-row chunks
            # exactly "p >= count - W"; a long prefill chunk scores all its own positions.
            score[p] = score.get(p, 0.0) + (S[p] if p > c0 - WINDOW else 0.0)
    if policy == "none" or len(kept) <= BUDGET:
        return None
    k = len(kept) - BUDGET
    if policy == "window":
        order = sorted(p for p in kept if p >= SINK)
        key = float
    else:
        order = sorted((p for p in kept if p < count - WINDOW), key=lambda p: (score[p], p))
        key = score.__getitem__
    assert len(order) >= k, (policy, c1, len(order), k)
    gone = order[:k]
    rec = {"evicted": gone, "last_evicted": gone[-1], "first_kept": order[k] if len(order) > k else None}
    if rec["first_kept"] is not None:
        a, b = key(gone[-1]), key(order[k])
        rec["margin"] = b - a
        rec["rel_margin"] = (b - a) / max(abs(a), abs(b)) if max(abs(a), abs(b)) > 0 else 0.0
        rec["scores"] = (a, b)
    for p in gone:
        kept.discard(p)
        score.pop(p, None)
    return rec


def run_policy(W, base, policy):
    n_layer = fx.layer_count(W)
    cache = Cache(n_layer, len(TOKENS))
    scores = [[{} for _ in range(fx.N_KV)] for _ in range(n_layer)]
    logits, decisions, c0 = [], [], 0
    for ci, n in enumerate(SCHEDULE):
        c1 = c0 + n
        last, S = run_chunk(W, base, cache, TOKENS, c0, c1)
        logits.append(last)
        for l in range(n_layer):
            for h in range(fx.N_KV):
                rec = evict(policy, cache.kept[l][h], scores[l][h], S[l, h], c0, c1)
                if rec is not None:
                    rec.update(chunk=ci, count=c1, layer=l, head=h)
                    decisions.append(rec)
                if policy != "none":
                    assert len(cache.kept[l][h]) == min(c1, BUDGET)
        c0 = c1
    kept = [[sorted(cache.kept[l][h]) for h in range(fx.N_KV)] for l in range(n_layer)]
    return np.array(logits), kept, decisions


# --- checks -------------------------------------------------------------------------------------------------------
def check_against_fixtures(W, base):
    """No eviction must be the plain forward pass: on reference.json's prompt, and on every prefix of TOKENS."""
    with open(os.path.join(FIXTURES, "reference.json")) as f:
        case = next(c for c in json.load(f)["cases"] if c["checkpoint"] == MODEL)
    prompt, stored = case["tokens"], np.array(case["logits"])
    cache = Cache(fx.layer_count(W), len(prompt))
    mine = np.array([run_chunk(W, base, cache, prompt, t, t + 1)[0] for t in range(len(prompt))])  # one row a chunk
    plain = fx.forward(W, prompt, "interleaved", base)
    d_plain = np.abs(mine - plain).max()
    assert d_plain < 1e-10, d_plain
    # stored values carry 6 significant digits: allow half a unit of the 6th digit
    half_unit = 0.5 * 10.0 ** (np.floor(np.log10(np.maximum(np.abs(stored), 1e-30))) - 5)
    d_json = np.abs(mine - stored)
    assert np.all(d_json <= half_unit * (1 + 1e-9) + 1e-12), d_json.max()
    return d_plain, d_json.max(), (d_json / np.abs(stored)).max(), len(prompt)


def check_none_prefix(W, base, none_logits):
    worst, c1 = 0.0, 0
    for i, n in enumerate(SCHEDULE):
        c1 += n
        worst = max(worst, np.abs(fx.forward(W, TOKENS[:c1], "interleaved", base)[-1] - none_logits[i]).max())
    assert worst < 1e-10, worst
    return worst


# --- output -------------------------------------------------------------------------------------------------------
def sig7(v):
    return float(f"{v:.7g}")


def dump(obj, indent=0):
    """JSON with one line per list of scalars (compact, yet diffs stay readable)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (list, dict)) for v in obj):
        return "[\n" + ",\n".join(inner + dump(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, separators=(",", ":"))


def main():
    assert sum(SCHEDULE) == len(TOKENS)
    W, base = load_model()
    assert fx.layer_count(W) == 2 and base == fx.ROPE_BASE
    d_plain, d_json, r_json, n_prompt = check_against_fixtures(W, base)

    cases, summary = {}, {}
    for policy in POLICIES:
        logits, kept, decisions = run_policy(W, base, policy)
        margins = [d for d in decisions if "margin" in d]
        worst = min(margins, key=lambda d: d["margin"]) if margins else None
        min_margin = None
        if worst is not None:
            min_margin = int(worst["margin"]) if policy == "window" else sig7(worst["margin"])
        cases[policy] = {"logits": [[sig7(v) for v in row] for row in logits], "kept": kept,
                         "min_margin": min_margin}
        summary[policy] = (logits, kept, decisions, margins, worst)
    d_prefix = check_none_prefix(W, base, summary["none"][0])

    ref = {"model": MODEL, "tokens": TOKENS, "schedule": SCHEDULE, "budget": BUDGET, "sink_tokens": SINK,
           "recent_window": WINDOW, "cases": cases}
    with open(OUT, "w") as f:
        f.write(dump(ref) + "\n")

    print(f"wrote {os.path.relpath(OUT)} ({os.path.getsize(OUT)} bytes)")
    print(f"none vs make_llama_fixtures: forward() on reference prompt ({n_prompt} tokens, one row per chunk) "
          f"max |diff| {d_plain:.2e}; vs reference.json (6 digits) max |diff| {d_json:.2e} (rel {r_json:.2e}); "
          f"every chunk's last row vs forward() on the prefix max |diff| {d_prefix:.2e}")
    none_logits = summary["none"][0]
    loud = []
    for policy in POLICIES:
        logits, kept, decisions, margins, worst = summary[policy]
        diff = np.abs(logits - none_logits).max(axis=1)
        first = next((i for i, v in enumerate(diff) if v > 0), None)
        print(f"\n[{policy}] decisions {len(decisions)}, logits differ from none from chunk {first} on, "
              f"max |diff| {diff.max():.3g}")
        if worst is not None:
            if policy == "window":
                print(f"  min margin {int(worst['margin'])} position(s)")
            else:
                print(f"  min margin {worst['margin']:.6g} (rel {worst['rel_margin']:.3g}) at chunk {worst['chunk']} "
                      f"count {worst['count']} layer {worst['layer']} head {worst['head']}: evicted "
                      f"{worst['last_evicted']} score {worst['scores'][0]:.9g}, kept {worst['first_kept']} "
                      f"score {worst['scores'][1]:.9g}")
                rel = sorted(margins, key=lambda d: d["rel_margin"])
                print("  smallest relative margins: " + ", ".join(
                    f"{d['rel_margin']:.3g} (c{d['count']} L{d['layer']}H{d['head']} {d['last_evicted']}|"
                    f"{d['first_kept']})" for d in rel[:4]))
                for d in margins:
                    if d["rel_margin"] < NEAR_TIE:
                        loud.append((policy, d))
        for h, ks in enumerate(kept[0]):
            print(f"  layer 0 head {h} kept: {ks}")
        if policy != "none":
            print(f"  layer 1 kept: {kept[1]}")
    for policy, d in loud:
        exact = d["scores"][0] == d["scores"][1]
        print(f"\n!!! WARNING {policy}: {'EXACT TIE' if exact else 'NEAR TIE'} at count {d['count']} layer "
              f"{d['layer']} head {d['head']}: evicted {d['last_evicted']} (score {d['scores'][0]!r}) vs kept "
              f"{d['first_kept']} (score {d['scores'][1]!r}), rel margin {d['rel_margin']:.3g}"
              + (" -- decided by the tie rule (smaller position first)" if exact else
                 " -- a float32 engine may decide the other way"))


if __name__ == "__main__":
    main()
