#!/usr/bin/env python3
"""Would self-drafting pay for SmolLM2? (issue 12: "the served model's first layers plus its output head,
LayerSkip-style, training-free; keep it only if it measures faster").

Runs the float64 reference forward of scripts/make_smollm2_float_reference.py over a chat-formatted text (teacher
forcing) and, after each of a few layer counts L, applies the final norm and the output head: the share of positions
where that early exit's argmax equals the full model's argmax is the acceptance a greedy self-draft of depth L would
get. Its cost per drafted token is about L/NL of the layers plus the whole output head, which is printed beside it
with the best speedup a draft of that depth could give under the measured step curve of README's speculation table.
Usage: python3 scripts/measure_self_draft.py   (about a minute)
"""
import os, subprocess, sys
import numpy as np

sys.argv = sys.argv[:1]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_smollm2_float_reference as ref  # noqa: E402  (loads the model's weights)

ROOT = ref.ROOT
TEXT = ("<|im_start|>user\nWrite a short story about a lighthouse keeper who finds a message in a bottle.<|im_end|>\n"
        "<|im_start|>assistant\nThe lighthouse stood at the end of a long spit of sand, and every evening at dusk the "
        "keeper climbed its one hundred and twelve steps to light the lamp. He had done this for thirty years. One "
        "morning, walking along the shore after a storm, he found a green glass bottle half buried in the sand. Inside "
        "was a letter, rolled tight and tied with a faded ribbon. He carried it home, set it on the kitchen table, and "
        "for a long time he only looked at it.")
ids = [int(t) for t in subprocess.check_output([os.path.join(ROOT, ".build/release/tern"), "tokenize", "--special",
                                                 "--text", TEXT], text=True).strip().strip("[]").split(",")]
T = len(ids)
DEPTHS = [4, 8, 12, 16, 20, 24]
x = ref.W["token_embd.weight"][np.asarray(ids)]
pos = np.arange(T, dtype=np.float64)
exits = {}
for l in range(ref.NL):
    p = f"blk.{l}."
    W = ref.W
    h = ref.rms(x, W[p + "attn_norm.weight"])
    q = ref.rope((h @ W[p + "attn_q.weight"].T).reshape(T, ref.NH, ref.HD), pos)
    k = ref.rope((h @ W[p + "attn_k.weight"].T).reshape(T, ref.NKV, ref.HD), pos)
    v = (h @ W[p + "attn_v.weight"].T).reshape(T, ref.NKV, ref.HD)
    mask = np.arange(T)[None, :] > np.arange(T)[:, None]
    att = np.empty((T, ref.NH, ref.HD))
    for hq in range(ref.NH):
        kv = hq // (ref.NH // ref.NKV)
        sc = q[:, hq] @ k[:, kv].T / np.sqrt(ref.HD)
        sc[mask] = -np.inf
        sc = np.exp(sc - sc.max(axis=1, keepdims=True))
        att[:, hq] = (sc / sc.sum(axis=1, keepdims=True)) @ v[:, kv]
    x = x + att.reshape(T, ref.NH * ref.HD) @ W[p + "attn_output.weight"].T
    h = ref.rms(x, W[p + "ffn_norm.weight"])
    g = h @ W[p + "ffn_gate.weight"].T
    u = h @ W[p + "ffn_up.weight"].T
    x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
    if l + 1 in DEPTHS or l + 1 == ref.NL:
        exits[l + 1] = np.argmax(ref.rms(x, W["output_norm.weight"]) @ ref.OUT.T, axis=1)
full = exits[ref.NL]
head = ref.OUT.size
per_layer = sum(ref.W[f"blk.0.{n}.weight"].size for n in ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"])
total = head + ref.NL * per_layer
# README's calibrated step curve (ms): a draft of k tokens verified in one pass of k+1 rows.
step = {1: 8.6, 2: 11.5, 5: 21.8, 9: 40.5}
def t(n):
    ks = sorted(step)
    for a, b in zip(ks, ks[1:]):
        if a <= n <= b:
            return step[a] + (step[b] - step[a]) * (n - a) / (b - a)
    return step[9] + (n - 9) * (step[9] - step[5]) / 4
print(f"{T} positions; full model = {ref.NL} layers; output head {head / total:.0%} of the weights")
print("| exit after L layers | agrees with the full model | draft cost per token | best speedup with a draft (k = 1…8; no draft: 1×) |")
print("|---|---|---|---|")
for L in DEPTHS:
    a = float(np.mean(exits[L] == full))
    cost = (head + L * per_layer) / total  # a draft token, relative to a one-token decode
    best = max(((1 - a ** (k + 1)) / (1 - a) if a < 1 else k + 1) / ((t(k + 1) + k * cost * step[1]) / step[1])
               for k in range(1, 9))
    print(f"| {L} | {a:.0%} | {cost:.2f} | {best:.2f}× |")
