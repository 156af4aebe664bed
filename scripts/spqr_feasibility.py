#!/usr/bin/env python3
"""Can a 3-bit base plus at most 1% high-precision outliers (SpQR, Dettmers et al. 2023) stay within 3% of Q4_1's
perplexity on SmolLM2-135M while storing fewer bytes? Evidence gathered before writing the kernels.

For each recipe the layer projections (blk.N.attn_q|k|v|output, ffn_gate|up|down) of the F16 model are quantized
in numpy, decoded again and written into a copy of the F16 file; the token embedding goes through Q4_1 (what
`tern convert --type q4_1` stores it as; some recipes try Q5_1 or Q5_0), everything else is copied. (The F16
file was made from the Q4_1 release, so its projections sit on a Q4_1 grid: Q4_1 loses almost nothing on them,
and dense Q4_1's loss against F16 is its Q4_1 embedding and its 8-bit activations.) `tern perplexity` then scores
Tests/Fixtures/smollm2/essay.txt at context 512 (the command of scripts/bench_sparse.sh). The decoded model runs
with float activations, so the figure leaves out the Q8 rounding of activations the real kernels add.

A recipe: groups of G consecutive columns of a row share a scale d and a min m (w ≈ d·q + m, q in 0..7); d and m
are stored as f16, or as 8-bit multiples of per-row f16 super-scales ("s8"). (d, m) is chosen per group by a
search over candidate ranges followed by weighted least squares, the weight of column j being its importance:
the mean square of that input over a calibration text (Tests/Fixtures/longtext/licenses.txt, first 4096
tokens, the statistics Tern's Wanda pruning collects) — or 1 for "uniform". Outliers: the given fraction of each
matrix's weights with the largest importance-weighted error after a first fit leave their group's fit, which is
then redone; each keeps the f16 residual w − base(w) with its u16 column, rows pointed at by u32 offsets.
Bits per weight count everything stored for the projections: 3-bit values, scales, mins, super-scales, outlier
values, indices and row pointers.

Measured 2026-11-30 (AMD EPYC, 2 threads; target: Q4_1's 20.33 + 3% = 20.94, fewer bytes than its 85976128-B file):

| recipe | bits/w (projections) | tensor bytes | ppl, float act. | ppl, 8-bit act. |
|---|---:|---:|---:|---:|
| q4_1-reference (GGML Q4_1; checks the pipeline: Tern's own Q4_1 file gives 20.33) | 5.000 | 84190464 | 20.23 | 20.29 |
| g16-s8-1% (calibration-weighted fit) | 4.414 | 76410624 | 23.32 | 23.36 |
| g16-s8-1%, embedding Q5_1 | 4.414 | 79949568 | 22.70 | 22.74 |
| g16-s8-1%-uniform (no calibration) | 4.414 | 76410624 | 35.19 | 35.21 |
| g32-f16-1% | 4.367 | 75788544 | 26.07 | 26.29 |
| gptq-g16-s8-1%, embedding Q5_1 | 4.414 | 79949568 | 23.93 | 24.06 |

No recipe reaches 20.94: the best (22.70) is 12% above Q4_1. Weighting the fit by the calibration statistics
matters most (35.2 → 23.3); 16-column groups with 8-bit scales beat 32-column groups with f16 ones at the same
bits; this GPTQ pass did worse than the plain weighted fit (its super-scales are fixed from a first fit and its
outliers chosen before it runs; not tuned further).

Usage: python3 scripts/spqr_feasibility.py [RECIPE ...]   (recipes named as in RECIPES; default all)
Prints one line per recipe: name, bits/weight of the projections, bytes of all tensors as Tern would store them,
perplexity with float activations (the decoded F16 file) and with 8-bit activations (the decoded weights
requantized to Q8_0, which makes Tern quantize activations as its SpQR kernels do; slightly pessimistic).
"""
import json
import math
import os
import shutil
import subprocess
import sys

import gguf
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.f16.gguf")
if not os.path.exists(SRC):
    SRC = "/work/main/models/SmolLM2-135M-Instruct.f16.gguf"
