#!/usr/bin/env python3
"""Make tiny random Llama-family checkpoints and an independent float64 reference forward pass for them.

Run from anywhere:  python3 scripts/make_llama_fixtures.py [--bf16]   (needs scripts/requirements.txt; no torch)
Output is deterministic (fixed seeds, fixed corpus): running it twice gives byte-identical files.
Model shape: hidden 64, 4 query heads / 2 KV heads (GQA) of head_dim 16, ffn 128, vocab 320, rms eps 1e-5,
context 128; llama has 2 layers, the qwen2 and llama3 variants 1 layer (keeps the folder near 3 MB).

Files written to Tests/Fixtures/llama/
  tokenizer.json            GPT-2 style byte-level BPE (tokenizers library): ids 0..255 are the 256 byte tokens in
                            GPT-2's byte->unicode order, then trained merges, then the control tokens
                            <|endoftext|> (bos), <|im_start|>, <|im_end|> (eos). Shared by every checkpoint below.
  llama-f32.gguf            GGUF v3, arch "llama", every tensor F32.
  llama-f16.gguf            same weights, matrices (incl. token_embd, output) F16, 1-D tensors F32.
  llama-q8_0.gguf           matrices Q8_0, 1-D tensors F32 (gguf.quants.quantize).
  llama-q4_0.gguf           matrices Q4_0, 1-D tensors F32.
  llama-q4_1.gguf           matrices Q4_1, 1-D tensors F32.
                            In all llama GGUFs attn_q / attn_k rows are permuted for llama.cpp's interleaved RoPE
                            (rotates pairs (x[2i], x[2i+1])), exactly as llama.cpp's HF converter does.
  llama-hf/                 HF layout of the same weights: config.json (LlamaForCausalLM), model.safetensors (F32,
                            HF names, rotate-half RoPE layout), tokenizer.json, tokenizer_config.json.
  llama-hf-sharded/         same as llama-hf, weights split over model-0000{1,2}-of-00002.safetensors plus
                            model.safetensors.index.json.
  llama-hf-bf16/            only with --bf16 (+250 KB, so not committed by default): llama-hf with every tensor
                            stored BF16 (round-to-nearest-even), and its own reference case.
  qwen2-f32.gguf            arch "qwen2": q/k/v biases, tied embeddings (no output.weight), NOT permuted
                            (llama.cpp runs qwen2 with NEOX = rotate-half RoPE).
  qwen2-hf/                 HF layout of the qwen2 weights (Qwen2ForCausalLM, no lm_head.weight).
  llama3-f32.gguf           the llama weights (layer 0 only) with Llama-3.1 RoPE: base 500000 and a
                            rope_freqs.weight F32 tensor of head_dim/2 frequency divisors (HF rope_type "llama3", factor 8, low 1, high 4,
                            original_max_position_embeddings 8192). Interleaved RoPE like llama.
  reference.json            float64 reference logits, one case per checkpoint above, for the prompt
                            bos + encode("Hello, the cat sat on the mat") (12 tokens); full logits at every position
                            (6 significant digits), argmax per position, 8-step greedy continuation. Schema: see
                            write_reference below.

The reference is written from the math here (no model library): embedding -> per layer
x += Wo attn(RoPE(Wq rms(x)), RoPE(Wk rms(x)), Wv rms(x)) with causal softmax(q.k/sqrt(head_dim)) and GQA
(query head h reads kv head h // (n_head / n_kv)); x += Wdown (silu(Wgate rms(x)) * Wup rms(x)); final rms norm;
logits = Wout x. Every checkpoint's reference is computed from the weights read back from the written file
(GGUF: gguf.GGUFReader + gguf.quants.dequantize; safetensors: our own reader, cross-checked with the
safetensors package when it is installed). For each GGUF the script runs the forward pass twice — on the GGUF
layout with the file's RoPE style, and on the un-permuted weights with rotate-half — and asserts they agree.
Quantized cases use the dequantized weights with float64 activations: an engine that also quantizes activations
(Q8 dot products, as llama.cpp does) lands further away than f32 rounding; compare those with a looser tolerance.
"""

import json
import math
import os
import struct
import sys

import jinja2
import numpy as np
import gguf
from gguf.quants import quantize, dequantize
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "llama")

