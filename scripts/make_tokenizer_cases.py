#!/usr/bin/env python3
"""Makes the tokenizer test fixtures in Tests/Fixtures/tokenizer/ with the `tokenizers` PyPI package as the oracle.

    python scripts/make_tokenizer_cases.py [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf] [--dump-vocab /tmp/x.json]

Outputs:
  smollm2_cases.json   [{"text", "ids", "ids_gpt2", "ids_llama3", "ids_qwen2"}] on SmolLM2's real vocab and merges
                       (read from the GGUF with the `gguf` package).  "ids" uses SmolLM2's own pre-tokenization
                       (HF: Sequence[Digits(individual_digits), ByteLevel]); the other keys re-run the same vocab with
                       the gpt2 / llama3 (ignore_merges, as Llama 3's tokenizer.json has) / qwen2 split regexes, so
                       the Swift pre-tokenizers are each checked against the reference.
  spm/tokenizer.json (+ tokenizer_config.json)  a small SentencePiece-style BPE (byte fallback, Llama-2 style normalizer/decoder).
  spm_gguf_vocab.json  the same vocabulary GGUF-style: tokens, scores, token types, no merges.
  spm_cases.json       [{"text", "ids", "ids_special"}] for the SPM tokenizer ("ids_special": special tokens parsed).
  pretokenizer_cases.json  [{"text", "gpt2", "smollm", "llama3", "qwen2"}]: the pieces each split makes.
  bytelevel/tokenizer.json, bytelevel_cases.json  a small byte-level BPE trained here, digits split individually.
"""
import argparse
import json
import os
import sys

from tokenizers import Tokenizer, Regex, AddedToken
from tokenizers import models, pre_tokenizers as P, normalizers as N, decoders as D, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "tokenizer")

# Hard strings shared by all fixtures.
CASES = [
    "",
    " ",
    "  ",
    "Hello world",
    "Hello, World!",
    "hello",
    " hello",
    "I'm sure they'll say it's fine, don't you think? We've seen it. I'd go.",
    "I'M SURE THEY'LL SAY IT'S FINE, DON'T YOU? WE'VE I'D",
    "'s 't 're 've 'm 'll 'd ' 'x '' x'y'z",
    "it'\u017f a long-s contraction",
    "Café naïve résumé façade Ångström",
    "e\u0301 combining acute, a\u0300\u0301\u0302 stacked",
    "你好，世界！这是一个测试。",
    "日本語のテキストとカタカナ ー",
    "한국어 텍스트입니다",
    "Россия и Українa",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "สวัสดีครับ",
    "Emoji: 😀👍🏽🇺🇸 and ❤️",
    "family 👨\u200d👩\u200d👧\u200d👦 flag 🏳️\u200d🌈 done",
    "🤖🤖🤖",
    "def foo(x):\n    return x ** 2\n",
    "for (int i = 0; i < 10; ++i) {\n\tprintf(\"%d\\n\", i);\n}",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "a  b   c    d",
    "   leading spaces",
    "trailing spaces   ",
    "\n\n\n",
    "a\n\nb",
    " \n \n ",
    "\t\t\tx",
    "line1\r\nline2\r\n",
    "x \t y",
    "end with newline\n",
    "   \n\n   word",
    "12345",
    "3.14159 and 1,000,000",
    "abc123def 4567890",
    "year 2024: 99 problems",
    "٣٤٥ Arabic-Indic digits",
    "Ⅻ roman numeral, ½ and ² superscript",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "a" * 300,
    "ab" * 150,
    "a\u00a0b non-breaking",
    "a\u3000b ideographic space",
    "a\u200bb zero width",
    "a\u2028b line separator",
    "a\u0085b next line",
    "\x00\x01\x7f control chars",
    "soft\u00adhyphen",
    "!!! ??? ... --- (parens) [brackets] {braces}",
    "@#$%^&*()_+-=~`|\\",
    "https://example.com/path?q=1&r=two#frag",
    "user@example.org",
    "# Title\n\n- item *bold* _it_ `code`\n",
    "Ünïcödé ÀÉÎÕÜ ß ﬁ ligature",
    "🇩🇪🇫🇷 ⌘ ✓ ✗ → ← ∑ ∫ √",
    "mixed中文English混合123数字",
    " ' leading apostrophe",
    "\u0301 lone combining mark",
    "tab\tseparated\tvalues\n1\t2\t3",
    "a\u00a0\u00a0b\u3000\u3000c\u0085\u0085d\u2028\u2029e\x0b\x0bf\x1c\x1cg\u180e\u180eh\u2000\u2000i\ufeff\ufeffj",
    "x \u00a0 y\u00a0 \n\u3000z",
]

