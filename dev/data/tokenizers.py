#!/usr/bin/env python3
"""Vocabulary files for common/tokenizer.h, and the test fixtures that pin it to the Python libraries.

  vocab     writes, from the committed tokenizer sources and no network:
              data/tokenizers/gpt2/gpt2_tokenizer.bin   llm.c's format: int32 header[256] = {20240328, 2, 50257,
                                                        50256 (EOT)}, then per token uint8 length + its bytes,
                                                        from tiktoken's GPT-2 encoding built from encoder.json
                                                        and vocab.bpe (as dev/data/prepare.py builds it)
              data/tokenizers/llama2/tokenizer.bin      llama2.c's format: int32 max token length, then per token
                                                        float32 score, int32 length, its bytes; from
                                                        sentencepiece and tokenizer.model, with llama2.c's
                                                        conventions: U+2581 written as a space, <s> and </s> as
                                                        "\\n<s>\\n" and "\\n</s>\\n". Same bytes as llama2.c's
                                                        own tokenizer.bin.
  fixtures  writes into --out (default test/fixtures/tokenizer) what the libraries give, for
            test/test_tokenizer.sh to compare with the C:
              strings.txt               the strings to encode, one a line, escaped (see escape())
              {gpt2,llama2}_encode.txt  per string its ids: tiktoken encode_ordinary, sentencepiece encode
              {gpt2,llama2}_decode.txt  per line random ids, a tab, their decoding (escaped)
              {gpt2,llama2}_val.txt     the decoding of the first SHARD_TOKENS tokens of
                                        data/tinyshakespeare/*_val_000.bin, raw bytes
              versions.txt              the library versions that wrote them

  vocab --out DIR writes both files into DIR instead (test/test_tokenizer.sh compares them with the committed ones).

Example:  .venv/bin/python dev/data/tokenizers.py vocab && .venv/bin/python dev/data/tokenizers.py fixtures
"""

import argparse
import os
import random
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare import (DEFAULT_GPT2_DIR, DEFAULT_LLAMA2_MODEL, GPT2_EOT_ID, HEADER_INTS,  # noqa: E402
                     GPT2Tokenizer, Llama2Tokenizer, fail, read_shard)

GPT2_TOKENIZER_MAGIC = 20240328
SHARD_TOKENS = 1000  # tokens of each validation shard decoded
DEFAULT_FIXTURES = "test/fixtures/tokenizer"

# The encode test set: each string class the brief and the two algorithms care about.
STRINGS = [
    "Hello world",
    "hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "multiple   spaces   inside",
    " ",
    "   ",
    "\n",
    "\n\n",
    "line one\nline two\n",
    "para one\n\npara two\n\n\n",
    "tab\tseparated\tvalues",
    "  \n  indented\n    more\n",
    "\r\nwindows\r\nline ends",
    "digits 0123456789 and 3.14159, 1,000,000 and 2024-06-01",
    "12345678901234567890",
    "a1b2c3 x86_64 v2.0.1",
    "punctuation!?.,;:-_()[]{}<>\"'`~@#$%^&*+=|\\/",
    "!!! ??? ... --- ***",
    "it's they're we've I'm you'll he'd don't",
    "IT'S THEY'RE (capital contractions)",
    "'quoted' ''double'' 's alone",
    "rock 'n' roll o'clock",
    "café naïve résumé coöperate Ångström",
    "Straße über Öl größer",
    "Ελληνικά και Русский язык",
    "日本語のテキストです。",
    "中文文本，标点符号！",
    "한국어 텍스트",
    "emoji 👋🌍 and 🎉!",
    "family 👨‍👩‍👧 flag 🇫🇷 heart ❤️",
    "mixed日本語and English",
    "price: 5€ or £3 or ¥100",
    "math: x² + y² = z², ½ + ¼",
    "non\u00a0breaking\u00a0space",
    "em—dash – en-dash … ellipsis “quotes” ‘single’",
    "e\u0301 combining acute",
    "<|endoftext|> as plain text",
    "<s> and </s> and <unk> as text",
    "<0x41> looks like a byte token",
    "a",
    "I",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "                                        forty spaces",
    "ZALGO t\u0335\u0301e\u0336x\u0337t",
    "word👋word abc123def x²y 日本語123 Ωmega“quoted”words 5€5 a\u00a0\u00a0b",
    "tabs\t\t\tthen text \t mixed \n\t\n",
]
# Random strings over a pool of characters whose classes (letter, number, space, other) common/tokenizer.h
# knows exactly, so any difference is one of the algorithm, not of its Unicode approximation.
POOL = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
POOL += list("      \n\n\t.,;:!?'\"-()[]$%&*/\\_")
POOL += list("éèêëàâäôöüçñßÅøæœΩπλжщя日本語中文字한국어のテキスト。，！、“”‘’—–…€£¥²³½×÷") + ["\u00a0", "\u3000"]
POOL += ["👋", "🌍", "🎉", "❤", "\ufe0f", "\u200d", "\u0301", "'s", "'ll", "'re", " the", " and"]
N_RANDOM_STRINGS = 300
N_SHAKESPEARE_LINES = 200  # plus the first lines of input.txt, each a string of its own
N_RANDOM_DECODES = 100


