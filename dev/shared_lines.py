#!/usr/bin/env python3
"""How much two source files repeat each other: the lines of A that lie in a run of
at least K consecutive identical lines (stripped, blank lines skipped) that also
occurs in B, and the same for B against A. The measure the one-vocabulary work
(issue 14) reports for the trainer twins.

usage: dev/shared_lines.py [-k K] A B [A B ...]      (default: the four trainers' pairs)
"""
import argparse


def lines(path):
    return [l.strip() for l in open(path, encoding="utf-8") if l.strip()]


def shared(a, b, k):
    A, B = lines(a), lines(b)
    runs = {tuple(B[j:j + k]) for j in range(len(B) - k + 1)}
    covered = [False] * len(A)
    for i in range(len(A) - k + 1):
        if tuple(A[i:i + k]) in runs:
            covered[i:i + k] = [True] * k
    return sum(covered), len(A)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", type=int, default=6, help="shortest run that counts (default 6, as duplicates)")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()
    files = args.files or ["train_llama.c", "train_llama.cu", "train_gpt2.c", "train_gpt2.cu",
                           "train_llama.c", "train_gpt2.c", "train_llama.cu", "train_gpt2.cu"]
    if len(files) % 2:
        ap.error("files come in pairs")
    for a, b in zip(files[::2], files[1::2]):
        sa, na = shared(a, b, args.k)
        sb, nb = shared(b, a, args.k)
        print(f"{a} ~ {b}: {sa} of {na} lines ({100 * sa / na:.0f}%) / {sb} of {nb} ({100 * sb / nb:.0f}%)")


if __name__ == "__main__":
    main()
