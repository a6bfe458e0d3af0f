#!/usr/bin/env python3
"""Tokenize text into token shards in llm.c's format (see docs/formats.md, "Token shards").

A shard is an int32 header of 256 entries -- [0] = 20240520 (magic), [1] = 1 (version:
uint16 tokens), [2] = number of tokens, [3] = vocabulary size -- followed by the tokens as
little-endian uint16.

Input
  One or more of: text files; folders (every *.txt below them, recursively, in sorted order
  of their path relative to the folder); .tar / .tar.gz / .tar.xz archives (every *.txt
  member, in sorted member-name order; read in memory, nothing is unpacked to disk).
  Each file is one document. Text is read as UTF-8; a leading byte-order mark is dropped
  and CRLF / lone CR line endings become LF (use --keep-crlf to keep them as they are).
  Empty documents are skipped.

Tokenizers
  llama2  SentencePiece with Meta's Llama 2 tokenizer.model (vocab 32000). Every document
          starts with BOS (id 1), as llama2.c does.
  gpt2    tiktoken's BPE built offline from OpenAI's encoder.json + vocab.bpe (vocab 50257).
          Every document starts with <|endoftext|> (id 50256), the document separator used
          by llm.c. A literal "<|endoftext|>" inside the text is encoded as ordinary text.

Train / validation split
  Each document is tokenized on its own (with its BOS / <|endoftext|> first); the first
  ceil((1 - val_frac) * n) of its n tokens go to the train stream and the remaining tokens,
  i.e. the last val_frac of that document, go to the validation stream. So every document
  (every book, say) contributes to both splits in proportion to its length, and for a single
  file this is simply "the last 10% is validation". The split is at a token boundary, so it
  may fall inside a word. Documents keep their input order in both streams.

Output
  OUT/NAME_train_000.bin, NAME_train_001.bin, ... and OUT/NAME_val_000.bin, ...; a new
  shard is started every --shard-tokens tokens. No validation shard is written when the
  validation stream is empty (--val-frac 0). Shards NAME_train_*.bin / NAME_val_*.bin
  already in OUT (from an earlier run) are deleted first, so a glob never mixes runs.

Check
  After writing, the shards are read back from disk and, for a sample of documents (first,
  last and a few in between; --check-docs), the document's train and validation tokens are
  put back together, decoded and compared with the document's text; any difference is an
  error. The header of every shard is checked too.

Example
  python dev/data/prepare.py --tokenizer gpt2 --out data/mytext --name gpt2 my_texts/
"""

import argparse
import glob
import os
import sys
import tarfile
import time

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
DEFAULT_LLAMA2_MODEL = "data/tokenizers/llama2/tokenizer.model"
DEFAULT_GPT2_DIR = "data/tokenizers/gpt2"

# GPT-2's pre-tokenization regex (the "r50k" pattern that tiktoken uses for gpt2).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256


def fail(msg):
    print(f"prepare.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------
# tokenizers: each has .name, .vocab_size, .doc_start_id, .encode(str) -> list[int],
# .decode(list[int]) -> str


class Llama2Tokenizer:
    name = "llama2"

    def __init__(self, model_path):
        if not os.path.isfile(model_path):
            fail(f"Llama 2 tokenizer model not found: {model_path} (see --tokenizer-model)")
        import sentencepiece as spm

        try:
            self.sp = spm.SentencePieceProcessor(model_file=model_path)
        except Exception as e:  # sentencepiece raises a bare RuntimeError/OSError
            fail(f"could not load SentencePiece model {model_path}: {e}")
        self.vocab_size = self.sp.vocab_size()
        self.doc_start_id = self.sp.bos_id()
        if self.vocab_size != 32000 or self.doc_start_id != 1:
            print(f"prepare.py: warning: {model_path} has vocab {self.vocab_size}, BOS "
                  f"{self.doc_start_id} (Llama 2 has 32000 and 1)", file=sys.stderr)

    def encode(self, text):
        return self.sp.encode(text)

    def decode(self, ids):
        return self.sp.decode(ids)


class GPT2Tokenizer:
    name = "gpt2"

    def __init__(self, gpt2_dir):
        enc_json = os.path.join(gpt2_dir, "encoder.json")
        vocab_bpe = os.path.join(gpt2_dir, "vocab.bpe")
        for p in (enc_json, vocab_bpe):
            if not os.path.isfile(p):
                fail(f"GPT-2 tokenizer file not found: {p} (see --gpt2-dir)")
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        try:
            ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=vocab_bpe,
                                                    encoder_json_file=enc_json)
        except Exception as e:
            fail(f"could not build the GPT-2 BPE from {vocab_bpe} and {enc_json}: {e}")
        self.enc = tiktoken.Encoding(
            name="gpt2-local",
            pat_str=GPT2_PAT_STR,
            mergeable_ranks=ranks,
            special_tokens={GPT2_EOT: GPT2_EOT_ID},
            explicit_n_vocab=GPT2_EOT_ID + 1,
        )
        self.vocab_size = self.enc.n_vocab
        self.doc_start_id = GPT2_EOT_ID

    def encode(self, text):
        # encode_ordinary: special-token text inside a document is plain text
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.enc.decode(ids, errors="strict")


