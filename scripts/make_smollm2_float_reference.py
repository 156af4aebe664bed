#!/usr/bin/env python3
"""Exact reference for the default model: SmolLM2-135M-Instruct Q4_1 evaluated in float64 numpy.

Weights are dequantized with gguf-py (`gguf.quants.dequantize`), then a plain float64 Llama forward pass
(RMSNorm, interleaved RoPE as GGUF llama files expect, grouped-query attention with a KV cache, SwiGLU, tied
output) runs the prompts of Tests/Fixtures/smollm2/llamacpp_reference.json. No activation is quantized, so
this is the function the checkpoint defines; quantized engines (llama.cpp, Tern's Q4_1 path) approximate it.

Writes Tests/Fixtures/smollm2/float_reference.json:
  {"cases": [{"name", "prompt_ids", "first_step_top10": [[id, logit]...],
              "greedy_ids": [32 ids], "top2_gap": [32 floats]}]}
Usage: python3 scripts/make_smollm2_float_reference.py [MODEL.gguf]   (about a minute)
"""
import json
import math
import os
import sys

import gguf
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
FIX = os.path.join(ROOT, "Tests", "Fixtures", "smollm2")
STEPS = 32


def field(reader, key):
    f = reader.fields[key]
    return f.parts[f.data[0]][0]


reader = gguf.GGUFReader(MODEL)
NL = int(field(reader, "llama.block_count"))
D = int(field(reader, "llama.embedding_length"))
NH = int(field(reader, "llama.attention.head_count"))
NKV = int(field(reader, "llama.attention.head_count_kv"))
EPS = float(field(reader, "llama.attention.layer_norm_rms_epsilon"))
BASE = float(field(reader, "llama.rope.freq_base"))
HD = D // NH
W = {}
for t in reader.tensors:
    a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
    shape = [int(x) for x in reversed(t.shape)]
    W[t.name] = a.reshape(shape) if len(shape) > 1 else a.reshape(-1)
OUT = W.get("output.weight", W["token_embd.weight"])
INV = BASE ** (-np.arange(0, HD, 2, dtype=np.float64) / HD)


def rms(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def rope(x, pos):
    """x: [T, heads, HD]; GGUF llama rows are permuted so rotated pairs are adjacent."""
    ang = pos[:, None, None] * INV[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., 0::2], x[..., 1::2]
    o = np.empty_like(x)
    o[..., 0::2] = a * c - b * s
    o[..., 1::2] = b * c + a * s
    return o


def forward(tokens, cache):
    """Appends tokens to the KV cache (list of (K, V) per layer) and returns their logits."""
    T = len(tokens)
    start = cache[0][0].shape[0]
    pos = np.arange(start, start + T, dtype=np.float64)
    x = W["token_embd.weight"][np.asarray(tokens)]
    for l in range(NL):
        p = f"blk.{l}."
        h = rms(x, W[p + "attn_norm.weight"])
        q = rope((h @ W[p + "attn_q.weight"].T).reshape(T, NH, HD), pos)
        k = rope((h @ W[p + "attn_k.weight"].T).reshape(T, NKV, HD), pos)
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, NKV, HD)
        K = np.concatenate([cache[l][0], k])
        V = np.concatenate([cache[l][1], v])
        cache[l] = (K, V)
        n = K.shape[0]
        mask = np.arange(n)[None, :] > (start + np.arange(T))[:, None]
        att = np.empty((T, NH, HD))
        for hq in range(NH):
            kv = hq // (NH // NKV)
            sc = q[:, hq] @ K[:, kv].T / math.sqrt(HD)
            sc[mask] = -np.inf
            sc = np.exp(sc - sc.max(axis=1, keepdims=True))
            att[:, hq] = (sc / sc.sum(axis=1, keepdims=True)) @ V[:, kv]
        x = x + att.reshape(T, NH * HD) @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
    return rms(x, W["output_norm.weight"]) @ OUT.T


def main():
    ref = json.load(open(os.path.join(FIX, "llamacpp_reference.json")))
    cases = []
    for c in ref["greedy"]:
        cache = [(np.zeros((0, NKV, HD)), np.zeros((0, NKV, HD))) for _ in range(NL)]
        logits = forward(c["prompt_ids"], cache)[-1]
        top10 = [[int(i), round(float(logits[i]), 5)] for i in np.argsort(-logits)[:10]]
        ids, gaps = [], []
        for _ in range(STEPS):
            order = np.argsort(-logits)
            ids.append(int(order[0]))
            gaps.append(round(float(logits[order[0]] - logits[order[1]]), 5))
            logits = forward([ids[-1]], cache)[-1]
        cases.append({"name": c["name"], "prompt_ids": c["prompt_ids"], "first_step_top10": top10,
                      "greedy_ids": ids, "top2_gap": gaps})
        print(c["name"], ids[:8], "min gap", min(gaps), file=sys.stderr)
    with open(os.path.join(FIX, "float_reference.json"), "w") as f:
        json.dump({"generator": "scripts/make_smollm2_float_reference.py (float64 numpy, dequantized weights)",
                   "model_sha256": ref["versions"]["model_sha256"], "cases": cases}, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
