#!/usr/bin/env python3
"""Writes Tests/Fixtures/gemma3/llamacpp_reference.json: what llama.cpp (llama-cpp-python 0.3.36) computes for the
real Gemma 3 270M Q4_K_M file (models/fetch gemma3), so Tern's tests and the README can compare against an
independent engine. The tests that read it skip when the 253 MB model is not installed.

Sections of the JSON:
  tokenize    Hard strings with llama.cpp's ids (no BOS; special tokens parsed only where "special" is true).
  greedy      Prompts (BOS first, as the model's add_bos_token says) and 32 greedily chosen tokens (argmax of
              llama.cpp's logits, cross-checked with its own greedy sampler), with each step's top-1 logit and the
              gap to the runner-up, so a test can stop comparing at the first near tie. One prompt is longer than
              the 512-token sliding window, so its continuation depends on the window being applied as llama.cpp
              applies it (a key at p is visible to the query at q iff q - p < 512).
  window      For one prompt of WINDOW_PROMPT_TOKENS tokens evaluated in one pass: the top-8 logits at positions
              505..520, where the local layers' window starts to cut (positions 511, 512, 513).
  perplexity  llama-perplexity's algorithm on Tests/Fixtures/smollm2/essay.txt at contexts 512 and 1024 (BOS as
              each window's first token, the second half of each window scored). At 512 the window never cuts;
              at 1024 it does.

Deterministic (argmax, fixed threads). Run from anywhere, after models/fetch gemma3:
    python3 scripts/make_gemma3_reference.py          (about two minutes on two cores)
"""

import hashlib
import json
import math
import os
import sys

import numpy as np
import llama_cpp

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODEL = os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf")
ESSAY = os.path.join(ROOT, "Tests", "Fixtures", "smollm2", "essay.txt")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "gemma3", "llamacpp_reference.json")

N_CTX = 1024
N_THREADS = 2
N_GENERATE = 32
PPL_CONTEXTS = [512, 1024]
WINDOW_PROMPT_TOKENS = 560
WINDOW_POSITIONS = list(range(505, 521))

