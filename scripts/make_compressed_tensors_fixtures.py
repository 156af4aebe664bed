#!/usr/bin/env python3
"""Make tiny pruned Llama checkpoints in llm-compressor's sparse on-disk formats, plus their dense twins.

Run from anywhere:  python3 scripts/make_compressed_tensors_fixtures.py
Needs torch (a CPU build: pip install 'torch==2.13.0+cpu'), compressed-tensors==0.11.0 and safetensors.
Deterministic (fixed seed): running it twice gives the same tensors.

The compressed files are written by compressed-tensors' own compressors and ModelCompressor.update_config, so
they are what llm-compressor's save_pretrained produces for a sparse-only model; Tern's reader is checked against
them, not against our reading of the format.

Model: LlamaForCausalLM, hidden 32, 2 query heads / 1 KV head of head_dim 16, ffn 44 (so down_proj rows are 44
values: their bitmask rows end in a partly used byte), 2 layers, vocab 320 (the tokenizer of Tests/Fixtures/llama),
tied embeddings. Every Linear (q/k/v/o/gate/up/down) is pruned; embeddings and norms stay dense, as llm-compressor
leaves them (targets ["Linear"], ignore ["lm_head"]).

Files written to Tests/Fixtures/compressed_tensors/
  bitmask-dense/    F16; Linear weights pruned to 50% by magnitude (unstructured, per tensor). Plain safetensors.
  bitmask/          the same weights, config.json quantization_config.sparsity_config format "sparse-bitmask":
                    each pruned weight W becomes W.shape / .compressed / .bitmask / .row_offsets.
  sparse24-dense/   BF16; Linear weights pruned 2:4 (the 2 largest |w| of every 4 along a row are kept).
  sparse24/         the same weights in "sparse-24-bitmask": W.shape / .compressed / .bitmask.
  sparse24-fp8/     llm-compressor's "2:4 sparse FP8" layout: BF16 weights pruned 2:4, then quantized to FP8 E4M3
                    per output channel (symmetric, static; scale = max|w| / 448 in BF16), saved with quantization
                    format "float-quantized" (W.weight_scale) and sparsity "sparse-24-bitmask" on top (the
                    .compressed values are F8_E4M3).
  sparse24-fp8-dense/  what compressed-tensors' own decompressors give back for sparse24-fp8: BF16, plain.
"""

import json
import os
import shutil

