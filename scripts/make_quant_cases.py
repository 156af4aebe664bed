#!/usr/bin/env python3
"""Writes Tests/Fixtures/quant/: random weight blocks of every type CKernels supports, with the values gguf-py
(an independent implementation of the GGML formats) dequantizes them to, plus float rows quantized by gguf-py
for the types it can quantize. Used by Tests/TernCoreTests/KernelTests.swift.

Files per type name T (lowercase, e.g. q4_k):
  T.raw      raw little-endian blocks
  T.deq.f32  gguf.quants.dequantize(T.raw) as little-endian float32
  T.src.f32  (quantizable types) a random float row
  T.q.raw    (quantizable types) gguf.quants.quantize(T.src.f32)
Run: python3 scripts/make_quant_cases.py  (deterministic: fixed seed)."""
import os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "quant")
rng = np.random.default_rng(20240611)


def f16(a):
    return np.asarray(a, dtype=np.float16).view(np.uint8).reshape(-1, 2)


def rand_bytes(nb, k):
    return rng.integers(0, 256, size=(nb, k), dtype=np.uint8)


def blocks(qt, nb):
    """nb valid random blocks of type qt: sane f16 scales, random quant bytes."""
    if qt == T.Q4_0:
        return np.concatenate([f16(rng.normal(0, 0.02, nb)), rand_bytes(nb, 16)], axis=1)
    if qt == T.Q4_1:
        return np.concatenate([f16(rng.uniform(0.001, 0.03, nb)), f16(rng.normal(0, 0.1, nb)), rand_bytes(nb, 16)], axis=1)
    if qt == T.Q5_0:
        return np.concatenate([f16(rng.normal(0, 0.01, nb)), rand_bytes(nb, 4), rand_bytes(nb, 16)], axis=1)
    if qt == T.Q5_1:
        return np.concatenate([f16(rng.uniform(0.001, 0.02, nb)), f16(rng.normal(0, 0.1, nb)), rand_bytes(nb, 4),
                               rand_bytes(nb, 16)], axis=1)
    if qt == T.Q8_0:
        return np.concatenate([f16(rng.normal(0, 0.002, nb)), rand_bytes(nb, 32)], axis=1)
    if qt == T.Q4_K:
        return np.concatenate([f16(rng.uniform(0.0001, 0.002, nb)), f16(rng.uniform(0.0001, 0.002, nb)),
                               rand_bytes(nb, 12), rand_bytes(nb, 128)], axis=1)
    if qt == T.Q5_K:
        return np.concatenate([f16(rng.uniform(0.0001, 0.001, nb)), f16(rng.uniform(0.0001, 0.002, nb)),
                               rand_bytes(nb, 12), rand_bytes(nb, 32), rand_bytes(nb, 128)], axis=1)
    if qt == T.Q6_K:
        return np.concatenate([rand_bytes(nb, 128), rand_bytes(nb, 64), rand_bytes(nb, 16),
                               f16(rng.normal(0, 0.0005, nb))], axis=1)
    raise ValueError(qt)


def write(name, arr):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(np.ascontiguousarray(arr).tobytes())


def main():
    os.makedirs(OUT, exist_ok=True)
    quantized = {T.Q4_0: 8, T.Q4_1: 8, T.Q5_0: 8, T.Q5_1: 8, T.Q8_0: 8, T.Q4_K: 2, T.Q5_K: 2, T.Q6_K: 2}
    for qt, nb in quantized.items():
        name = qt.name.lower()
        raw = blocks(qt, nb)
        deq = gguf.quants.dequantize(raw, qt).astype("<f4").reshape(-1)
        write(name + ".raw", raw)
        write(name + ".deq.f32", deq)

    # Float types: ordinary values plus edge cases (signed zero, half subnormals, half max, large/small floats).
    vals = rng.normal(0, 1, 256).astype(np.float32)
    vals[:8] = [0.0, -0.0, 6.1e-5, 5.96e-8, -3.0e-6, 65504.0, 1.0e30, -1.0e-30]
    with np.errstate(over="ignore"):
        f16raw = vals.astype(np.float16)
    f16raw[5] = np.float16(65504.0)
    f16raw[6] = np.float16(-2.0 ** -24)  # smallest subnormal
    write("f16.raw", f16raw.view(np.uint8))
    write("f16.deq.f32", gguf.quants.dequantize(f16raw.view(np.uint8), T.F16).astype("<f4"))
    bfraw = gguf.quants.quantize(vals, T.BF16)
    write("bf16.raw", bfraw)
    write("bf16.deq.f32", gguf.quants.dequantize(bfraw, T.BF16).astype("<f4"))
    write("f32.raw", vals)
    write("f32.deq.f32", vals)

    # Quantization cases: a float row and gguf-py's encoding of it.
    for qt in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.BF16):
        src = (rng.normal(0, 1, 512) * rng.uniform(0.01, 2.0, 16).repeat(32)).astype(np.float32)
        src[:4] = [0.0, 0.0, 0.0, 0.0]
        name = qt.name.lower()
        write(name + ".src.f32", src)
        write(name + ".q.raw", gguf.quants.quantize(src, qt).view(np.uint8))


if __name__ == "__main__":
    main()
