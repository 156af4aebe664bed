#!/usr/bin/env python3
"""Writes Tests/Fixtures/smollm2/llamacpp_reference.json: reference outputs of llama.cpp (through the
llama-cpp-python package, `pip install llama-cpp-python`) for the default model
models/SmolLM2-135M-Instruct.Q4_1.gguf, so Tern's tests can check its tokenizer, forward pass and perplexity
against an independent engine instead of against Tern's own earlier output.

Sections of the JSON:
  greedy      For a few prompts: the prompt's token ids as llama.cpp tokenizes them (no BOS: the model's
              add_bos_token is false; special tokens parsed only for the hand-rendered ChatML prompt), then 32
              greedily chosen tokens (pure argmax of llama.cpp's logits, no penalties), stopping early only at an
              end-of-generation token. Each step also records the top-1 logit and the gap to the runner-up, so a
              test can tell a real mismatch from a near-tie that quantization noise may flip.
  perplexity  llama-perplexity's algorithm on Tests/Fixtures/smollm2/essay.txt: tokenize the whole text, cut it
              into len//c windows of c tokens, evaluate each window from an empty KV cache, and score positions
              j in [c/2, c-1) with the negative log-likelihood of token j+1. Log-softmax is done in float64 from
              llama.cpp's float32 logits. Running perplexity after each window is recorded, as llama-perplexity
              prints it.
  tokenize    Short strings with llama.cpp's token ids (special tokens not parsed, plus a few with parsing).
  versions    llama_cpp version and the model's sha256.

Deterministic: pure argmax, fixed thread count, no sampling RNG involved. Run from anywhere:
    python3 scripts/make_smollm2_reference.py
Takes about a minute on two cores.
"""

import hashlib
import json
import math
import os
import sys

import numpy as np
import llama_cpp

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
FIXTURES = os.path.join(ROOT, "Tests", "Fixtures", "smollm2")
ESSAY = os.path.join(FIXTURES, "essay.txt")
OUT = os.path.join(FIXTURES, "llamacpp_reference.json")

N_CTX = 512  # covers the largest perplexity window and the longest greedy prompt plus its continuation
N_THREADS = 2
N_GENERATE = 32
PPL_CONTEXTS = [256, 512]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model():
    return llama_cpp.Llama(
        model_path=MODEL,
        n_ctx=N_CTX,
        n_batch=N_CTX,
        n_ubatch=N_CTX,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        seed=0,
        verbose=False,
    )


def tokenize(llm, text, special=False):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def detok(llm, ids):
    return llm.detokenize(ids).decode("utf-8", errors="replace")


def r(x):
    # Round so the JSON stays small; llama.cpp's logits are float32 anyway.
    return round(float(x), 5)


def long_essay_prompt(llm, essay):
    # Whole paragraphs of the "Rivers" section until at least ~280 tokens, so the prompt text retokenizes to
    # exactly the recorded ids (cutting a token list in the middle of a word would not).
    paras = essay.split("\n\n")
    start = paras.index("Rivers") + 1
    text = ""
    for p in paras[start:]:
        text = p if not text else text + "\n\n" + p
        if len(tokenize(llm, text)) >= 280:
            break
    return text


def greedy(llm, vocab, name, prompt, special):
    ids = tokenize(llm, prompt, special)
    llm.reset()
    llm.eval(ids)
    out, top1_logit, gaps, eog = [], [], [], None
    first_top10 = None
    for step in range(N_GENERATE):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        order = np.argsort(-logits, kind="stable")  # ties go to the lower id, as a plain argmax does
        if step == 0:
            first_top10 = [[int(t), r(logits[t])] for t in order[:10]]
        tok = int(order[0])
        top1_logit.append(r(logits[tok]))
        gaps.append(r(logits[order[0]] - logits[order[1]]))
        out.append(tok)
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            eog = tok
            break
        llm.eval([tok])

    # Cross-check against llama.cpp's own sampler chain set to greedy, so the record is "llama.cpp's greedy
    # continuation" and not only "argmax of its logits".
    llm.reset()
    sampled = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        sampled.append(int(tok))
        if llama_cpp.llama_vocab_is_eog(vocab, tok) or len(sampled) == N_GENERATE:
            break
    if sampled != out:
        sys.exit(f"{name}: llama.cpp sampler {sampled} disagrees with argmax {out}")

    return {
        "name": name,
        "prompt": prompt,
        "special": special,
        "prompt_ids": ids,
        "generated_ids": out,
        "generated_text": detok(llm, out),
        "stop": "eog" if eog is not None else "length",
        "eog_token": eog,
        "top1_logit": top1_logit,
        "top2_gap": gaps,
        "first_step_top10": first_top10,
    }