TERN = os.environ.get("TERN", os.path.join(ROOT, ".build", "release", "tern"))
ESSAY = os.path.join(ROOT, "Tests", "Fixtures", "smollm2", "essay.txt")
CALIB = os.path.join(ROOT, "Tests", "Fixtures", "longtext", "licenses.txt")
WORK = os.environ.get("SPQR_WORK", "/tmp/spqr")
PROJ = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
INPUT_OF = {"attn_q": "attn", "attn_k": "attn", "attn_v": "attn", "attn_output": "attn_out",
            "ffn_gate": "ffn", "ffn_up": "ffn", "ffn_down": "ffn_down"}

# name: (group size, scale storage, outlier fraction, importance[, embedding type, Q4_1 when not given])
RECIPES = {
    "q4_1-reference": (32, "q4_1", 0.0, "none"),  # the pipeline's check: GGML's Q4_1, 5 bits/weight
    "g32-f16-0%-uniform": (32, "f16", 0.0, "uniform"),
    "g32-f16-0%": (32, "f16", 0.0, "act"),
    "g32-f16-1%": (32, "f16", 0.01, "act"),
    "g16-s8-0%": (16, "s8", 0.0, "act"),
    "g16-s8-0.5%": (16, "s8", 0.005, "act"),
    "g16-s8-1%": (16, "s8", 0.01, "act"),
    "g16-s8-1%-uniform": (16, "s8", 0.01, "uniform"),
    "gptq-g32-f16-0%": (32, "f16", 0.0, "gptq"),
    "gptq-g32-f16-1%": (32, "f16", 0.01, "gptq"),
    "gptq-g16-s8-1%": (16, "s8", 0.01, "gptq"),
    # the embedding (also the tied output) in Q5_1 or Q5_0 instead of Q4_1: the bytes the base saves spent
    # where Q4_1 loses most (`tern convert --type q5_1 --outliers ...`)
    "g16-s8-1%-emb-q5_1": (16, "s8", 0.01, "act", "Q5_1"),
    "g16-s8-1%-emb-q5_0": (16, "s8", 0.01, "act", "Q5_0"),
    "q4_1-reference-emb-q5_1": (32, "q4_1", 0.0, "none", "Q5_1"),
    "gptq-g16-s8-1%-emb-q5_1": (16, "s8", 0.01, "gptq", "Q5_1"),
}


def field(reader, key):
    f = reader.fields[key]
    return f.parts[f.data[0]][0]