# --- hyper-parameters -------------------------------------------------------------------------------------------
DIM, N_LAYER, N_HEAD, N_KV, HEAD_DIM, FFN = 64, 2, 4, 2, 16, 128
VOCAB, N_SPECIAL = 320, 3
EPS, CTX = 1e-5, 128
ROPE_BASE, ROPE_BASE_L3 = 10000.0, 500000.0
L3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
PROMPT_TEXT = "Hello, the cat sat on the mat"  # bos + its encoding must be <= 12 tokens
GREEDY_STEPS = 8

# ChatML; the trailing generation prompt is what an engine appends before sampling the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Small hand-written corpus: enough repeated words for ~60 merges, nothing copied from elsewhere.
CORPUS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "Hello world! Hello there, how are you today?",
    "The cat sat on the mat and the dog sat on the log.",
    "In 2024 there were 366 days; in 2023 there were 365.",
    "we are testing a tiny tokenizer for the tern inference server",
    "def main():\n    return 42\n",
] * 4


# --- tokenizer ----------------------------------------------------------------------------------------------------
def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Sorted-by-code-point initial alphabet == GPT-2's byte->unicode order, so ids 0..255 match GPT-2's byte tokens.
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - N_SPECIAL, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIALS)   # appended after the merges, GPT-2 style
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    bos = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B",
                                                       special_tokens=[(BOS_TOKEN, bos)])
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [None] * VOCAB
    for t, i in vocab.items():
        tokens[i] = t
    for s in SPECIALS:
        tokens[tok.token_to_id(s)] = s
    assert all(t is not None for t in tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    # GPT-2's byte->unicode table, rebuilt from its definition, to check the first 256 ids.
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = [b for b in range(256) if b not in printable]
    byte_chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]
    assert tokens[:256] == byte_chars, "byte tokens are not in GPT-2 order"
    return tok, tokens, merges, types


