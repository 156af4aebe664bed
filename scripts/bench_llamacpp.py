#!/usr/bin/env python3
"""llama.cpp's side of `tern bench`, through llama-cpp-python (`pip install llama-cpp-python`, ~15 min build).

Same protocol as `tern bench`: prompt processing = one batch of --prompt-tokens random tokens from an empty
context; generation = --gen-tokens single-token evaluations from an empty context; one warm-up run, then
--repetitions timed runs. Prints a line like tern bench's and a JSON object last.
Generation after --depth tokens of context fills the context first (untimed), as `tern bench --depth` does.
Usage: python3 scripts/bench_llamacpp.py MODEL.gguf [--threads 2] [--prompt-tokens 128] [--gen-tokens 128] [--repetitions 3]
       [--depth 0] [--flash-attn]
"""
import argparse
import json
import random
import statistics
import time

import llama_cpp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--flash-attn", action="store_true")
    a = ap.parse_args()
    ctx = max(1024, a.prompt_tokens + 16, a.depth + a.gen_tokens + 16)
    llm = llama_cpp.Llama(a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=ctx, n_batch=512,
                          n_ubatch=512, flash_attn=a.flash_attn, verbose=False)
    rng = random.Random(42)
    vocab = llm.n_vocab()
    pp, tg = [], []
    for rep in range(a.repetitions + 1 if a.prompt_tokens > 0 else 0):
        tokens = [rng.randrange(vocab) for _ in range(a.prompt_tokens)]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        dt = time.perf_counter() - t0
        if rep:
            pp.append(a.prompt_tokens / dt)
    for rep in range(a.repetitions + 1 if a.gen_tokens > 0 else 0):
        llm.reset()
        if a.depth:
            llm.eval([rng.randrange(vocab) for _ in range(a.depth)])
        tok = rng.randrange(vocab)
        t0 = time.perf_counter()
        for _ in range(a.gen_tokens):
            llm.eval([tok])
        dt = time.perf_counter() - t0
        if rep:
            tg.append(a.gen_tokens / dt)
    sd = lambda x: statistics.stdev(x) if len(x) > 1 else 0.0
    mean = lambda x: statistics.mean(x) if x else 0.0
    print(f"llama.cpp {llama_cpp.__version__}: pp{a.prompt_tokens} {mean(pp):.1f} ± {sd(pp):.1f} tokens/s, "
          f"tg{a.gen_tokens} @ depth {a.depth} {mean(tg):.1f} ± {sd(tg):.1f} tokens/s")
    print(json.dumps({"engine": "llama.cpp", "version": llama_cpp.__version__, "model": a.model, "threads": a.threads,
                      "depth": a.depth, "flash_attn": a.flash_attn,
                      "pp_tokens_per_s": round(mean(pp), 2), "pp_stddev": round(sd(pp), 2),
                      "tg_tokens_per_s": round(mean(tg), 2), "tg_stddev": round(sd(tg), 2)}))


if __name__ == "__main__":
    main()