# ---------------------------------------------------------------------------------------
# input documents


def normalize(text, keep_crlf):
    if text.startswith("\ufeff"):
        text = text[1:]
    if not keep_crlf:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def decode_utf8(data, where):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"{where} is not valid UTF-8 ({e})")


def is_tar(path):
    return path.endswith((".tar", ".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar.bz2"))


def iter_documents(inputs):
    """Yield (label, raw text) for every document, in order."""
    for inp in inputs:
        if os.path.isdir(inp):
            files = []
            for root, _dirs, names in os.walk(inp):
                for n in names:
                    if n.endswith(".txt"):
                        files.append(os.path.join(root, n))
            files.sort(key=lambda p: os.path.relpath(p, inp))
            if not files:
                fail(f"no *.txt files in folder {inp}")
            for p in files:
                with open(p, "rb") as f:
                    yield p, decode_utf8(f.read(), p)
        elif os.path.isfile(inp) and is_tar(inp):
            try:
                tf = tarfile.open(inp, "r:*")
            except (tarfile.TarError, OSError) as e:
                fail(f"cannot read archive {inp}: {e}")
            with tf:
                members = sorted((m for m in tf.getmembers()
                                  if m.isfile() and m.name.endswith(".txt")),
                                 key=lambda m: m.name)
                if not members:
                    fail(f"no *.txt files in archive {inp}")
                for m in members:
                    where = f"{inp}:{m.name}"
                    yield where, decode_utf8(tf.extractfile(m).read(), where)
        elif os.path.isfile(inp):
            with open(inp, "rb") as f:
                yield inp, decode_utf8(f.read(), inp)
        elif os.path.exists(inp):
            fail(f"input is neither a file nor a folder: {inp}")
        else:
            fail(f"input not found: {inp}")


# ---------------------------------------------------------------------------------------
# shard writer


class ShardWriter:
    """Writes a token stream as OUT/NAME_SPLIT_NNN.bin shards of at most shard_tokens tokens."""

    def __init__(self, out_dir, name, split, vocab_size, shard_tokens):
        self.out_dir, self.name, self.split = out_dir, name, split
        self.vocab_size, self.shard_tokens = vocab_size, shard_tokens
        self.buf, self.buf_len = [], 0
        self.paths, self.counts = [], []
        self.total = 0  # tokens written or buffered so far (= stream position)

    def add(self, toks):
        toks = np.asarray(toks, dtype=np.uint16)
        i = 0
        while i < len(toks):
            take = min(len(toks) - i, self.shard_tokens - self.buf_len)
            self.buf.append(toks[i:i + take])
            self.buf_len += take
            self.total += take
            i += take
            if self.buf_len == self.shard_tokens:
                self._flush()

    def _flush(self):
        if self.buf_len == 0:
            return
        path = os.path.join(self.out_dir, f"{self.name}_{self.split}_{len(self.paths):03d}.bin")
        header = np.zeros(HEADER_INTS, dtype="<i4")
        header[0], header[1], header[2], header[3] = MAGIC, VERSION, self.buf_len, self.vocab_size
        tokens = np.concatenate(self.buf).astype("<u2", copy=False)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.tobytes())
        os.replace(tmp, path)
        self.paths.append(path)
        self.counts.append(self.buf_len)
        self.buf, self.buf_len = [], 0

    def close(self):
        self._flush()


def read_shard(path, vocab_size):
    data = np.fromfile(path, dtype=np.uint8)
    if len(data) < HEADER_INTS * 4:
        fail(f"check: {path} is shorter than its header")
    header = data[:HEADER_INTS * 4].view("<i4")
    toks = data[HEADER_INTS * 4:].view("<u2")
    if header[0] != MAGIC or header[1] != VERSION or header[3] != vocab_size:
        fail(f"check: {path} has a bad header {header[:4].tolist()}")
    if header[2] != len(toks):
        fail(f"check: {path} says {header[2]} tokens but holds {len(toks)}")
    if len(toks) and int(toks.max()) >= vocab_size:
        fail(f"check: {path} holds a token id >= vocab size {vocab_size}")
    return toks


def read_stream(writer):
    if not writer.paths:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate([read_shard(p, writer.vocab_size) for p in writer.paths])