# --- weights ------------------------------------------------------------------------------------------------------
def make_weights(seed, qkv_bias=False, tied=False, n_layer=N_LAYER, out_gain=1.0):
    """HF-layout float32 weights; scales chosen so attention is not uniform and logits spread by a few units.

    out_gain scales o_proj/down_proj: with tied embeddings the residual's own embedding otherwise dominates and
    every position just predicts its input token."""
    rng = np.random.default_rng(seed)

    def mat(out_dim, in_dim, gain):
        return (rng.standard_normal((out_dim, in_dim)) * gain / math.sqrt(in_dim)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": (0.5 * rng.standard_normal((VOCAB, DIM))).astype(np.float32)}
    for l in range(n_layer):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(DIM)
        w[p + "self_attn.q_proj.weight"] = mat(N_HEAD * HEAD_DIM, DIM, 1.0)
        w[p + "self_attn.k_proj.weight"] = mat(N_KV * HEAD_DIM, DIM, 1.0)
        w[p + "self_attn.v_proj.weight"] = mat(N_KV * HEAD_DIM, DIM, 1.0)
        if qkv_bias:
            w[p + "self_attn.q_proj.bias"] = (0.2 * rng.standard_normal(N_HEAD * HEAD_DIM)).astype(np.float32)
            w[p + "self_attn.k_proj.bias"] = (0.2 * rng.standard_normal(N_KV * HEAD_DIM)).astype(np.float32)
            w[p + "self_attn.v_proj.bias"] = (0.2 * rng.standard_normal(N_KV * HEAD_DIM)).astype(np.float32)
        w[p + "self_attn.o_proj.weight"] = mat(DIM, N_HEAD * HEAD_DIM, out_gain)
        w[p + "post_attention_layernorm.weight"] = norm(DIM)
        w[p + "mlp.gate_proj.weight"] = mat(FFN, DIM, 1.0)
        w[p + "mlp.up_proj.weight"] = mat(FFN, DIM, 1.0)
        w[p + "mlp.down_proj.weight"] = mat(DIM, FFN, out_gain)
    w["model.norm.weight"] = norm(DIM)
    if not tied:
        w["lm_head.weight"] = mat(VOCAB, DIM, 3.0)
    return w


def permute_rows(W, n_heads):
    """Rotate-half row order -> interleaved: within a head, new row 2i+j is old row j*(head_dim/2)+i."""
    hd = W.shape[0] // n_heads
    return W.reshape(n_heads, 2, hd // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def unpermute_rows(W, n_heads):
    hd = W.shape[0] // n_heads
    return W.reshape(n_heads, hd // 2, 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def llama3_rope_divisors(head_dim, base, s):
    """Per-frequency divisors of Llama 3.1 RoPE scaling (the value llama.cpp stores in rope_freqs.weight)."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    old = s["original_max_position_embeddings"]
    lo_wl, hi_wl = old / s["low_freq_factor"], old / s["high_freq_factor"]
    out = np.empty_like(inv_freq)
    for i, wl in enumerate(wavelen):
        if wl < hi_wl:            # high frequency: untouched
            out[i] = 1.0
        elif wl > lo_wl:          # low frequency: slowed down by the full factor
            out[i] = s["factor"]
        else:                     # in between: interpolate the frequency, then express it as a divisor
            smooth = (old / wl - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
            out[i] = 1.0 / ((1 - smooth) / s["factor"] + smooth)
    return out


# --- reference forward pass (float64) -----------------------------------------------------------------------------
def rms(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def rope(x, positions, base, style, divisors=None):
    """x: [T, heads, head_dim]."""
    hd = x.shape[-1]
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    if divisors is not None:
        inv = inv / divisors
    ang = positions[:, None, None] * inv[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    out = np.empty_like(x)
    if style == "neox":
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        out[..., : hd // 2] = a * c - b * s
        out[..., hd // 2:] = b * c + a * s
    elif style == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = b * c + a * s
    else:
        raise ValueError(style)
    return out


def layer_count(W):
    return sum(1 for n in W if n.endswith("input_layernorm.weight"))


def forward(W, tokens, style, base, divisors=None):
    """W: HF names, float64, q/k rows in whichever layout matches `style`. Returns logits [T, vocab]."""
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    x = W["model.embed_tokens.weight"][np.asarray(tokens)]
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    group = N_HEAD // N_KV
    for l in range(layer_count(W)):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = h @ W[p + "self_attn.q_proj.weight"].T
        k = h @ W[p + "self_attn.k_proj.weight"].T
        v = h @ W[p + "self_attn.v_proj.weight"].T
        if p + "self_attn.q_proj.bias" in W:
            q = q + W[p + "self_attn.q_proj.bias"]
            k = k + W[p + "self_attn.k_proj.bias"]
            v = v + W[p + "self_attn.v_proj.bias"]
        q = rope(q.reshape(T, N_HEAD, HEAD_DIM), pos, base, style, divisors)
        k = rope(k.reshape(T, N_KV, HEAD_DIM), pos, base, style, divisors)
        v = v.reshape(T, N_KV, HEAD_DIM)
        att = np.empty((T, N_HEAD, HEAD_DIM))
        for hq in range(N_HEAD):
            kv = hq // group
            sc = q[:, hq] @ k[:, kv].T / math.sqrt(HEAD_DIM)
            sc[mask] = -np.inf
            sc = np.exp(sc - sc.max(axis=1, keepdims=True))
            att[:, hq] = (sc / sc.sum(axis=1, keepdims=True)) @ v[:, kv]
        x = x + att.reshape(T, N_HEAD * HEAD_DIM) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"])
    out = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ out.T


def greedy(W, prompt, style, base, divisors, steps):
    """Argmax decoding without stopping at eos; also the top1-top2 logit gap of each step (small = fragile)."""
    seq, gaps = list(prompt), []
    for _ in range(steps):
        last = forward(W, seq, style, base, divisors)[-1]
        order = np.argsort(-last, kind="stable")
        gaps.append(float(last[order[0]] - last[order[1]]))
        seq.append(int(order[0]))
    return seq[len(prompt):], gaps


# --- GGUF ---------------------------------------------------------------------------------------------------------
GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def hf_to_gguf_name(name):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")
    return f"blk.{parts[2]}." + GGUF_NAMES[".".join(parts[3:])]


def gguf_to_hf_name(name):
    inv = {hf_to_gguf_name(n): n for n in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]}
    if name in inv:
        return inv[name]
    _, l, rest = name.split(".", 2)
    back = {v: k for k, v in GGUF_NAMES.items()}
    return f"model.layers.{l}." + back[rest]


QTYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
          "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
          "q4_1": gguf.GGMLQuantizationType.Q4_1}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
              "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}


def write_gguf(path, arch, W, wtype, tok_meta, permute, rope_base, rope_freqs=None):
    tokens, merges, types, bos, eos = tok_meta
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tern-tiny-{arch}-{wtype}")
    w.add_block_count(layer_count(W))
    w.add_context_length(CTX)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(EPS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(VOCAB)
    w.add_file_type(FILE_TYPES[wtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    qt = QTYPES[wtype]
    for name, arr in W.items():
        if permute and name.endswith("q_proj.weight"):
            arr = permute_rows(arr, N_HEAD)
        elif permute and name.endswith("k_proj.weight"):
            arr = permute_rows(arr, N_KV)
        gname = hf_to_gguf_name(name)
        if arr.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, arr.astype(np.float32))
        elif qt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gname, arr.astype(np.float16))
        else:
            w.add_tensor(gname, quantize(arr.astype(np.float32), qt), raw_dtype=qt)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def field_value(reader, key):
    f = reader.fields[key]
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


def read_gguf(path, arch, wtype, expect_names, tok_meta):
    """Read back, check metadata and llama.cpp's tensor shapes/types; return (weights float64 by HF name, rope_freqs)."""
    r = gguf.GGUFReader(path)
    tokens, merges, types, bos, eos = tok_meta
    want = {"general.architecture": arch, f"{arch}.block_count": layer_count(expect_names), f"{arch}.context_length": CTX,
            f"{arch}.embedding_length": DIM, f"{arch}.feed_forward_length": FFN,
            f"{arch}.attention.head_count": N_HEAD, f"{arch}.attention.head_count_kv": N_KV,
            f"{arch}.rope.dimension_count": HEAD_DIM, f"{arch}.vocab_size": VOCAB,
            "general.file_type": int(FILE_TYPES[wtype]), "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.bos_token_id": bos, "tokenizer.ggml.eos_token_id": eos,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.chat_template": CHAT_TEMPLATE,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": types}
    for k, v in want.items():
        assert field_value(r, k) == v, (path, k)
    assert abs(field_value(r, f"{arch}.attention.layer_norm_rms_epsilon") - EPS) < 1e-12
    assert r.fields["GGUF.version"].parts[-1][0] == 3
    W, freqs = {}, None
    for t in r.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float64)
        ne = [int(x) for x in t.shape]              # GGUF order: fastest dimension first
        assert list(data.shape) == ne[::-1], (t.name, data.shape, ne)
        if t.name == "rope_freqs.weight":
            assert ne == [HEAD_DIM // 2] and t.tensor_type == gguf.GGMLQuantizationType.F32
            freqs = data
            continue
        name = gguf_to_hf_name(t.name)
        if len(ne) == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        else:
            assert t.tensor_type == QTYPES[wtype], (t.name, t.tensor_type)
        W[name] = data
    assert set(W) == set(expect_names), set(W) ^ set(expect_names)
    shapes = {"token_embd.weight": [DIM, VOCAB], "output.weight": [DIM, VOCAB], "blk.0.attn_q.weight": [DIM, DIM],
              "blk.0.attn_k.weight": [DIM, N_KV * HEAD_DIM], "blk.0.attn_output.weight": [DIM, DIM],
              "blk.0.ffn_gate.weight": [DIM, FFN], "blk.0.ffn_down.weight": [FFN, DIM], "blk.1.attn_norm.weight": [DIM]}
    for t in r.tensors:
        if t.name in shapes:
            assert [int(x) for x in t.shape] == shapes[t.name], (t.name, t.shape)
    return W, freqs


# --- safetensors --------------------------------------------------------------------------------------------------
def to_bf16_bits(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_bits_to_f32(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors, dtype="F32"):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        raw = (to_bf16_bits(arr) if dtype == "BF16" else np.ascontiguousarray(arr, dtype="<f4")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)   # keep the data 8-byte aligned, as HF's writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        raw = buf[8 + n + b: 8 + n + e]
        if info["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif info["dtype"] == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            raise ValueError(info["dtype"])
        out[name] = a.reshape(info["shape"]).astype(np.float64)
    try:   # optional independent check with the safetensors package
        from safetensors import safe_open
        from safetensors.numpy import load_file
    except ImportError:
        return out
    with safe_open(path, framework="numpy") as f:
        assert set(f.keys()) == set(out)
        for k in f.keys():
            sl = f.get_slice(k)
            assert sl.get_dtype() == header[k]["dtype"] and list(sl.get_shape()) == list(out[k].shape), k
    if all(info["dtype"] == "F32" for info in header.values()):   # numpy has no bfloat16 to load BF16 into
        for k, v in load_file(path).items():
            assert np.array_equal(v.astype(np.float64), out[k]), k
    return out


def hf_config(arch, tied, bos, eos, rope_base, n_layer, rope_scaling=None):
    c = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch, "hidden_size": DIM, "intermediate_size": FFN, "num_hidden_layers": n_layer,
        "num_attention_heads": N_HEAD, "num_key_value_heads": N_KV, "head_dim": HEAD_DIM, "hidden_act": "silu",
        "max_position_embeddings": CTX, "rms_norm_eps": EPS, "rope_theta": rope_base, "rope_scaling": rope_scaling,
        "vocab_size": VOCAB, "tie_word_embeddings": tied, "torch_dtype": "float32", "bos_token_id": bos,
        "eos_token_id": eos, "use_cache": True,
    }
    if arch == "llama":
        c.update({"attention_bias": False, "mlp_bias": False})
    else:
        c.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": n_layer})
    return c


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_hf_dir(d, W, config, tok, dtype="F32", shards=1):
    os.makedirs(d, exist_ok=True)
    cfg = dict(config)
    if dtype == "BF16":
        cfg["torch_dtype"] = "bfloat16"
    write_json(os.path.join(d, "config.json"), cfg)
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), W, dtype)
    else:
        names = list(W)
        cut = (len(names) + 1) // 2
        parts = [names[:cut], names[cut:]]
        weight_map, total = {}, 0
        for i, part in enumerate(parts):
            fn = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
            write_safetensors(os.path.join(d, fn), {n: W[n] for n in part}, dtype)
            for n in part:
                weight_map[n] = fn
                total += W[n].size * 4
        write_json(os.path.join(d, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total}, "weight_map": weight_map})
    tok.save(os.path.join(d, "tokenizer.json"))
    write_json(os.path.join(d, "tokenizer_config.json"), {
        "add_bos_token": True, "add_eos_token": False, "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
        "pad_token": None, "unk_token": None, "model_max_length": CTX, "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(tok.token_to_id(s)): {"content": s, "special": True, "lstrip": False,
                                                           "rstrip": False, "normalized": False,
                                                           "single_word": False} for s in SPECIALS},
    })