def load():
    r = gguf.GGUFReader(SRC)
    W = {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        W[t.name] = np.asarray(t.data, dtype=np.float32).reshape(shape if len(shape) > 1 else [-1])
    cfg = dict(NL=int(field(r, "llama.block_count")), D=int(field(r, "llama.embedding_length")),
               NH=int(field(r, "llama.attention.head_count")), NKV=int(field(r, "llama.attention.head_count_kv")),
               EPS=float(field(r, "llama.attention.layer_norm_rms_epsilon")),
               BASE=float(field(r, "llama.rope.freq_base")))
    return W, cfg


def activation_stats(W, cfg):
    """Mean square of every input column of every projection over the calibration text (float32 forward)."""
    cache = os.path.join(WORK, "stats.npz")
    if os.path.exists(cache):
        return dict(np.load(cache))
    toks = json.loads(subprocess.check_output([TERN, "tokenize", "--model", SRC, "--text", open(CALIB).read()]))
    toks = toks[:4096]
    NL, D, NH, NKV, EPS = cfg["NL"], cfg["D"], cfg["NH"], cfg["NKV"], cfg["EPS"]
    HD = D // NH
    inv = cfg["BASE"] ** (-np.arange(0, HD, 2, dtype=np.float64) / HD)
    sums = {}

    def add(key, x):
        x = x.astype(np.float32)
        sums[key] = sums.get(key, 0) + x.T @ x

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w

    def rope(x, pos):
        ang = pos[:, None, None] * inv[None, None, :]
        c, s = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        a, b = x[..., 0::2], x[..., 1::2]
        o = np.empty_like(x)
        o[..., 0::2] = a * c - b * s
        o[..., 1::2] = b * c + a * s
        return o

    for s in range(0, len(toks), 512):
        piece = toks[s:s + 512]
        T = len(piece)
        pos = np.arange(T, dtype=np.float64)
        x = W["token_embd.weight"][np.asarray(piece)]
        mask = np.arange(T)[None, :] > np.arange(T)[:, None]
        for l in range(NL):
            p = f"blk.{l}."
            h = rms(x, W[p + "attn_norm.weight"])
            add((l, "attn"), h)
            q = rope((h @ W[p + "attn_q.weight"].T).reshape(T, NH, HD), pos)
            k = rope((h @ W[p + "attn_k.weight"].T).reshape(T, NKV, HD), pos)
            v = (h @ W[p + "attn_v.weight"].T).reshape(T, NKV, HD)
            att = np.empty((T, NH, HD), dtype=np.float32)
            for hq in range(NH):
                kv = hq // (NH // NKV)
                sc = q[:, hq] @ k[:, kv].T / math.sqrt(HD)
                sc[mask] = -np.inf
                sc = np.exp(sc - sc.max(axis=1, keepdims=True))
                att[:, hq] = (sc / sc.sum(axis=1, keepdims=True)) @ v[:, kv]
            a = att.reshape(T, NH * HD)
            add((l, "attn_out"), a)
            x = x + a @ W[p + "attn_output.weight"].T
            h = rms(x, W[p + "ffn_norm.weight"])
            add((l, "ffn"), h)
            g = h @ W[p + "ffn_gate.weight"].T
            u = h @ W[p + "ffn_up.weight"].T
            m = g / (1 + np.exp(-g)) * u
            add((l, "ffn_down"), m)
            x = x + m @ W[p + "ffn_down.weight"].T
    out = {f"{l}.{k}": v / len(toks) for (l, k), v in sums.items()}  # Gram matrices X^T X / N
    os.makedirs(WORK, exist_ok=True)
    np.savez(cache, **out)
    return out


def f16(x):
    return x.astype(np.float16).astype(np.float32)


def fit(w, a, steps=(-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.9)):
    """Per group (last axis) the (d, m) of w ≈ d·q + m, q = 0..7, minimizing Σ a·err²; returns d, m."""
    big = np.float32(3e38)
    has = a > 0
    mn = np.where(has, w, big).min(axis=-1)
    mx = np.where(has, w, -big).max(axis=-1)
    empty = ~has.any(axis=-1)
    mn[empty], mx[empty] = 0, 0
    best_err = np.full(w.shape[:-1], np.inf)
    best_d = (mx - mn) / 7
    best_m = mn.copy()
    for st in steps:
        d0 = (mx - mn) / (7 + st)
        d0 = np.where(d0 > 0, d0, 1)
        for shift in (0.0, 0.5):
            m0 = mn - shift * st * d0 / 2 if st else mn
            q = np.clip(np.rint((w - m0[..., None]) / d0[..., None]), 0, 7)
            S, Sq, Sqq = a.sum(-1), (a * q).sum(-1), (a * q * q).sum(-1)
            Sw, Sqw = (a * w).sum(-1), (a * q * w).sum(-1)
            det = S * Sqq - Sq * Sq
            ok = det > 1e-20 * np.maximum(S * Sqq, 1e-30)
            d = np.where(ok, (S * Sqw - Sq * Sw) / np.where(ok, det, 1), d0)
            m = np.where(ok, (Sqq * Sw - Sq * Sqw) / np.where(ok, det, 1), m0)
            d = np.maximum(d, 0)
            dd = np.where(d > 0, d, 1)
            q = np.clip(np.rint((w - m[..., None]) / dd[..., None]), 0, 7)
            err = (a * (w - d[..., None] * q - m[..., None]) ** 2).sum(-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_d = np.where(better, d, best_d)
            best_m = np.where(better, m, best_m)
    best_d[empty], best_m[empty] = 0, 0
    return best_d, best_m


def store_scales(d, m, how):
    """d, m: [R, groups] -> what reads back from the file, and bits used per row."""
    if how == "f16":
        return f16(d), f16(m), d.shape[1] * 32
    # s8: d = D·u8, m = M·i8 with per-row f16 super-scales D, M
    D = f16(d.max(axis=1) / 255)
    M = f16(np.abs(m).max(axis=1) / 127)
    Dd = np.where(D > 0, D, 1)[:, None]
    Mm = np.where(M > 0, M, 1)[:, None]
    qd = np.clip(np.rint(d / Dd), 0, 255)
    qm = np.clip(np.rint(m / Mm), -127, 127)
    return qd * D[:, None], qm * M[:, None], d.shape[1] * 16 + 32


def quantize(W, imp, G, how, frac):
    """Returns the decoded matrix and its stored bits."""
    R, C = W.shape
    w = W.reshape(R, C // G, G)
    a = np.broadcast_to(imp.reshape(1, C // G, G), w.shape).astype(np.float32).copy()

    def base(a):
        d, m = fit(w, a)
        d, m, sbits = store_scales(d, m, how)
        dd = np.where(d > 0, d, 1)[..., None]
        q = np.clip(np.rint((w - m[..., None]) / dd), 0, 7)
        return (d[..., None] * q + m[..., None]).reshape(R, C), sbits

    deq, sbits = base(a)
    bits = R * C * 3 + R * sbits
    if frac > 0:
        n = int(frac * R * C)
        err = (imp[None, :] * (W - deq) ** 2).reshape(-1)
        idx = np.argpartition(-err, n)[:n]
        out = np.zeros(R * C, dtype=bool)
        out[idx] = True
        a = a.reshape(-1)
        a[out] = 0
        deq, sbits = base(a.reshape(w.shape))
        flat = deq.reshape(-1)
        flat[out] += f16(W.reshape(-1)[out] - flat[out])
        deq = flat.reshape(R, C)
        bits += n * 32 + (R + 1) * 32
    return deq, bits


def gptq(W, H, imp, G, how, frac, block=128):
    """GPTQ (Frantar et al. 2022) over columns in order: each column is quantized with its group's (d, m),
    fitted when the group starts on the weights as updated so far, and its error is spread over the columns not
    yet quantized through the Cholesky factor of H^-1. Outliers (chosen as in `quantize`, from a first fit) are
    kept exactly and spread no error."""
    R, C = W.shape
    H = H + 0.01 * np.mean(np.diag(H)) * np.eye(C)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: H^-1 = U^T U
    out = np.zeros((R, C), dtype=bool)
    deq0, _ = quantize(W, imp, G, how, 0.0)
    n = int(frac * R * C)
    if n:
        err = (imp[None, :] * (W - deq0) ** 2).reshape(-1)
        out.reshape(-1)[np.argpartition(-err, n)[:n]] = True
    # s8 super-scales come from a first fit of the original weights; later group scales are clipped to them.
    if how == "s8":
        d0, m0 = fit(W.reshape(R, C // G, G), np.where(out, 0, imp[None, :]).reshape(R, C // G, G).astype(np.float32))
        Dsup = f16(d0.max(axis=1) / 255)
        Msup = f16(np.abs(m0).max(axis=1) / 127)
    Wc = W.astype(np.float64).copy()
    Q = np.zeros_like(Wc)
    for b0 in range(0, C, block):
        b1 = min(C, b0 + block)
        Err = np.zeros((R, b1 - b0))
        for j in range(b0, b1):
            if j % G == 0:
                a = np.where(out[:, j:j + G], 0, imp[None, j:j + G]).astype(np.float32)
                d, m = fit(Wc[:, j:j + G].astype(np.float32), a)
                if how == "f16":
                    d, m = f16(d), f16(m)
                else:
                    Dd = np.where(Dsup > 0, Dsup, 1)
                    Mm = np.where(Msup > 0, Msup, 1)
                    d = np.clip(np.rint(d / Dd), 0, 255) * Dsup
                    m = np.clip(np.rint(m / Mm), -127, 127) * Msup
                dd = np.where(d > 0, d, 1)
            w = Wc[:, j]
            q = np.clip(np.rint((w - m) / dd), 0, 7)
            v = d * q + m
            o = out[:, j]
            v[o] = v[o] + f16(w[o] - v[o])
            Q[:, j] = v
            e = (w - v) / U[j, j]
            Wc[:, j + 1:b1] -= np.outer(e, U[j, j + 1:b1])
            Err[:, j - b0] = e
        Wc[:, b1:] -= Err @ U[b0:b1, b1:]
    sbits = (C // G) * 32 if how == "f16" else (C // G) * 16 + 32
    bits = R * C * 3 + R * sbits + (n * 32 + (R + 1) * 32 if n else 0)
    return Q.astype(np.float32), bits


def run(name, W, stats):
    G, how, frac, imp_kind = RECIPES[name][:4]
    emb = getattr(gguf.GGMLQuantizationType, RECIPES[name][4] if len(RECIPES[name]) > 4 else "Q4_1")
    dst = os.path.join(WORK, name + ".gguf")
    shutil.copy(SRC, dst)
    r = gguf.GGUFReader(dst, "r+")
    bits = weights = 0
    other_bytes = 0
    for t in r.tensors:
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            q = gguf.quants.quantize(W[t.name], emb)
            t.data[...] = gguf.quants.dequantize(q, emb).astype(np.float16)
            other_bytes += q.nbytes
        elif len(parts) == 4 and parts[0] == "blk" and parts[2] in PROJ:
            l, kind = int(parts[1]), parts[2]
            Wm = W[t.name]
            if how == "q4_1":
                q = gguf.quants.quantize(Wm, gguf.GGMLQuantizationType.Q4_1)
                t.data[...] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q4_1).astype(np.float16)
                bits += q.nbytes * 8
                weights += Wm.size
                continue
            if imp_kind == "uniform":
                imp = np.ones(Wm.shape[1], dtype=np.float32)
            else:
                H = stats[f"{l}.{INPUT_OF[kind]}"].astype(np.float64)
                s = np.diag(H).astype(np.float32)
                imp = s + 1e-3 * s.mean()
            if imp_kind == "gptq":
                deq, b = gptq(Wm, H, imp, G, how, frac)
            else:
                deq, b = quantize(Wm, imp, G, how, frac)
            t.data[...] = deq.astype(np.float16)
            bits += b
            weights += Wm.size
        else:
            other_bytes += t.data.nbytes
    del r
    proj_bytes = bits / 8

    def ppl(path):
        out = subprocess.run(["nice", "-n", "19", TERN, "perplexity", "--model", path, "--file", ESSAY,
                              "--context", "512", "--threads", "2"], capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("ppl:")]
        return lines[0].split()[1] if lines else out.stderr.strip()

    # F16 weights run with float activations; the real kernels give the base 8-bit activations. Requantizing
    # the decoded weights to Q8_0 (a small extra weight error) makes Tern quantize activations too: a
    # conservative stand-in for the real kernels.
    q8 = dst[:-5] + "-q8_0.gguf"
    subprocess.run(["nice", "-n", "19", TERN, "convert", "--model", dst, "--type", "q8_0", "--output", q8],
                   check=True, capture_output=True)
    p_f16, p_q8 = ppl(dst), ppl(q8)
    os.remove(dst)
    os.remove(q8)
    print(f"{name:24s} {bits / weights:6.3f} bits/w  tensors {proj_bytes + other_bytes:12.0f} B  "
          f"ppl float-act {p_f16}  ppl q8_0/8-bit-act {p_q8}", flush=True)


def main():
    os.makedirs(WORK, exist_ok=True)
    W, cfg = load()
    stats = activation_stats(W, cfg)
    names = sys.argv[1:] or list(RECIPES)
    for n in names:
        run(n, W, stats)


if __name__ == "__main__":
    main()