def escape(b):
    """Bytes as one line of ASCII: \\\\, \\n, \\t, \\r, other bytes outside 0x20..0x7e as \\xHH (C does the same)."""
    out = []
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif c == 0x0A:
            out.append("\\n")
        elif c == 0x09:
            out.append("\\t")
        elif c == 0x0D:
            out.append("\\r")
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02X}")
    return "".join(out)


def write_gpt2_vocab(tok, path):
    enc = tok.enc
    n = enc.n_vocab
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2], header[3] = GPT2_TOKENIZER_MAGIC, 2, n, GPT2_EOT_ID
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for i in range(n):
            b = enc.decode_single_token_bytes(i)  # the EOT token gives b"<|endoftext|>"
            if not 0 < len(b) < 256:
                fail(f"GPT-2 token {i} has {len(b)} bytes, not 1..255")
            f.write(struct.pack("<B", len(b)) + b)
    print(f"{path}: {n} tokens, EOT {GPT2_EOT_ID}")


def llama2_piece_bytes(sp, i):
    if i == sp.bos_id():
        piece = "\n<s>\n"
    elif i == sp.eos_id():
        piece = "\n</s>\n"
    else:
        piece = sp.id_to_piece(i).replace("\u2581", " ")
    return piece.encode("utf-8")


def write_llama2_vocab(tok, path):
    sp = tok.sp
    pieces = [llama2_piece_bytes(sp, i) for i in range(sp.vocab_size())]
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for i, b in enumerate(pieces):
            f.write(struct.pack("<fi", sp.get_score(i), len(b)) + b)
    print(f"{path}: {len(pieces)} tokens, max length {max(len(p) for p in pieces)}")


def cmd_vocab(args):
    gpt2_dir = args.out or args.gpt2_dir
    llama_dir = args.out or os.path.dirname(args.tokenizer_model)
    os.makedirs(gpt2_dir, exist_ok=True)
    write_gpt2_vocab(GPT2Tokenizer(args.gpt2_dir), os.path.join(gpt2_dir, "gpt2_tokenizer.bin"))
    write_llama2_vocab(Llama2Tokenizer(args.tokenizer_model), os.path.join(llama_dir, "tokenizer.bin"))


def test_strings():
    with open("data/tinyshakespeare/input.txt", encoding="utf-8") as f:
        lines = f.read().split("\n")[:N_SHAKESPEARE_LINES]
    rng = random.Random(2581)
    rand = ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))) for _ in range(N_RANDOM_STRINGS)]
    return STRINGS + [line for line in lines if line] + rand