def log_softmax64(logits):
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def perplexity(llm, tokens, c):
    n_windows = len(tokens) // c
    first = c // 2
    nll, count = 0.0, 0
    running, window_nll = [], []
    for w in range(n_windows):
        chunk = tokens[w * c:(w + 1) * c]
        llm.reset()  # n_tokens = 0, so eval() clears the whole KV cache first
        llm.eval(chunk)
        lp = log_softmax64(np.array(llm.scores[:c], dtype=np.float32)[first:c - 1])
        targets = np.array(chunk[first + 1:c])
        s = float(-lp[np.arange(len(targets)), targets].sum())
        nll += s
        count += len(targets)
        window_nll.append(s)
        running.append(math.exp(nll / count))
    return {
        "context": c,
        "windows": n_windows,
        "first_scored_position": first,
        "tokens_scored": count,
        "tokens_scored_per_window": c - 1 - first,
        "window_nll_sum": window_nll,
        "running_ppl": running,
        "ppl": math.exp(nll / count),
    }


TOKENIZE_CASES = [
    "Hello world",
    " Hello world",
    "hello, World! HELLO?",
    "   three leading spaces",
    "trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nend",
    "x    y     z",
    "\n",
    " ",
    "don't I'm you're we'll they've she'd IT'S",
    "12345 3.14159 1,000,000 2024-01-31",
    "0123456789012",
    "café naïve résumé Ångström",
    "Grüße aus München, Straße",
    "Привет, мир!",
    "日本語のテキストです。",
    "한국어 문장",
    "مرحبا بالعالم",
    "emoji 🦙🚀👍🏽 done",
    "family 👨‍👩‍👧 flag 🇫🇷",
    "non\u00a0breaking and zero\u200bwidth",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "https://example.com/path?q=1&lang=en#top",
    "$%^&*()_+-=[]{}|;':\",./<>?`~",
    "<|im_start|>user\nHi<|im_end|>",
    "<|endoftext|>",
    "Mr. O'Neil's dog--really?!...",
    "ﬁ ligature and ½ fraction and ™",
    "CamelCaseIdentifier snake_case_identifier",
]

SPECIAL_CASES = [
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
]


def main():
    llm = load_model()
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
    if add_bos:
        sys.exit("this script assumes add_bos_token=false; perplexity windows would need BOS as their first token")

    with open(ESSAY, encoding="utf-8") as f:
        essay = f.read()

    prompts = [
        ("capital", "The capital of France is", False),
        ("once", "Once upon a time,", False),
        ("fibonacci", "def fibonacci(n):", False),
        ("colors", "The three primary colors are", False),
        ("chat", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", True),
        ("unicode", "Café au lait costs 3,50 € — très bon! 🥐☕ Ça va?", False),
        ("lists", "Here is a list of fruits:\n1. Apple\n2.", False),
        ("essay", long_essay_prompt(llm, essay), False),
    ]
    greedy_cases = [greedy(llm, vocab, n, p, s) for n, p, s in prompts]

    essay_tokens = tokenize(llm, essay)
    ppl = [perplexity(llm, essay_tokens, c) for c in PPL_CONTEXTS]

    tok_cases = [{"text": t, "special": False, "ids": tokenize(llm, t)} for t in TOKENIZE_CASES]
    tok_cases += [{"text": t, "special": True, "ids": tokenize(llm, t, True)} for t in SPECIAL_CASES]

    doc = {
        "generator": "scripts/make_smollm2_reference.py",
        "versions": {
            "llama_cpp_python": llama_cpp.__version__,
            "model_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
            "model_sha256": sha256(MODEL),
            "essay_sha256": sha256(ESSAY),
        },
        "settings": {
            "n_ctx": N_CTX,
            "n_batch": N_CTX,
            "n_threads": N_THREADS,
            "add_bos": add_bos,
            "bos_id": llm.token_bos(),
            "eos_id": llm.token_eos(),
            "n_vocab": llm.n_vocab(),
            "greedy_max_new_tokens": N_GENERATE,
        },
        "greedy": greedy_cases,
        "perplexity": {
            "text_file": "essay.txt",
            "n_tokens": len(essay_tokens),
            "essay_ids_head": essay_tokens[:64],
            "contexts": ppl,
        },
        "tokenize": tok_cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, ROOT)}")
    for g in greedy_cases:
        print(f"  greedy {g['name']}: {g['stop']} min gap {min(g['top2_gap']):.4f} -> {g['generated_text']!r}")
    for p in ppl:
        print(f"  ppl c={p['context']}: {p['ppl']:.4f} over {p['windows']} windows, {p['tokens_scored']} tokens")


if __name__ == "__main__":
    main()