# ---------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Tokenize text files / folders / .tar(.xz) archives into llm.c-format "
                    "token shards (uint16 tokens after a 256-int32 header).")
    ap.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="text file, folder (all *.txt inside, recursively, sorted) or "
                         ".tar/.tar.xz archive of *.txt files; each file is one document")
    ap.add_argument("--tokenizer", required=True, choices=["llama2", "gpt2"])
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    ap.add_argument("--name", default=None, metavar="PREFIX",
                    help="shard file prefix (default: the tokenizer name)")
    ap.add_argument("--val-frac", type=float, default=0.1,
                    help="fraction of each document's tokens (its end) that goes to "
                         "validation (default 0.1)")
    ap.add_argument("--shard-tokens", type=int, default=100_000_000,
                    help="maximum tokens per shard (default 100000000)")
    ap.add_argument("--tokenizer-model", default=DEFAULT_LLAMA2_MODEL, metavar="PATH",
                    help=f"SentencePiece model for llama2 (default {DEFAULT_LLAMA2_MODEL})")
    ap.add_argument("--gpt2-dir", default=DEFAULT_GPT2_DIR, metavar="PATH",
                    help=f"folder with encoder.json and vocab.bpe (default {DEFAULT_GPT2_DIR})")
    ap.add_argument("--keep-crlf", action="store_true",
                    help="keep CR / CRLF line endings (default: convert to LF)")
    ap.add_argument("--check-docs", type=int, default=5,
                    help="documents to decode back and compare after writing (default 5; "
                         "0 = none, -1 = all)")
    args = ap.parse_args(argv)

    if not 0.0 <= args.val_frac < 1.0:
        ap.error("--val-frac must be in [0, 1)")
    if args.shard_tokens < 1:
        ap.error("--shard-tokens must be positive")
    name = args.name or args.tokenizer
    for inp in args.inputs:  # fail early, before loading a tokenizer
        if not os.path.exists(inp):
            fail(f"input not found: {inp}")

    t0 = time.time()
    if args.tokenizer == "llama2":
        tok = Llama2Tokenizer(args.tokenizer_model)
    else:
        tok = GPT2Tokenizer(args.gpt2_dir)
    if tok.vocab_size > 65536:
        fail(f"vocab size {tok.vocab_size} does not fit uint16 tokens")

    os.makedirs(args.out, exist_ok=True)
    # shards of an earlier run with the same prefix would be picked up by a loader's glob
    for split in ("train", "val"):
        for old in sorted(glob.glob(os.path.join(glob.escape(args.out),
                                                 f"{glob.escape(name)}_{split}_[0-9][0-9][0-9]*.bin"))):
            print(f"removing old shard {old}")
            os.remove(old)
    train = ShardWriter(args.out, name, "train", tok.vocab_size, args.shard_tokens)
    val = ShardWriter(args.out, name, "val", tok.vocab_size, args.shard_tokens)

    # per document: (label, train start, train count, val start, val count)
    docs = []
    n_chars = 0
    for label, raw in iter_documents(args.inputs):
        text = normalize(raw, args.keep_crlf)
        if not text:
            print(f"prepare.py: warning: skipping empty document {label}", file=sys.stderr)
            continue
        ids = [tok.doc_start_id] + tok.encode(text)
        n_train = len(ids) - int(len(ids) * args.val_frac)  # = ceil((1 - f) * n)
        docs.append((label, train.total, n_train, val.total, len(ids) - n_train))
        train.add(ids[:n_train])
        val.add(ids[n_train:])
        n_chars += len(text)
    if not docs:
        fail("no non-empty documents in the input")
    train.close()
    val.close()
    t_tok = time.time() - t0

    # read back from disk and round-trip a sample of documents
    if args.check_docs != 0:
        tr, va = read_stream(train), read_stream(val)
        if len(tr) != train.total or len(va) != val.total:
            fail("check: shards hold a different number of tokens than were written")
        if args.check_docs < 0 or args.check_docs >= len(docs):
            sample = range(len(docs))
        else:
            k = args.check_docs
            sample = sorted({round(i * (len(docs) - 1) / max(k - 1, 1)) for i in range(k)})
        docs_by_label = {}
        for i in sample:
            docs_by_label[docs[i][0]] = i
        checked = 0
        for label, raw in iter_documents(args.inputs):
            i = docs_by_label.get(label)
            if i is None:
                continue
            _, ts, tn, vs, vn = docs[i]
            ids = np.concatenate([tr[ts:ts + tn], va[vs:vs + vn]]).tolist()
            if ids[0] != tok.doc_start_id:
                fail(f"check: document {label} does not start with id {tok.doc_start_id}")
            if tok.decode(ids[1:]) != normalize(raw, args.keep_crlf):
                fail(f"check: decoding the shards' tokens of {label} does not give its text back")
            checked += 1
        print(f"check: headers of {len(train.paths) + len(val.paths)} shard(s) ok; "
              f"{checked} document(s) decode back to their text exactly")

    print(f"{len(docs)} document(s), {n_chars} characters, tokenizer {tok.name} "
          f"(vocab {tok.vocab_size}), {t_tok:.1f} s")
    for w in (train, val):
        for p, c in zip(w.paths, w.counts):
            print(f"  {p}: {c} tokens")
    print(f"train {train.total} tokens, val {val.total} tokens, total {train.total + val.total}")


if __name__ == "__main__":
    main()
