#!/usr/bin/env python3
"""A random Mamba-1 checkpoint of mamba-130m's shape (d_model 768, 24 layers, d_inner 1536, d_state 16,
conv 4, dt_rank 48, vocab 50280, tied output) for speed measurements; its outputs mean nothing.
Usage: python3 scripts/make_mamba_bench_model.py OUT.gguf {f32|q8_0|q4_0}
Then: tern bench --model OUT.gguf --prompt-tokens 0 --gen-tokens 64 [--batch 8] [--depth 4096]
"""
import os
import sys

import gguf
import numpy as np
from gguf.quants import quantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_mamba_fixtures as M  # noqa: E402  (tokenizer metadata and type tables)

D, L, DI, DS, K, R, V = 768, 24, 1536, 16, 4, 48, 50280
rng = np.random.default_rng(0)
_, meta = M.tokenizer_meta()
tokens, merges, types, bos, eos = meta
wtype = sys.argv[2]
qt = M.QTYPES[wtype]
w = gguf.GGUFWriter(sys.argv[1], "mamba")
w.add_context_length(1 << 20); w.add_embedding_length(D); w.add_feed_forward_length(0); w.add_head_count(0)
w.add_block_count(L); w.add_ssm_conv_kernel(K); w.add_ssm_inner_size(DI); w.add_ssm_state_size(DS)
w.add_ssm_time_step_rank(R); w.add_layer_norm_rms_eps(1e-5); w.add_file_type(M.FILE_TYPES[wtype])
w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("gpt2"); w.add_token_list(tokens); w.add_token_types(types)
w.add_token_merges(merges); w.add_bos_token_id(bos); w.add_eos_token_id(eos)
def m(o, i):
    a = (rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i)).astype(np.float32)
    return (quantize(a, qt), qt) if qt != gguf.GGMLQuantizationType.F32 else (a, None)
def add(n, a):
    arr, raw = a
    if raw is None: w.add_tensor(n, arr)
    else: w.add_tensor(n, arr, raw_dtype=raw)
add("token_embd.weight", m(V, D))
for l in range(L):
    p = f"blk.{l}."
    w.add_tensor(p + "attn_norm.weight", np.ones(D, np.float32))
    add(p + "ssm_in.weight", m(2 * DI, D))
    w.add_tensor(p + "ssm_conv1d.weight", (0.5 * rng.standard_normal((DI, K))).astype(np.float32))
    w.add_tensor(p + "ssm_conv1d.bias", np.zeros(DI, np.float32))
    add(p + "ssm_x.weight", m(R + 2 * DS, DI))
    w.add_tensor(p + "ssm_dt.weight", (rng.standard_normal((DI, R)) / 7).astype(np.float32))
    w.add_tensor(p + "ssm_dt.bias", np.full(DI, -3.0, np.float32))
    w.add_tensor(p + "ssm_a", -np.tile(np.arange(1, DS + 1, dtype=np.float32), (DI, 1)))
    w.add_tensor(p + "ssm_d", np.ones(DI, np.float32))
    add(p + "ssm_out.weight", m(D, DI))
w.add_tensor("output_norm.weight", np.ones(D, np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
