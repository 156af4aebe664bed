#!/usr/bin/env python3
"""Speculative decoding, measured the way a client sees it: `tern serve` started once per mode (--spec off, then
the modes given), the same requests sent to each, output tokens per second compared in one run.

Workloads (greedy, so every mode must return the same text — the script checks it):
  repeat      one stream: "repeat this text" over a given paragraph (prompt lookup's best case)
  edit        one stream: a code edit that leaves most of the code unchanged (prompt lookup)
  predicted   one stream: the edit again with `prediction` set to the expected answer (predicted outputs)
  free        one stream: open-ended writing (little to look up; speculation must not cost)
  free@8      8 concurrent streams of free writing (the serving load; adaptive length must back off)
  free@32     32 concurrent streams

Usage: scripts/bench_speculation.py [--modes auto] [--rounds 3] [--threads 2] [--model PATH] [--extra "--draft-model X"]
Prints a table of tokens/s (median of the rounds) per workload and mode, the ratio to off, and acceptance.
"""
import argparse, json, os, re, socket, statistics, subprocess, sys, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PARAGRAPH = ("The lighthouse stood at the end of a long spit of sand, and every evening at dusk the keeper climbed its "
             "one hundred and twelve steps to light the lamp. He had done this for thirty years. In the winter the wind "
             "came off the sea so hard that the windows rattled in their frames, and in the summer the gulls nested on "
             "the gallery rail and screamed at him when he passed. He kept a logbook in which he wrote the weather, the "
             "ships he saw, and the time the lamp was lit and put out.")
CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    total = subtotal + tax
    return round(total, 2)


def describe(items):
    lines = []
    for item in items:
        lines.append(f"{item.quantity} x {item.name} at {item.price}")
    return "\\n".join(lines)
