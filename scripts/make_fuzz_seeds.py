#!/usr/bin/env python3
# Writes the seed inputs of the fuzz targets (Sources/tern-fuzz) into Tests/FuzzCorpus/<target>/seed-*: small valid
# and near-valid inputs from which libFuzzer mutates. Inputs that crashed a target once are kept beside them as
# crash-* files (regressions, replayed by the tests) and are not touched here. Python 3 standard library only.
#
#   scripts/make_fuzz_seeds.py
import gzip
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CORPUS = os.path.join(ROOT, "Tests", "FuzzCorpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# http: the first byte is the piece size − 1 in which the rest arrives (see ServerFuzzing.httpRequest).
def http():
    body = b'{"prompt":"Hi","max_tokens":4}'
    reqs = {
        "get": b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        "post": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body,
        "chunked": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"5;ext=1\r\n" + body[:5] + b"\r\n" + ("%x" % (len(body) - 5)).encode() + b"\r\n" + body[5:]
                   + b"\r\n0\r\nTrailer: t\r\n\r\n",
        "gzip": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: "
                + str(len(gzip.compress(body))).encode() + b"\r\n\r\n" + gzip.compress(body),
        "pipelined": b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nGET http://h/p HTTP/1.0\nConnection: keep-alive\n\n"
                     + b"HEAD * HTTP/1.1\r\nHost: y\r\nExpect: 100-continue\r\nAccept-Encoding: gzip;q=0.5, *;q=0\r\n\r\n",
        "http09": b"GET /\r\n",
    }
    for i, (name, r) in enumerate(sorted(reqs.items())):
        write("http", name, bytes([[0, 6, 255][i % 3]]) + r)


def api():
    bodies = {
        "completion": {"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "Hi", "max_tokens": 4, "temperature": 0.5,
                       "top_p": 0.9, "top_k": 40, "stop": ["\n", "end"], "n": 2, "logprobs": 2, "echo": True,
                       "seed": 7, "logit_bias": {"28": -100}, "stream": True, "stream_options": {"include_usage": True}},
        "prompts": {"prompt": ["a", [1, 2, 3], "<|im_start|>user\nhi<|im_end|>\n"], "parse_special": False,
                    "add_special": True, "presence_penalty": 1.5, "min_p": 0.1, "repetition_penalty": 1.1},
        "chat": {"messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": [{"type": "text", "text": "Hi <|im_end|>"}]}],
                 "max_completion_tokens": 8, "logprobs": True, "top_logprobs": 3, "frequency_penalty": -1,
                 "prediction": {"type": "content", "content": "Hello there"}, "speculative": False},
        "tokenize": {"prompt": "\u00e9\u4e2d\U0001F600 \\u0000", "add_special": False},
    }
    for name, b in bodies.items():
        write("api", name, json.dumps(b, ensure_ascii=False))
    write("api", "escapes", '{"prompt":"\\ud83d\\ude00\\ud800x\\n","max_tokens":1e0,"n":1.0}')
    write("api", "deep", '{"prompt":' + "[" * 70 + "]" * 70 + "}")


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf():
    # Metadata value types: 4 uint32, 5 int32, 6 float32, 7 bool, 8 string, 9 array.
    def kv(key, typ, payload):
        return gguf_string(key) + struct.pack("<I", typ) + payload

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(0x21, 0x7F)] + ["\u0120", "He", "ll", "Hell"]
    merges = ["H e", "l l", "He ll"]
    meta = [
        kv("general.architecture", 8, gguf_string("llama")),
        kv("general.alignment", 4, struct.pack("<I", 32)),
        kv("tokenizer.ggml.model", 8, gguf_string("gpt2")),
        kv("tokenizer.ggml.pre", 8, gguf_string("smollm")),
        kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, len(tokens)) + b"".join(gguf_string(t) for t in tokens)),
        kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, len(tokens))
           + b"".join(struct.pack("<i", 3 if t.startswith("<|") else 1) for t in tokens)),
        kv("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, len(merges)) + b"".join(gguf_string(m) for m in merges)),
        kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1)),
        kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2)),
        kv("tokenizer.ggml.add_bos_token", 7, b"\x00"),
        kv("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
        kv("nested", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 5, 2) + struct.pack("<ii", -1, 7)),
    ]
    # Tensors: name, n_dims, dims, type (0 f32, 2 q4_0), offset within the aligned data section.
    tensors = [("a", [4, 2], 0, 0), ("b", [32], 2, 32)]
    info = b"".join(gguf_string(n) + struct.pack("<I", len(d)) + b"".join(struct.pack("<Q", x) for x in d)
                    + struct.pack("<IQ", t, off) for n, d, t, off in tensors)
    head = struct.pack("<IIQQ", 0x46554747, 3, len(tensors), len(meta)) + b"".join(meta) + info
    head += b"\x00" * ((-len(head)) % 32)
    data = struct.pack("<8f", *range(8)) + struct.pack("<e", 0.5) + bytes(range(16)) + b"\x00" * 14
    write("gguf", "tokenizer", head + data)
    write("gguf", "empty", struct.pack("<IIQQ", 0x46554747, 2, 0, 0))


def safetensors():
    header = {"__metadata__": {"format": "pt"},
              "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]},
              "e": {"dtype": "I8", "shape": [0], "data_offsets": [22, 22]}}
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    write("safetensors", "small", struct.pack("<Q", len(h)) + h + bytes(range(22)))


def tokenizer():
    # First byte: tokenizer (bits 0-1), parse special (bit 2), ids instead of text (bit 3).
    texts = ["Hello, world! It's 2024: naïve café — 中文 😀\n\n\t  x", "<|im_start|>user\nhi<|im_end|>\n", "   leading spaces",
             "'s 'll 123456789 ... !!! ???", "\u0301\u200b\ufeff\U0010FFFF"]
    n = 0
    for mode in (0, 1, 2, 4, 5):
        for t in texts:
            write("tokenizer", "%02d" % n, bytes([mode]) + t.encode())
            n += 1
    write("tokenizer", "ids", bytes([8]) + bytes(range(256)))
    write("tokenizer", "ids-spm", bytes([10]) + bytes(range(255, -1, -1)))


def chat_templates():
    src = os.path.join(ROOT, "Tests", "Fixtures", "chat_templates")
    for name in sorted(os.listdir(src)):
        if name.endswith(".jinja"):
            with open(os.path.join(src, name), "rb") as f:
                write("chat-template", name[:-6], f.read())
    write("chat-template", "features",
          "{%- set ns = namespace(n=0) -%}{% macro m(x, y=2) %}{{ x ~ y }}{% endmacro %}"
          "{% for msg in messages if msg.role != 'tool' %}{% set ns.n = ns.n + 1 %}"
          "{{ loop.index0 }}:{{ msg['role'] | upper }}={{ msg.content | trim | replace('a', 'b') }}"
          "{% if loop.last and add_generation_prompt %}{{ m(ns.n) }}{% elif not loop.first %}, {% else %}.{% endif %}"
          "{% endfor %}{{ [1, 2, 3] | join('-') }}{{ {'k': 'v'} | tojson }}{{ range(3) | list | length }}"
          "{{ 'x' if bos_token else 'y' }}{{ strftime_now('%Y') }}{{ raise_exception('no') if false }}")


if __name__ == "__main__":
    http()
    api()
    gguf()
    safetensors()
    tokenizer()
    chat_templates()