def random_ids(rng, tok):
    """A short random id sequence; Llama's mixes <s>, </s>, <unk>, ASCII byte tokens and pieces."""
    n = rng.randint(1, 12)
    if tok.name == "gpt2":
        return [rng.randrange(tok.vocab_size) for _ in range(n)]
    ids = []
    for _ in range(n):
        r = rng.random()
        if r < 0.15:
            ids.append(rng.choice([0, 1, 2]))
        elif r < 0.3:
            ids.append(3 + rng.randrange(0x80))  # ASCII bytes: valid UTF-8, so decode's str is the bytes
        elif r < 0.4:
            ids.append(rng.choice([29871, 259, 1678]))  # "▁", "▁▁", "▁▁▁▁"
        else:
            ids.append(rng.randrange(259, tok.vocab_size))
    return ids


def decode_bytes(tok, ids):
    if tok.name == "gpt2":
        return tok.enc.decode_bytes(ids)
    return tok.decode(ids).encode("utf-8")


def cmd_fixtures(args):
    import sentencepiece
    import tiktoken
    os.makedirs(args.out, exist_ok=True)
    strings = test_strings()
    with open(os.path.join(args.out, "strings.txt"), "w", encoding="ascii", newline="\n") as f:
        for s in strings:
            f.write(escape(s.encode("utf-8")) + "\n")
    for tok in (GPT2Tokenizer(args.gpt2_dir), Llama2Tokenizer(args.tokenizer_model)):
        with open(os.path.join(args.out, f"{tok.name}_encode.txt"), "w", newline="\n") as f:
            for s in strings:
                ids = tok.encode(s)
                if tok.decode(ids) != s:  # both are lossless on these strings: the C test checks it too
                    fail(f"{tok.name}: {s!r} does not decode back to itself")
                f.write(" ".join(map(str, ids)) + "\n")
        rng = random.Random(20240328)
        with open(os.path.join(args.out, f"{tok.name}_decode.txt"), "w", newline="\n") as f:
            for _ in range(N_RANDOM_DECODES):
                ids = random_ids(rng, tok)
                f.write(" ".join(map(str, ids)) + "\t" + escape(decode_bytes(tok, ids)) + "\n")
        shard = f"data/tinyshakespeare/{tok.name}_val_000.bin"
        ids = read_shard(shard, tok.vocab_size)[:SHARD_TOKENS].tolist()
        text = tok.decode(ids).encode("utf-8")
        if text != decode_bytes(tok, ids):
            fail(f"{shard}: decode and decode_bytes differ")
        with open(os.path.join(args.out, f"{tok.name}_val.txt"), "wb") as f:
            f.write(text)
    with open(os.path.join(args.out, "versions.txt"), "w") as f:
        f.write(f"tiktoken {tiktoken.__version__}\nsentencepiece {sentencepiece.__version__}\n")
    print(f"{args.out}: {len(strings)} strings, {N_RANDOM_DECODES} random id sequences and "
          f"{SHARD_TOKENS} shard tokens per vocabulary (tiktoken {tiktoken.__version__}, "
          f"sentencepiece {sentencepiece.__version__})")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Vocabulary files for common/tokenizer.h and its test fixtures.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("vocab", "fixtures"):
        p = sub.add_parser(name)
        p.add_argument("--tokenizer-model", default=DEFAULT_LLAMA2_MODEL, metavar="PATH")
        p.add_argument("--gpt2-dir", default=DEFAULT_GPT2_DIR, metavar="PATH")
        if name == "fixtures":
            p.add_argument("--out", default=DEFAULT_FIXTURES, metavar="DIR")
        else:
            p.add_argument("--out", default=None, metavar="DIR",
                           help="write both files here (default: beside their sources)")
    args = ap.parse_args(argv)
    {"vocab": cmd_vocab, "fixtures": cmd_fixtures}[args.cmd](args)


if __name__ == "__main__":
    main()