"""
FREE = ["Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "Explain how a bicycle stays upright while it is moving.",
        "Describe a busy market in a coastal town at dawn.",
        "Write a letter from a traveller to a friend at home about a long train journey.",
        "Explain why the sky is blue, for a curious ten-year-old.",
        "Describe the life cycle of a butterfly.",
        "Write a short fable about a fox and a crow.",
        "Give advice to someone learning to cook for the first time."]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(port, body, timeout=600):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def chat(port, content, max_tokens, prediction=None):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}
    if prediction is not None:
        body["prediction"] = {"type": "content", "content": prediction}
    return post(port, body)


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


class Server:
    def __init__(self, binary, model, threads, spec, extra):
        self.port = free_port()
        args = [binary, "serve", "--model", model, "--port", str(self.port), "--threads", str(threads), "--spec", spec] + extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.2)
        raise SystemExit(f"server ({spec}) did not become healthy: {self.proc.stderr.read() if self.proc.poll() is not None else ''}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def run_workload(port, name, rounds):
    """Returns (median tokens/s, texts) for one workload."""
    rates, texts = [], []
    for _ in range(rounds):
        if name.startswith("free@"):
            n = int(name.split("@")[1])
            prompts = [FREE[i % len(FREE)] + ("" if i < len(FREE) else f" (version {i // len(FREE) + 1})") for i in range(n)]
            results = [None] * n
            def one(i):
                results[i] = chat(port, prompts[i], 128)
            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            t0 = time.time()
            for t in threads: t.start()
            for t in threads: t.join()
            elapsed = time.time() - t0
            tokens = sum(r["usage"]["completion_tokens"] for r in results)
            texts = [r["choices"][0]["message"]["content"] for r in results]
        else:
            if name == "repeat":
                r_args = ("Repeat the following text exactly, word for word.\n\n" + PARAGRAPH, 160, None)
            elif name == "edit":
                r_args = ("Rename the variable `subtotal` to `net` in this Python code and return the whole code:\n\n" + CODE, 200, None)
            elif name == "predicted":
                expected = expected_edit.get(port)
                r_args = ("Rename the variable `subtotal` to `net` in this Python code and return the whole code:\n\n" + CODE, 200, expected)
            else:
                r_args = (FREE[0], 200, None)
            t0 = time.time()
            r = chat(port, *r_args)
            elapsed = time.time() - t0
            tokens = r["usage"]["completion_tokens"]
            texts = [r["choices"][0]["message"]["content"]]
            if name == "edit":
                expected_edit[port] = texts[0]
        rates.append(tokens / elapsed)
    return statistics.median(rates), texts


expected_edit = {}


def llamacpp_rows(a, workloads, texts):
    """llama.cpp on the same chat prompts, greedy: plain, and with its prompt-lookup draft (llama-cpp-python's
    LlamaPromptLookupDecoding, the n-gram lookup of llama.cpp's lookup example); median of the rounds."""
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    prompts = {"repeat": ("Repeat the following text exactly, word for word.\n\n" + PARAGRAPH, 160),
               "edit": ("Rename the variable `subtotal` to `net` in this Python code and return the whole code:\n\n" + CODE, 200),
               "free": (FREE[0], 200)}
    models = {"plain": Llama(model_path=a.model, n_ctx=2048, n_threads=a.threads, n_batch=512, verbose=False),
              "lookup": Llama(model_path=a.model, n_ctx=2048, n_threads=a.threads, n_batch=512, verbose=False,
                              draft_model=LlamaPromptLookupDecoding(max_ngram_size=3, num_pred_tokens=8))}
    rates = {}
    for _ in range(a.rounds):
        for w in workloads:
            if w not in prompts:
                continue
            for name, llm in models.items():
                llm.reset()
                content, max_tokens = prompts[w]
                t0 = time.time()
                r = llm.create_chat_completion(messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0)
                rates.setdefault((w, name), []).append(r["usage"]["completion_tokens"] / (time.time() - t0))
    print("llama.cpp (llama-cpp-python 0.3.x), same prompts, one stream:")
    print("| workload | llama.cpp tok/s | llama.cpp + prompt lookup tok/s | ratio |")
    print("|---|---|---|---|")
    for w in workloads:
        if (w, "plain") in rates:
            p, l = statistics.median(rates[(w, "plain")]), statistics.median(rates[(w, "lookup")])
            print(f"| {w} | {p:.1f} | {l:.1f} | {l / p:.2f}× |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="auto", help="comma-separated --spec modes compared with off")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--binary", default=os.path.join(ROOT, ".build/release/tern"))
    ap.add_argument("--workloads", default="repeat,edit,predicted,free,free@8,free@32")
    ap.add_argument("--extra", default="", help="more serve arguments for the speculating modes")
    ap.add_argument("--llamacpp", action="store_true",
                    help="also time llama.cpp (llama-cpp-python) on the one-stream workloads, without and with its prompt lookup")
    a = ap.parse_args()
    workloads = a.workloads.split(",")
    modes = ["off"] + [m for m in a.modes.split(",") if m != "off"]
    # Every server runs at once (idle ones sleep); each round sends each workload to each mode in turn, so slow
    # drifts of the machine fall on all modes alike.
    servers = {}
    try:
        for mode in modes:
            servers[mode] = Server(a.binary, a.model, a.threads, mode, a.extra.split() if mode != "off" else [])
            # The first proposal triggers the one-time step-cost calibration; get it out of the way.
            chat(servers[mode].port, "Repeat exactly: one two three four five six seven eight nine ten.", 32)
            run_workload(servers[mode].port, "edit", 1)
        samples = {}
        drafted = {}
        texts = {}
        for round in range(a.rounds):
            for w in workloads:
                # The order of the modes alternates from round to round (the second of two runs in a row is often
                # a little slower or faster; it must not always be the same mode).
                for mode in (modes if round % 2 == 0 else modes[::-1]):
                    port = servers[mode].port
                    before = (metric(port, "tern_spec_decode_draft_tokens_total"), metric(port, "tern_spec_decode_accepted_tokens_total"))
                    rate, out = run_workload(port, w, 1)
                    after = (metric(port, "tern_spec_decode_draft_tokens_total"), metric(port, "tern_spec_decode_accepted_tokens_total"))
                    samples.setdefault((w, mode), []).append(rate)
                    d = drafted.setdefault((w, mode), [0, 0])
                    d[0] += after[0] - before[0]
                    d[1] += after[1] - before[1]
                    texts[(w, mode)] = out
                    print(f"  {mode:6s} {w:10s} {rate:8.1f} tok/s", file=sys.stderr)
    finally:
        for s in servers.values():
            s.stop()
    table = {k: statistics.median(v) for k, v in samples.items()}
    acceptance = {k: (v[0], v[1] / v[0] if v[0] else 0) for k, v in drafted.items()}
    if a.llamacpp:
        llamacpp_rows(a, [w for w in workloads if "@" not in w], texts)
    print(f"| workload | " + " | ".join(f"{m} tok/s" for m in modes) + " | " + " | ".join(f"{m}/off" for m in modes[1:])
          + " | drafted (accepted) |")
    print("|---" * (1 + 2 * len(modes)) + "|")
    for w in workloads:
        rates = [table[(w, m)] for m in modes]
        ratios = [f"{table[(w, m)] / table[(w, 'off')]:.2f}×" for m in modes[1:]]
        acc = "; ".join(f"{int(acceptance[(w, m)][0])} ({acceptance[(w, m)][1] * 100:.0f}%)" for m in modes[1:])
        same = all(texts[(w, m)] == texts[(w, "off")] for m in modes[1:])
        print(f"| {w} | " + " | ".join(f"{r:.1f}" for r in rates) + " | " + " | ".join(ratios) + f" | {acc}{'' if same else ' — TEXT DIFFERS'} |")


if __name__ == "__main__":
    main()