def read_hf_dir(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        W = {}
        for fn in sorted(set(wm.values())):
            part = read_safetensors(os.path.join(d, fn))
            assert all(wm[n] == fn for n in part)
            W.update(part)
        assert set(W) == set(wm)
        return W
    return read_safetensors(os.path.join(d, "model.safetensors"))


# --- main ---------------------------------------------------------------------------------------------------------
def sig6(x):
    return float(f"{x:.6g}")


def check_spread(logits, what):
    std = logits.std(axis=1)
    assert np.all(std > 0.5) and np.all(std < 20), (what, std)
    assert len(set(np.argmax(logits, axis=1).tolist())) > 1 or logits.shape[0] < 3, (what, "argmax constant")


def main():
    os.makedirs(OUT, exist_ok=True)
    tok, tokens, merges, types = build_tokenizer()
    bos, eos = tok.token_to_id(BOS_TOKEN), tok.token_to_id(EOS_TOKEN)
    tok_meta = (tokens, merges, types, bos, eos)
    tok.save(os.path.join(OUT, "tokenizer.json"))

    prompt = tok.encode(PROMPT_TEXT).ids
    assert prompt[0] == bos and len(prompt) <= 12, prompt
    # The GGUF token/merge lists alone must rebuild the same tokenizer (that is all an engine gets from a GGUF).
    rebuilt = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                   merges=[tuple(m.split(" ")) for m in merges]))
    rebuilt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in [PROMPT_TEXT, "The quick brown fox, 2024!", "  héllo\n\tworld  "]:
        assert [bos] + rebuilt.encode(text).ids == tok.encode(text).ids, text
    rendered = jinja2.Environment().from_string(CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", rendered

    llama_w = make_weights(seed=1234)
    # Single-layer models for the architecture variants keep the fixture folder small; llama covers layer stacking.
    qwen_w = make_weights(seed=5678, qkv_bias=True, tied=True, n_layer=1, out_gain=4.0)
    llama3_w = {n: a for n, a in llama_w.items() if not n.startswith("model.layers.1.")}
    l3_div = llama3_rope_divisors(HEAD_DIM, ROPE_BASE_L3, L3_SCALING)

    cases = []

    def add_case(checkpoint, fmt, arch, weights_desc, W_ref, style, base, divisors, W_alt=None, alt_style=None,
                 with_greedy=True, gguf_type=None):
        logits = forward(W_ref, prompt, style, base, divisors)
        if W_alt is not None:   # same function through the other RoPE convention
            alt = forward(W_alt, prompt, alt_style, base, divisors)
            assert np.allclose(logits, alt, rtol=0, atol=1e-9), (checkpoint, np.abs(logits - alt).max())
            # ...and the wrong convention on this layout must be clearly wrong, so the case catches a mix-up.
            wrong = forward(W_ref, prompt, alt_style, base, divisors)
            assert np.abs(wrong - logits).max() > 0.1, (checkpoint, "RoPE style does not matter")
        # Causality: position t must not depend on later tokens (the greedy loop relies on prefix runs).
        for t in range(len(prompt)):
            assert np.allclose(forward(W_ref, prompt[: t + 1], style, base, divisors)[-1], logits[t],
                               rtol=0, atol=1e-9), (checkpoint, t)
        check_spread(logits, checkpoint)
        case = {"checkpoint": checkpoint, "format": fmt, "architecture": arch, "weights": weights_desc,
                "rope": style, "rope_base": base,
                "rope_freqs": None if divisors is None else [float(v) for v in divisors],
                "num_layers": layer_count(W_ref), "tied_embeddings": "lm_head.weight" not in W_ref,
                "prompt_text": PROMPT_TEXT, "tokens": list(prompt),
                "argmax": [int(i) for i in np.argmax(logits, axis=1)],
                "logits": [[sig6(v) for v in row] for row in logits]}
        if gguf_type is not None:
            case["gguf_matrix_type"] = gguf_type
        if with_greedy:
            ids, gaps = greedy(W_ref, prompt, style, base, divisors, GREEDY_STEPS)
            case["greedy"] = ids
            case["greedy_top2_gap"] = [sig6(g) for g in gaps]
        cases.append(case)
        return logits

    def hf_view(W):   # GGUF-layout weights -> rotate-half layout
        V = dict(W)
        for n in V:
            if n.endswith("q_proj.weight"):
                V[n] = unpermute_rows(V[n], N_HEAD)
            elif n.endswith("k_proj.weight"):
                V[n] = unpermute_rows(V[n], N_KV)
        return V

    # 1. llama GGUFs
    f32_logits = None
    for wtype in ["f32", "f16", "q8_0", "q4_0", "q4_1"]:
        fn = f"llama-{wtype}.gguf"
        write_gguf(os.path.join(OUT, fn), "llama", llama_w, wtype, tok_meta, permute=True, rope_base=ROPE_BASE)
        W, freqs = read_gguf(os.path.join(OUT, fn), "llama", wtype, llama_w.keys(), tok_meta)
        assert freqs is None
        desc = "f32" if wtype == "f32" else ("f16" if wtype == "f16" else f"dequantized {wtype}")
        lg = add_case(fn, "gguf", "llama", desc, W, "interleaved", ROPE_BASE, None, hf_view(W), "neox",
                      gguf_type=wtype.upper())
        if wtype == "f32":
            f32_logits = lg
            for n, a in hf_view(W).items():
                assert np.array_equal(a, llama_w[n].astype(np.float64)), n

    # 2. HF directories of the same weights
    cfg = hf_config("llama", False, bos, eos, ROPE_BASE, N_LAYER)
    hf_dirs = [("llama-hf", "F32", 1), ("llama-hf-sharded", "F32", 2)]
    if "--bf16" in sys.argv:   # optional: +250 KB, over the fixture budget, so not committed by default
        hf_dirs.append(("llama-hf-bf16", "BF16", 1))
    for d, dtype, shards in hf_dirs:
        write_hf_dir(os.path.join(OUT, d), llama_w, cfg, tok, dtype, shards)
        W = read_hf_dir(os.path.join(OUT, d))
        if dtype == "F32":
            for n in llama_w:
                assert np.array_equal(W[n], llama_w[n].astype(np.float64)), n
        lg = add_case(d, "safetensors", "llama", dtype.lower(), W, "neox", ROPE_BASE, None)
        if dtype == "F32":
            assert np.allclose(lg, f32_logits, rtol=0, atol=1e-9), d   # same function, other RoPE layout

    # 3. qwen2: biases, tied embeddings, no permutation, NEOX RoPE in both files
    write_gguf(os.path.join(OUT, "qwen2-f32.gguf"), "qwen2", qwen_w, "f32", tok_meta, permute=False,
               rope_base=ROPE_BASE)
    W, _ = read_gguf(os.path.join(OUT, "qwen2-f32.gguf"), "qwen2", "f32", qwen_w.keys(), tok_meta)
    q_logits = add_case("qwen2-f32.gguf", "gguf", "qwen2", "f32", W, "neox", ROPE_BASE, None,
                        {n: (permute_rows(a, N_HEAD if "q_proj" in n else N_KV)
                             if n.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias"))
                             else a) for n, a in W.items()}, "interleaved", gguf_type="F32")
    write_hf_dir(os.path.join(OUT, "qwen2-hf"), qwen_w, hf_config("qwen2", True, bos, eos, ROPE_BASE, 1), tok)
    W = read_hf_dir(os.path.join(OUT, "qwen2-hf"))
    assert np.array_equal(add_case("qwen2-hf", "safetensors", "qwen2", "f32", W, "neox", ROPE_BASE, None),
                          q_logits)   # identical weights and layout: bit-identical

    # 4. Llama 3.1-style RoPE scaling: same llama weights, base 500000, rope_freqs divisors
    write_gguf(os.path.join(OUT, "llama3-f32.gguf"), "llama", llama3_w, "f32", tok_meta, permute=True,
               rope_base=ROPE_BASE_L3, rope_freqs=l3_div)
    W, freqs = read_gguf(os.path.join(OUT, "llama3-f32.gguf"), "llama", "f32", llama3_w.keys(), tok_meta)
    assert np.array_equal(freqs, l3_div.astype(np.float32).astype(np.float64))
    assert abs(field_value(gguf.GGUFReader(os.path.join(OUT, "llama3-f32.gguf")), "llama.rope.freq_base")
               - ROPE_BASE_L3) < 1e-6
    # The reference uses the divisors as stored (f32), as an engine reading the file would.
    add_case("llama3-f32.gguf", "gguf", "llama", "f32", W, "interleaved", ROPE_BASE_L3, freqs, hf_view(W), "neox",
             gguf_type="F32")
    # rope_freqs must really matter at these positions, or the case would not test it.
    no_scale = forward(hf_view(W), prompt, "neox", ROPE_BASE_L3, None)
    assert np.abs(no_scale - np.array(cases[-1]["logits"])).max() > 1e-3

    write_reference(cases, bos, eos)
    print(f"wrote {len(cases)} cases; prompt {prompt}")
    for c in cases:
        print(f"  {c['checkpoint']:18s} rope={c['rope']:11s} argmax={c['argmax']} greedy={c.get('greedy')}")


def write_reference(cases, bos, eos):
    """reference.json schema:
    {"generator": str, "config": {hyper-parameters shared by all checkpoints},
     "bos_token_id": int, "eos_token_id": int,
     "cases": [{"checkpoint": path relative to Tests/Fixtures/llama (file or HF directory),
                "format": "gguf"|"safetensors", "architecture": "llama"|"qwen2",
                "weights": "f32"|"f16"|"bf16"|"dequantized q8_0"|..., "gguf_matrix_type": "Q4_0"... (GGUF only),
                "rope": "interleaved"|"neox" (convention matching the file's q/k row layout),
                "rope_base": float, "rope_freqs": null | [head_dim/2 divisors],
                "num_layers": int, "tied_embeddings": bool, "prompt_text": str, "tokens": [ids, first is bos],
                "logits": [[vocab floats, 6 significant digits] per position], "argmax": [per position],
                "greedy": [8 ids, argmax decoding continuing the prompt, not stopped at eos],
                "greedy_top2_gap": [top1 - top2 logit gap at each greedy step]}]}"""
    ref = {
        "generator": "scripts/make_llama_fixtures.py (float64 numpy reference)",
        "config": {"hidden_size": DIM, "num_heads": N_HEAD, "num_kv_heads": N_KV,
                   "head_dim": HEAD_DIM, "ffn": FFN, "vocab_size": VOCAB, "rms_norm_eps": EPS,
                   "context_length": CTX},
        "bos_token_id": bos, "eos_token_id": eos,
        "cases": cases,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