TOKENIZE_CASES = [
    "Hello world", " Hello world", "hello, World! HELLO?", "   three leading spaces", "trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nend", "x    y     z", "\n", " ", "  ", "\n\n\n",
    "don't I'm you're we'll they've she'd IT'S", "12345 3.14159 1,000,000 2024-01-31", "0123456789012",
    "café naïve résumé Ångström", "Grüße aus München, Straße", "Привет, мир!", "日本語のテキストです。",
    "한국어 문장", "مرحبا بالعالم", "emoji 🦙🚀👍🏽 done", "family 👨‍👩‍👧 flag 🇫🇷",
    "non\u00a0breaking and zero\u200bwidth", "ideographic\u3000space", "ＡＢＣ full width",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", "https://example.com/path?q=1&lang=en#top",
    "$%^&*()_+-=[]{}|;':\",./<>?`~", "<start_of_turn>user\nHi<end_of_turn>", "<bos><eos>",
    "Mr. O'Neil's dog--really?!...", "ﬁ ligature and ½ fraction and ™", "CamelCaseIdentifier snake_case_identifier",
    "a" * 50, "\u0000control\u0007chars\u001b", "\U0001F600\U0001F64F rare \U000E0041 tag",
]
SPECIAL_CASES = [
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "text<eos>more text",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def r(x):
    return round(float(x), 5)


def tokenize(llm, text, bos=False, special=False):
    return llm.tokenize(text.encode("utf-8"), add_bos=bos, special=special)


def greedy(llm, vocab, name, prompt, special):
    ids = tokenize(llm, prompt, bos=True, special=special)
    llm.reset()
    llm.eval(ids)
    out, top1, gaps, eog = [], [], [], None
    for _ in range(N_GENERATE):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        order = np.argsort(-logits, kind="stable")
        tok = int(order[0])
        top1.append(r(logits[tok]))
        gaps.append(r(logits[order[0]] - logits[order[1]]))
        out.append(tok)
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            eog = tok
            break
        llm.eval([tok])
    llm.reset()
    sampled = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        sampled.append(int(tok))
        if llama_cpp.llama_vocab_is_eog(vocab, tok) or len(sampled) == N_GENERATE:
            break
    if sampled != out:
        sys.exit(f"{name}: llama.cpp sampler {sampled} disagrees with argmax {out}")
    return {"name": name, "prompt": prompt, "special": special, "prompt_ids": ids, "generated_ids": out,
            "generated_text": llm.detokenize(out).decode("utf-8", errors="replace"),
            "stop": "eog" if eog is not None else "length", "top1_logit": top1, "top2_gap": gaps}


def log_softmax64(logits):
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def perplexity(llm, tokens, c, bos):
    n_windows = len(tokens) // c
    first = c // 2
    nll, count, running = 0.0, 0, []
    for w in range(n_windows):
        chunk = list(tokens[w * c:(w + 1) * c])
        chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        lp = log_softmax64(np.array(llm.scores[:c], dtype=np.float32)[first:c - 1])
        targets = np.array(chunk[first + 1:c])
        nll += float(-lp[np.arange(len(targets)), targets].sum())
        count += len(targets)
        running.append(math.exp(nll / count))
    return {"context": c, "windows": n_windows, "tokens_scored": count, "running_ppl": running,
            "ppl": math.exp(nll / count)}


def window_logits(llm, tokens):
    llm.reset()
    llm.eval(tokens)
    rows = []
    for p in WINDOW_POSITIONS:
        logits = np.array(llm.scores[p], dtype=np.float32)
        order = np.argsort(-logits, kind="stable")[:8]
        rows.append({"position": p, "top": [[int(t), r(logits[t])] for t in order]})
    return {"tokens": tokens, "rows": rows}


def main():
    if not os.path.exists(MODEL):
        sys.exit(f"{MODEL} is missing: run models/fetch gemma3")
    llm = llama_cpp.Llama(model_path=MODEL, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=N_THREADS,
                          n_threads_batch=N_THREADS, logits_all=True, seed=0, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    bos = llm.token_bos()
    with open(ESSAY, encoding="utf-8") as f:
        essay = f.read()
    essay_tokens = tokenize(llm, essay, bos=True)

    paras = essay.split("\n\n")
    long_prompt = ""
    for p in paras:
        long_prompt = p if not long_prompt else long_prompt + "\n\n" + p
        if len(tokenize(llm, long_prompt, bos=True)) >= 700:
            break
    prompts = [
        ("capital", "The capital of France is", False),
        ("once", "Once upon a time,", False),
        ("fibonacci", "def fibonacci(n):", False),
        ("chat", "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n", True),
        ("unicode", "Café au lait costs 3,50 € — très bon! 🥐☕ Ça va?", False),
        ("long", long_prompt, False),
    ]
    doc = {
        "generator": "scripts/make_gemma3_reference.py",
        "versions": {"llama_cpp_python": llama_cpp.__version__, "model_file": os.path.basename(MODEL),
                     "model_sha256": sha256(MODEL), "essay_sha256": sha256(ESSAY)},
        "settings": {"n_ctx": N_CTX, "n_threads": N_THREADS, "bos_id": bos, "eos_id": llm.token_eos(),
                     "n_vocab": llm.n_vocab()},
        "tokenize": [{"text": t, "special": False, "ids": tokenize(llm, t)} for t in TOKENIZE_CASES]
                    + [{"text": t, "special": True, "ids": tokenize(llm, t, special=True)} for t in SPECIAL_CASES],
        "greedy": [greedy(llm, vocab, n, p, s) for n, p, s in prompts],
        "window": window_logits(llm, essay_tokens[:WINDOW_PROMPT_TOKENS]),
        "perplexity": {"text_file": "smollm2/essay.txt", "n_tokens": len(essay_tokens),
                       "contexts": [perplexity(llm, essay_tokens, c, bos) for c in PPL_CONTEXTS]},
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, ROOT)}")
    for g in doc["greedy"]:
        print(f"  greedy {g['name']} ({len(g['prompt_ids'])} prompt tokens): min gap {min(g['top2_gap']):.4f} "
              f"-> {g['generated_text']!r}")
    for p in doc["perplexity"]["contexts"]:
        print(f"  ppl c={p['context']}: {p['ppl']:.4f} over {p['windows']} windows")


if __name__ == "__main__":
    main()
