#!/usr/bin/env python3
"""Make tiny random Gemma 3 checkpoints and an independent float64 reference forward pass for them.

Run from anywhere:  python3 scripts/make_gemma3_fixtures.py   (needs scripts/requirements.txt; no torch)
Deterministic: running it twice gives byte-identical files.

Model shape: hidden 64, 2 query heads and 1 KV head of head_dim 48 (query width 96, not the hidden size), ffn 64,
vocab 320 (the byte-level tokenizer of scripts/make_llama_fixtures.py: the tokenizer is not what these cases test),
rms eps 1e-6, 6 layers in Gemma 3's pattern (layer i is global iff (i + 1) % 6 == 0: layers 0-4 local, 5 global),
sliding window 8, RoPE base 1e6 with linear scaling 2 on the global layer and base 1e4 unscaled on local layers.

Files written to Tests/Fixtures/gemma3/
  gemma3-f16.gguf     arch "gemma3" as llama.cpp's converter writes it: matrices F16, 1-D tensors F32, RMSNorm
                      weights stored as 1 + w, Q/K rows not permuted (NEOX RoPE), attention.sliding_window 8,
                      rope.scaling linear 2, no query_pre_attn_scalar (llama.cpp scales queries by 1/sqrt(head_dim)).
  gemma3-q8_0.gguf    the same with Q8_0 matrices.
  gemma3-hf/          HF Gemma3ForCausalLM: config.json (model_type gemma3_text, layer_types, sliding_window 8,
                      query_pre_attn_scalar 24, final_logit_softcapping 8, rope_scaling linear 2), model.safetensors
                      (F32, HF names, raw norm weights w for (1 + w)), tokenizer.json, tokenizer_config.json.
  reference.json      per checkpoint: float64 logits at every position of a 24-token prompt (BOS first), argmax,
                      and an 8-step greedy continuation.

The reference follows the equations (transformers' modeling_gemma3 and llama.cpp's gemma3 graph): x = E[t]·√d;
per layer h = rms(x)·g_in; q, k, v = h W; q, k = rms per head (·g_q, ·g_k); RoPE (NEOX); scores = q·k·s with s =
query_pre_attn_scalar^-1/2, causal, and on local layers only keys with q_pos − k_pos < window; o = softmax·v W_o;
x += rms(o)·g_post_attn; h = rms(x)·g_pre_ffn; x += rms(W_down(gelu_tanh(h W_gate) ⊙ h W_up))·g_post_ffn;
logits = rms(x)·g_out E^T, soft-capped as cap·tanh(logits/cap) when the config has a cap. g = 1 + w (HF).
Each case is computed from the weights read back from the written file. The script asserts that the window, the
local RoPE base, the query scale and the norm offset each change the logits, so a test cannot pass with one of
them wrong.
"""

import json
import math
import os
import sys

import numpy as np
import gguf
from gguf.quants import quantize, dequantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_llama_fixtures as mk  # noqa: E402  (shared tokenizer and safetensors helpers)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "gemma3")

DIM, N_LAYER, N_HEAD, N_KV, HEAD_DIM, FFN = 64, 6, 2, 1, 48, 64
VOCAB, EPS, CTX = mk.VOCAB, 1e-6, 128
WINDOW, PATTERN = 8, 6
ROPE_GLOBAL, ROPE_LOCAL, ROPE_SCALE = 1_000_000.0, 10_000.0, 2.0
HF_QUERY_SCALAR, HF_SOFTCAP = 24.0, 8.0
PROMPT_LEN, GREEDY_STEPS = 24, 8


def is_local(l):
    return (l + 1) % PATTERN != 0


