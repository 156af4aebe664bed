#!/usr/bin/env python3
"""Does one long uncached prompt stall everyone else? Against a running `tern serve` on loopback:
4 streams decode; then one request with an uncached prompt of --long-tokens tokens arrives; one second later a
short (8-token) request arrives. Reports the 4 streams' inter-token gaps while the long prompt is being computed
(p50, p99, max), the short request's time to first token, and the long request's.
Usage: python3 scripts/check_long_prompt_stall.py [--url http://127.0.0.1:8080] [--long-tokens 4000]
"""
import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse


def stream(url, body, on_token):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read()[:300])
    buf = b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if ev.startswith(b"data: ") and ev != b"data: [DONE]":
                on_token(time.perf_counter())
    c.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--long-tokens", type=int, default=4000)
    a = ap.parse_args()
    host = urllib.parse.urlparse(a.url).hostname
    assert host in ("127.0.0.1", "localhost", "::1"), "loopback only"
    rng = random.Random(7)
    stamps = [[] for _ in range(4)]
    threads = []
    for i in range(4):
        body = {"prompt": [1 + i, 2, 3, 4], "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}
        t = threading.Thread(target=stream, args=(a.url, body, stamps[i].append))
        t.start()
        threads.append(t)
    time.sleep(2.0)
    long_first = []
    long_prompt = [rng.randrange(100, 40000) for _ in range(a.long_tokens)]
    t_long = time.perf_counter()
    lt = threading.Thread(target=stream, args=(a.url, {"prompt": long_prompt, "max_tokens": 4, "temperature": 0,
                                                       "stream": True}, long_first.append))
    lt.start()
    time.sleep(1.0)
    short_first = []
    t_short = time.perf_counter()
    stream(a.url, {"prompt": [5, 6, 7, 8, 9, 10, 11, 12], "max_tokens": 4, "temperature": 0, "stream": True}, short_first.append)
    lt.join()
    t_long_end = long_first[0] if long_first else time.perf_counter()
    for t in threads:
        t.join()
    gaps = []
    for s in stamps:
        for x, y in zip(s, s[1:]):
            if t_long <= y <= t_long_end:
                gaps.append(y - x)
    print(f"long prompt {a.long_tokens} tokens: TTFT {t_long_end - t_long:.2f} s")
    print(f"short request (8 tokens) TTFT while it prefills: {short_first[0] - t_short:.3f} s")
    print(f"4 running streams' inter-token gaps during the long prefill: n={len(gaps)} p50 {pct(gaps, 50) * 1000:.0f} ms, "
          f"p99 {pct(gaps, 99) * 1000:.0f} ms, max {max(gaps) * 1000 if gaps else float('nan'):.0f} ms")


if __name__ == "__main__":
    main()
