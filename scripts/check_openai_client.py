#!/usr/bin/env python3
"""Checks that the official `openai` Python package works unchanged against a running `tern serve`.

Usage: python3 scripts/check_openai_client.py [--base-url http://127.0.0.1:8080/v1] [--model NAME] [--api-key KEY]
Exercises completions and chat completions, streamed and not, and an error. Prints "all checks passed".
"""
import argparse
import sys

import openai


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--model", default=None)
    ap.add_argument("--api-key", default="unused")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)

    model = args.model or client.models.list().data[0].id
    assert model in [m.id for m in client.models.list().data], "model list"

    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert c.object == "text_completion" and c.choices[0].finish_reason in ("stop", "length"), c
    assert c.usage.completion_tokens >= 1, c.usage
    text = c.choices[0].text

    streamed = ""
    for chunk in client.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                                           temperature=0, stream=True):
        streamed += chunk.choices[0].text if chunk.choices else ""
    assert streamed == text, (streamed, text)

    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                          max_tokens=12, temperature=0)
    assert chat.choices[0].message.role == "assistant", chat
    answer = chat.choices[0].message.content

    pieces, usage = [], None
    for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                                max_tokens=12, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                pieces.append(ch.delta.content)
    assert "".join(pieces) == answer, (pieces, answer)
    assert usage is not None and usage.completion_tokens >= 1, usage

    try:
        client.completions.create(model=model, prompt="hi", max_tokens=-1)
        raise AssertionError("negative max_tokens was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400

    print("completion:", repr(text))
    print("chat:", repr(answer))
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("check failed:", e, file=sys.stderr)
        sys.exit(1)