def make_weights(seed):
    rng = np.random.default_rng(seed)

    def mat(o, i, gain=1.0):
        return (rng.standard_normal((o, i)) * gain / math.sqrt(i)).astype(np.float32)

    def norm(n, spread=0.2, centre=0.0):   # raw HF weights w; the norm multiplies by 1 + w
        return (centre + spread * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": (0.15 * rng.standard_normal((VOCAB, DIM))).astype(np.float32)}
    for l in range(N_LAYER):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(DIM)
        w[p + "self_attn.q_proj.weight"] = mat(N_HEAD * HEAD_DIM, DIM, 1.5)
        w[p + "self_attn.k_proj.weight"] = mat(N_KV * HEAD_DIM, DIM, 1.5)
        w[p + "self_attn.v_proj.weight"] = mat(N_KV * HEAD_DIM, DIM)
        w[p + "self_attn.q_norm.weight"] = norm(HEAD_DIM, 0.3, 0.5)
        w[p + "self_attn.k_norm.weight"] = norm(HEAD_DIM, 0.3, 0.5)
        w[p + "self_attn.o_proj.weight"] = mat(DIM, N_HEAD * HEAD_DIM)
        w[p + "post_attention_layernorm.weight"] = norm(DIM, 0.3, 1.5)
        w[p + "pre_feedforward_layernorm.weight"] = norm(DIM)
        w[p + "mlp.gate_proj.weight"] = mat(FFN, DIM, 2.0)
        w[p + "mlp.up_proj.weight"] = mat(FFN, DIM)
        w[p + "mlp.down_proj.weight"] = mat(DIM, FFN)
        w[p + "post_feedforward_layernorm.weight"] = norm(DIM, 0.3, 1.5)
    w["model.norm.weight"] = norm(DIM)
    return w


# --- reference forward pass (float64) -----------------------------------------------------------------------------
def rms(x, g):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * g


def rope_neox(x, positions, base):
    hd = x.shape[-1]
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = positions[:, None, None] * inv[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(W, tokens, norm_offset, query_scalar, softcap, window=WINDOW, local_base=ROPE_LOCAL):
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    g = lambda n: W[n] + norm_offset  # noqa: E731
    x = W["model.embed_tokens.weight"][np.asarray(tokens)] * math.sqrt(DIM)
    qi, ki = np.arange(T)[:, None], np.arange(T)[None, :]
    for l in range(N_LAYER):
        p = f"model.layers.{l}."
        local = is_local(l)
        h = rms(x, g(p + "input_layernorm.weight"))
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(T, N_HEAD, HEAD_DIM)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(T, N_KV, HEAD_DIM)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(T, N_KV, HEAD_DIM)
        q = rms(q, g(p + "self_attn.q_norm.weight"))
        k = rms(k, g(p + "self_attn.k_norm.weight"))
        if local:
            q, k = rope_neox(q, pos, local_base), rope_neox(k, pos, local_base)
        else:
            q, k = rope_neox(q, pos / ROPE_SCALE, ROPE_GLOBAL), rope_neox(k, pos / ROPE_SCALE, ROPE_GLOBAL)
        masked = ki > qi
        if local and window:
            masked |= (qi - ki) >= window   # llama.cpp: masked iff p1 - p0 >= n_swa
        att = np.empty((T, N_HEAD, HEAD_DIM))
        for hq in range(N_HEAD):
            kv = hq // (N_HEAD // N_KV)
            sc = q[:, hq] @ k[:, kv].T / math.sqrt(query_scalar)
            sc[masked] = -np.inf
            sc = np.exp(sc - sc.max(axis=1, keepdims=True))
            att[:, hq] = (sc / sc.sum(axis=1, keepdims=True)) @ v[:, kv]
        o = att.reshape(T, N_HEAD * HEAD_DIM) @ W[p + "self_attn.o_proj.weight"].T
        x = x + rms(o, g(p + "post_attention_layernorm.weight"))
        h = rms(x, g(p + "pre_feedforward_layernorm.weight"))
        f = (gelu_tanh(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
        x = x + rms(f, g(p + "post_feedforward_layernorm.weight"))
    x = rms(x, g("model.norm.weight"))
    logits = x @ W["model.embed_tokens.weight"].T
    if softcap:
        logits = softcap * np.tanh(logits / softcap)
    return logits


# --- files --------------------------------------------------------------------------------------------------------
GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
}


def gguf_name(n):
    if n == "model.embed_tokens.weight":
        return "token_embd.weight"
    if n == "model.norm.weight":
        return "output_norm.weight"
    parts = n.split(".")
    return f"blk.{parts[2]}." + GGUF_NAMES[".".join(parts[3:])]


def hf_name(g):
    inv = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if g in inv:
        return inv[g]
    _, l, rest = g.split(".", 2)
    return f"model.layers.{l}." + {v: k for k, v in GGUF_NAMES.items()}[rest]


def write_gguf(path, W, wtype, tok_meta):
    tokens, merges, types, bos, eos = tok_meta
    qt = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[wtype]
    w = gguf.GGUFWriter(path, "gemma3")
    w.add_name(f"tern-tiny-gemma3-{wtype}")
    w.add_block_count(N_LAYER)
    w.add_context_length(CTX)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(ROPE_GLOBAL)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(ROPE_SCALE)
    w.add_layer_norm_rms_eps(EPS)
    w.add_sliding_window(WINDOW)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if wtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(True)
    for name, arr in W.items():
        if arr.ndim == 1:   # llama.cpp's converter stores Gemma's RMSNorm weights as 1 + w
            w.add_tensor(gguf_name(name), (arr + 1).astype(np.float32))
        elif qt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gguf_name(name), arr.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), quantize(arr.astype(np.float32), qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_gguf(path):
    r = gguf.GGUFReader(path)
    assert mk.field_value(r, "general.architecture") == "gemma3"
    assert mk.field_value(r, "gemma3.attention.sliding_window") == WINDOW
    W = {}
    for t in r.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float64)
        assert list(data.shape) == [int(x) for x in t.shape][::-1], t.name
        W[hf_name(t.name)] = data
    return W


def hf_config(bos, eos):
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": DIM,
        "intermediate_size": FFN, "num_hidden_layers": N_LAYER, "num_attention_heads": N_HEAD,
        "num_key_value_heads": N_KV, "head_dim": HEAD_DIM, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": CTX, "rms_norm_eps": EPS, "rope_theta": ROPE_GLOBAL,
        "rope_local_base_freq": ROPE_LOCAL, "rope_scaling": {"rope_type": "linear", "factor": ROPE_SCALE},
        "sliding_window": WINDOW, "sliding_window_pattern": PATTERN,
        "layer_types": ["sliding_attention" if is_local(l) else "full_attention" for l in range(N_LAYER)],
        "query_pre_attn_scalar": HF_QUERY_SCALAR, "final_logit_softcapping": HF_SOFTCAP,
        "attn_logit_softcapping": None, "vocab_size": VOCAB, "tie_word_embeddings": True,
        "torch_dtype": "float32", "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": 0,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    tok, tokens, merges, types = mk.build_tokenizer()
    bos, eos = tok.token_to_id(mk.BOS_TOKEN), tok.token_to_id(mk.EOS_TOKEN)
    tok_meta = (tokens, merges, types, bos, eos)
    W0 = make_weights(seed=31337)
    rng = np.random.default_rng(7)
    prompt = [bos] + [int(t) for t in rng.integers(0, VOCAB - mk.N_SPECIAL, PROMPT_LEN - 1)]

    cases = []

    def add_case(checkpoint, fmt, weights, W, offset, scalar, softcap):
        logits = forward(W, prompt, offset, scalar, softcap)
        for t in (1, 7, 8, 9, 15, PROMPT_LEN - 1):   # causality: a prefix run gives the same row
            assert np.allclose(forward(W, prompt[: t + 1], offset, scalar, softcap)[-1], logits[t], atol=1e-9)
        # Every Gemma-specific piece must move the logits, or the case would not test it.
        for what, other in [
            ("window", forward(W, prompt, offset, scalar, softcap, window=0)),
            ("local rope base", forward(W, prompt, offset, scalar, softcap, local_base=ROPE_GLOBAL)),
            ("query scale", forward(W, prompt, offset, scalar * 2, softcap)),
            ("norm offset", forward(W, prompt, offset + 0.5, scalar, softcap)),
        ]:
            diff = np.abs(other - logits).max()
            assert diff > 0.05, (checkpoint, what, diff)
            if what == "window":   # positions inside the first window are unaffected
                assert np.abs(other[:WINDOW] - logits[:WINDOW]).max() < 1e-9
        mk.check_spread(logits, checkpoint)
        seq, gaps = list(prompt), []
        for _ in range(GREEDY_STEPS):
            last = forward(W, seq, offset, scalar, softcap)[-1]
            order = np.argsort(-last, kind="stable")
            gaps.append(float(last[order[0]] - last[order[1]]))
            seq.append(int(order[0]))
        cases.append({"checkpoint": checkpoint, "format": fmt, "weights": weights, "tokens": prompt,
                      "query_pre_attn_scalar": scalar, "final_logit_softcapping": softcap,
                      "argmax": [int(i) for i in np.argmax(logits, axis=1)],
                      "logits": [[mk.sig6(v) for v in row] for row in logits],
                      "greedy": seq[len(prompt):], "greedy_top2_gap": [mk.sig6(g) for g in gaps]})
        return logits

    for wtype in ["f16", "q8_0"]:
        fn = f"gemma3-{wtype}.gguf"
        write_gguf(os.path.join(OUT, fn), W0, wtype, tok_meta)
        W = read_gguf(os.path.join(OUT, fn))
        add_case(fn, "gguf", "f16" if wtype == "f16" else "dequantized q8_0", W, 0.0, float(HEAD_DIM), None)

    d = os.path.join(OUT, "gemma3-hf")
    mk.write_hf_dir(d, W0, hf_config(bos, eos), tok)
    W = mk.read_hf_dir(d)
    add_case("gemma3-hf", "safetensors", "f32", W, 1.0, HF_QUERY_SCALAR, HF_SOFTCAP)

    ref = {"generator": "scripts/make_gemma3_fixtures.py (float64 numpy reference)",
           "config": {"hidden_size": DIM, "layers": N_LAYER, "num_heads": N_HEAD, "num_kv_heads": N_KV,
                      "head_dim": HEAD_DIM, "ffn": FFN, "vocab_size": VOCAB, "sliding_window": WINDOW,
                      "local_layers": [is_local(l) for l in range(N_LAYER)]},
           "bos_token_id": bos, "eos_token_id": eos, "cases": cases}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} cases; prompt {prompt}")
    for c in cases:
        print(f"  {c['checkpoint']:18s} argmax={c['argmax']} greedy={c['greedy']}")


if __name__ == "__main__":
    main()