SPM_EXTRA = [
    "<start_of_turn>user\nhello there<end_of_turn>\n<start_of_turn>model\n",
    "Hello<end_of_turn>world",
    "the quick brown fox jumps over the lazy dog",
    "The Quick Brown Fox",
    "zebra quartz ☃ snowman",
]

GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")


def read_gguf_vocab(path):
    import gguf
    r = gguf.GGUFReader(path)
    return {
        "tokens": list(r.fields["tokenizer.ggml.tokens"].contents()),
        "types": list(r.fields["tokenizer.ggml.token_type"].contents()),
        "merges": list(r.fields["tokenizer.ggml.merges"].contents()),
    }


def byte_level_tokenizer(vocab, pre, ignore_merges=False):
    tokens, types, merges = vocab["tokens"], vocab["types"], vocab["merges"]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ", 1)) for m in merges],
                     ignore_merges=ignore_merges)
    tok = Tokenizer(bpe)
    if pre == "smollm":
        tok.pre_tokenizer = P.Sequence([P.Digits(individual_digits=True),
                                        P.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre == "gpt2":
        tok.pre_tokenizer = P.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        regex = {"llama3": LLAMA3_RE, "qwen2": QWEN2_RE}[pre]
        tok.pre_tokenizer = P.Sequence([P.Split(Regex(regex), behavior="isolated"),
                                        P.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = D.ByteLevel()
    # Control tokens are added tokens, so they are split out only when the text holds them and we ask for it.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    return tok


def smollm2_cases(gguf_path, dump):
    vocab = read_gguf_vocab(gguf_path)
    if dump:
        with open(dump, "w") as f:
            json.dump(vocab, f)
    # tokenizers' encode() always splits added tokens out, so raw-text ids come from a twin with no added tokens.
    plain = {name: byte_level_tokenizer({**vocab, "types": [1] * len(vocab["types"])}, name,
                                        ignore_merges=(name == "llama3"))
             for name in ("smollm", "gpt2", "llama3", "qwen2")}
    out = []
    for text in CASES:
        case = {"text": text}
        for name in ("smollm", "gpt2", "llama3", "qwen2"):
            case["ids" if name == "smollm" else "ids_" + name] = plain[name].encode(text, add_special_tokens=False).ids
        out.append(case)
    special_tok = byte_level_tokenizer(vocab, "smollm")
    special = []
    for text in ["<|im_start|>user\nhi<|im_end|>", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
                 "a<|endoftext|>b<|im_end|><|im_end|>", "<|im_start|<|im_start|>x"]:
        special.append({"text": text, "ids": special_tok.encode(text, add_special_tokens=False).ids})
    return {"cases": out, "special_cases": special}


# ---------------------------------------------------------------- SentencePiece-style BPE

TRAIN_TEXT = """The quick brown fox jumps over the lazy dog. A tokenizer splits text into pieces that a model
reads as numbers. Sentences are made of words, and words of letters; the most frequent pairs of symbols are merged
first, so common words become single pieces while rare ones are spelled out. Hello world, hello there, hello again!
Numbers like 12 and 345 appear in text too. Café and naïve keep their accents. This is the end of the paragraph,
where the model stops and the user starts to type the next question about the weather, the news or the time."""


def spm_vocab():
    """Trains a small BPE on the paragraph (Metaspace split, only for training), then orders the vocabulary
    SentencePiece-style: <unk> <s> </s>, the 256 byte tokens, chat control tokens, single characters, merged pieces.
    Scores are -id for pieces, so best score == earliest merge; merges are then re-derived from the scores the way
    HF's slow->fast converter does (every split of a piece whose halves are pieces, ranked by the piece's score),
    which makes score-ranked merging (GGUF, no merges) and merge-ranked merging (tokenizer.json) the same function."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = P.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=520, min_frequency=2, special_tokens=[], show_progress=False)
    tok.train_from_iterator([TRAIN_TEXT] + CASES, trainer=trainer)
    trained = tok.get_vocab()
    singles = sorted([t for t in trained if len(t) == 1])
    merged = sorted([t for t in trained if len(t) > 1], key=lambda t: trained[t])
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["<start_of_turn>", "<end_of_turn>"]
    types = [2, 3, 3] + [6] * 256 + [3, 3]
    tokens += singles + merged
    types += [1] * (len(singles) + len(merged))
    scores = [0.0] * (3 + 256 + 2) + [-float(i) for i in range(3 + 256 + 2, len(tokens))]
    index = {t: i for i, t in enumerate(tokens)}
    pairs = []
    for t in merged:
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in index and b in index and types[index[a]] == 1 and types[index[b]] == 1:
                pairs.append((index[t], index[a], index[b], a, b))
    pairs.sort()
    merges = [(a, b) for _, _, _, a, b in pairs]
    return tokens, scores, types, merges


def spm_tokenizer(tokens, types, merges):
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token="<unk>",
                     byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.normalizer = N.Sequence([N.Prepend("\u2581"), N.Replace(" ", "\u2581")])
    tok.decoder = D.Sequence([D.Replace("\u2581", " "), D.ByteFallback(), D.Fuse(), D.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty in (2, 3)])
    return tok


def spm_fixtures():
    tokens, scores, types, merges = spm_vocab()
    tok = spm_tokenizer(tokens, types, merges)
    os.makedirs(os.path.join(OUT, "spm"), exist_ok=True)
    tok.save(os.path.join(OUT, "spm", "tokenizer.json"))
    with open(os.path.join(OUT, "spm", "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                   "add_eos_token": False,
                   "chat_template": "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                                    "<end_of_turn>\n{% endfor %}"}, f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "spm_gguf_vocab.json"), "w") as f:
        json.dump({"tokens": tokens, "scores": scores, "types": types, "bos": 1, "eos": 2, "unk": 0},
                  f, ensure_ascii=False)
    # Raw-text reference: a twin without added tokens, so control-token text is not split out.
    raw = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    raw.normalizer = tok.normalizer
    out = []
    for text in CASES + SPM_EXTRA:
        case = {"text": text, "ids": raw.encode(text, add_special_tokens=False).ids,
                "ids_special": tok.encode(text, add_special_tokens=False).ids}
        # HF strips one leading space when decoding, which is what our decoder does too.
        case["decoded"] = tok.decode(case["ids"], skip_special_tokens=False)
        out.append(case)
    with open(os.path.join(OUT, "spm_cases.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    return len(out)


# ---------------------------------------------------------------- small byte-level BPE from tokenizer.json

def bytelevel_fixtures():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = P.Sequence([P.Digits(individual_digits=True),
                                    P.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = D.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=P.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TRAIN_TEXT] + CASES, trainer=trainer)
    os.makedirs(os.path.join(OUT, "bytelevel"), exist_ok=True)
    tok.save(os.path.join(OUT, "bytelevel", "tokenizer.json"))
    raw = Tokenizer.from_file(os.path.join(OUT, "bytelevel", "tokenizer.json"))
    vocab = raw.get_vocab()
    # Raw-text reference without the added tokens (tokenizers always splits added tokens out).
    plain = json.loads(raw.to_str())
    plain["added_tokens"] = []
    plain = Tokenizer.from_str(json.dumps(plain))
    out = []
    for text in CASES:
        out.append({"text": text, "ids": plain.encode(text, add_special_tokens=False).ids,
                    "ids_special": raw.encode(text, add_special_tokens=False).ids})
    with open(os.path.join(OUT, "bytelevel_cases.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    return len(vocab)


def pretokenizer_fixtures():
    """Piece boundaries alone (vocabulary-independent), as raw text slices, for every supported split."""
    splitters = {
        "gpt2": P.ByteLevel(add_prefix_space=False, use_regex=True),
        "smollm": P.Sequence([P.Digits(individual_digits=True), P.ByteLevel(add_prefix_space=False, use_regex=True)]),
        "llama3": P.Split(Regex(LLAMA3_RE), behavior="isolated"),
        "qwen2": P.Split(Regex(QWEN2_RE), behavior="isolated"),
    }
    out = []
    for text in CASES + SPM_EXTRA:
        case = {"text": text}
        for name, pre in splitters.items():
            pieces = [text[a:b] for _, (a, b) in pre.pre_tokenize_str(text)]
            assert "".join(pieces) == text, (name, text)
            case[name] = pieces
        out.append(case)
    with open(os.path.join(OUT, "pretokenizer_cases.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    return len(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--dump-vocab", default=None, help="also write the GGUF vocab as JSON here (for harnesses)")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if os.path.exists(args.gguf):
        res = smollm2_cases(args.gguf, args.dump_vocab)
        with open(os.path.join(OUT, "smollm2_cases.json"), "w") as f:
            json.dump(res, f, ensure_ascii=False, indent=0)
        print("smollm2 cases:", len(res["cases"]), "special:", len(res["special_cases"]))
    else:
        print("no GGUF at", args.gguf, "- skipping smollm2_cases.json", file=sys.stderr)
    print("pre-tokenizer cases:", pretokenizer_fixtures())
    print("spm cases:", spm_fixtures())
    print("byte-level vocab:", bytelevel_fixtures())


if __name__ == "__main__":
    main()
