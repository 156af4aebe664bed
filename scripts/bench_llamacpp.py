#!/usr/bin/env python3
"""llama.cpp's side of `tern bench`, through llama-cpp-python (`pip install llama-cpp-python`, ~15 min build).

Same protocol as `tern bench`: prompt processing = one batch of --prompt-tokens random tokens from an empty
context; generation = --gen-tokens single-token evaluations from an empty context; one warm-up run, then
--repetitions timed runs. Prints a line like tern bench's and a JSON object last.
Usage: python3 scripts/bench_llamacpp.py MODEL.gguf [--threads 2] [--prompt-tokens 128] [--gen-tokens 128] [--repetitions 3]
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
    a = ap.parse_args()
    llm = llama_cpp.Llama(a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=1024, n_batch=512,
                          n_ubatch=512, verbose=False)
    rng = random.Random(42)
    vocab = llm.n_vocab()
    pp, tg = [], []
    for rep in range(a.repetitions + 1):
        tokens = [rng.randrange(vocab) for _ in range(a.prompt_tokens)]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        dt = time.perf_counter() - t0
        if rep:
            pp.append(a.prompt_tokens / dt)
    for rep in range(a.repetitions + 1):
        llm.reset()
        tok = rng.randrange(vocab)
        t0 = time.perf_counter()
        for _ in range(a.gen_tokens):
            llm.eval([tok])
        dt = time.perf_counter() - t0
        if rep:
            tg.append(a.gen_tokens / dt)
    sd = lambda x: statistics.stdev(x) if len(x) > 1 else 0.0
    print(f"llama.cpp {llama_cpp.__version__}: pp{a.prompt_tokens} {statistics.mean(pp):.1f} ± {sd(pp):.1f} tokens/s, "
          f"tg{a.gen_tokens} {statistics.mean(tg):.1f} ± {sd(tg):.1f} tokens/s")
    print(json.dumps({"engine": "llama.cpp", "version": llama_cpp.__version__, "model": a.model, "threads": a.threads,
                      "pp_tokens_per_s": round(statistics.mean(pp), 2), "pp_stddev": round(sd(pp), 2),
                      "tg_tokens_per_s": round(statistics.mean(tg), 2), "tg_stddev": round(sd(tg), 2)}))


if __name__ == "__main__":
    main()