import torch
from compressed_tensors.compressors import BitmaskCompressor, ModelCompressor, Sparse24BitMaskCompressor
from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = os.path.join(ROOT, "Tests", "Fixtures", "llama", "llama-hf")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "compressed_tensors")

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS, VOCAB = 32, 2, 1, 16, 44, 2, 320
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def make_weights(seed):
    g = torch.Generator().manual_seed(seed)

    def mat(rows, cols):
        return torch.randn(rows, cols, generator=g) / cols ** 0.5

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    w = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(HIDDEN)
        w[p + "self_attn.q_proj.weight"] = mat(HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = mat(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = mat(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = mat(HIDDEN, HEADS * HEAD_DIM)
        w[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        w[p + "mlp.gate_proj.weight"] = mat(FFN, HIDDEN)
        w[p + "mlp.up_proj.weight"] = mat(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = mat(HIDDEN, FFN)
    w["model.norm.weight"] = norm(HIDDEN)
    return w


def linear_prefixes():
    return {f"model.layers.{i}.{m}" for i in range(LAYERS) for m in LINEARS}


def prune_unstructured(t, fraction=0.5):
    """Zeroes the `fraction` smallest |w| of the tensor (ties broken by position, so exactly that many)."""
    k = int(t.numel() * fraction)
    order = t.abs().flatten().float().argsort(stable=True)
    flat = t.flatten().clone()
    flat[order[:k]] = 0
    return flat.reshape(t.shape)


def prune_24(t):
    groups = t.reshape(-1, 4)
    keep = groups.abs().float().topk(2, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    return torch.where(mask, groups, torch.zeros_like(groups)).reshape(t.shape)


def hf_config(torch_dtype):
    with open(os.path.join(LLAMA, "config.json")) as f:
        c = json.load(f)
    c.update({"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
              "tie_word_embeddings": True, "torch_dtype": torch_dtype})
    return c


def write_dir(d, tensors, config):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    # contiguous(): compressors return views; safetensors wants owned, dense storage.
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(LLAMA, name), os.path.join(d, name))


def global_sparsity(tensors):
    total = sum(t.numel() for t in tensors.values())
    zeros = sum(int((t == 0).sum()) for t in tensors.values())
    return zeros / total


def build(name, dtype, torch_dtype, prune, compressor_cls, config_cls, seed):
    w = {k: v.to(dtype) for k, v in make_weights(seed).items()}
    for p in linear_prefixes():
        w[p + ".weight"] = prune(w[p + ".weight"])
    # Bit-for-bit comparison needs every pruned zero to be +0 and no kept weight to be ±0.
    for p in linear_prefixes():
        t = w[p + ".weight"]
        assert not torch.any(torch.signbit(t) & (t == 0))
    write_dir(os.path.join(OUT, name + "-dense"), w, hf_config(torch_dtype))

    sconfig = config_cls(targets=["Linear"], ignore=["lm_head"], global_sparsity=global_sparsity(w))
    compressed = compressor_cls(config=sconfig).compress(w, compression_targets=linear_prefixes())
    d = os.path.join(OUT, name)
    write_dir(d, compressed, hf_config(torch_dtype))
    ModelCompressor(sparsity_config=sconfig).update_config(d)

    # The round trip through compressed-tensors' own decompressor must give back the dense tensors.
    back = dict(ModelCompressor(sparsity_config=sconfig).sparsity_compressor.decompress(d))
    assert set(back) == set(w), set(back) ^ set(w)
    for k, v in w.items():
        assert torch.equal(back[k].view(torch.int16 if v.element_size() == 2 else torch.int32),
                           v.view(torch.int16 if v.element_size() == 2 else torch.int32)), k


def build_sparse24_fp8(seed):
    from compressed_tensors.compressors import FloatQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    w = {k: v.to(torch.bfloat16) for k, v in make_weights(seed).items()}
    for p in linear_prefixes():
        w[p + ".weight"] = prune_24(w[p + ".weight"])
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=8, type="float", strategy="channel", symmetric=True, dynamic=False))
    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, format="float-quantized",
                                 quantization_status="compressed", ignore=["lm_head"])
    state = dict(w)
    for p in linear_prefixes():
        amax = w[p + ".weight"].float().abs().amax(dim=1, keepdim=True)
        state[p + ".weight_scale"] = (amax / 448.0).to(torch.bfloat16)
    quantizer = FloatQuantizationCompressor(config=qconfig)
    quantized = quantizer.compress(state, names_to_scheme={p: scheme for p in linear_prefixes()})
    sconfig = Sparse24BitMaskConfig(targets=["Linear"], ignore=["lm_head"], global_sparsity=global_sparsity(w))
    sparsifier = Sparse24BitMaskCompressor(config=sconfig)
    compressed = sparsifier.compress(quantized, compression_targets=linear_prefixes())
    assert compressed["model.layers.0.mlp.up_proj.compressed"].dtype == torch.float8_e4m3fn
    d = os.path.join(OUT, "sparse24-fp8")
    write_dir(d, compressed, hf_config("bfloat16"))
    ModelCompressor(sparsity_config=sconfig, quantization_config=qconfig).update_config(d)

    # The dense twin is the library's own reading of what was saved: sparsity undone, then dequantized.
    back = dict(sparsifier.decompress(d))
    dense = {}
    for k, v in back.items():
        p = k[: -len(".weight")]
        if k.endswith(".weight") and p in linear_prefixes():
            dense[k] = quantizer.decompress_weight({"weight": v, "weight_scale": back[p + ".weight_scale"]})
            assert dense[k].dtype == torch.bfloat16
        elif not k.endswith(".weight_scale"):
            dense[k] = v
    assert set(dense) == set(w)
    write_dir(d + "-dense", dense, hf_config("bfloat16"))


def main():
    os.makedirs(OUT, exist_ok=True)
    build("bitmask", torch.float16, "float16", prune_unstructured, BitmaskCompressor, BitmaskConfig, seed=11)
    build("sparse24", torch.bfloat16, "bfloat16", prune_24, Sparse24BitMaskCompressor, Sparse24BitMaskConfig, seed=12)
    build_sparse24_fp8(seed=13)
    for d in sorted(os.listdir(OUT)):
        full = os.path.join(OUT, d)
        if os.path.isdir(full):
            size = sum(os.path.getsize(os.path.join(full, f)) for f in os.listdir(full))
            print(f"{d}: {size} bytes")


if __name__ == "__main__":
    main()
