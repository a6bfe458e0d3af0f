#!/usr/bin/env python3
"""E3's sparsity measure on train_llama models: does TVR change the weights' tails?

Paper B's E3 says of trained weights that "many near-zero entries remain, while a small
fraction of large-magnitude weights dominate". dev/e3_sparsity.py measures it on GPT-2
checkpoints; this is the same measure on LLaMA model.bin files (docs/formats.md), for every
block matrix of every layer: the share of entries with |w - mean| > 3 std (0.0027 for a
Gaussian, which every init here is), the share with |w - mean| < 0.1 std (0.0797), and the
excess kurtosis (0 for a Gaussian).

    .venv/bin/python dev/llama_sparsity.py out/paper_a_600/{baseline,lir,lir_tvr01}   # run directories
    .venv/bin/python dev/llama_sparsity.py --per-layer w2 out/paper_a_600/*

Prints a markdown table, one row per run, over all 7 x L block matrices: the means of the
near-zero and large shares and of the excess kurtosis, and the largest of each; --per-matrix
adds each matrix's means over the layers, --per-layer M one row per run and layer for matrix M.
"""
import argparse
import os
import sys

import numpy as np

MATRICES = ["wq", "wk", "wv", "wo", "w1", "w3", "w2"]


def load(path):
    """The block matrices of a LLaMA model.bin: {name: array (L, rows, cols)}."""
    h = np.fromfile(path, dtype=np.int32, count=256)
    if h[0] != 20261122 or h[1] != 1:
        sys.exit(f"{path}: not a train_llama model.bin (magic {h[0]}, version {h[1]})")
    _, V, L, NH, NKV, C, F = (int(x) for x in h[2:9])
    kvd = NKV * (C // NH)
    p = np.fromfile(path, dtype=np.float32, offset=1024)
    sizes = [("tok_emb", (V, C)), ("attn_norm", (L, C)), ("wq", (L, C, C)), ("wk", (L, kvd, C)),
             ("wv", (L, kvd, C)), ("wo", (L, C, C)), ("ffn_norm", (L, C)), ("w1", (L, F, C)), ("w3", (L, F, C)),
             ("w2", (L, C, F)), ("final_norm", (C,)), ("lm_head", (V, C))]
    out, off = {}, 0
    for name, shape in sizes:
        n = int(np.prod(shape))
        out[name] = p[off:off + n].reshape(shape)
        off += n
    if off != p.size:
        sys.exit(f"{path}: {p.size} parameters, the header describes {off}")
    return L, out


def stats(w):
    w = w.astype(np.float64).ravel()
    d = np.abs(w - w.mean())
    sd = w.std(ddof=1)
    var = (d ** 2).mean()
    return dict(std=sd, near_zero=(d < 0.1 * sd).mean(), large=(d > 3 * sd).mean(),
                kurtosis=(d ** 4).mean() / var ** 2 - 3)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (each with a model.bin) or model.bin files")
    p.add_argument("--per-layer", default="", help="also one row per layer for this matrix")
    p.add_argument("--per-matrix", action="store_true", help="also one row per run with each matrix's means")
    args = p.parse_args()
    res = {}
    for r in args.runs:
        path = os.path.join(r, "model.bin") if os.path.isdir(r) else r
        if not os.path.exists(path):
            continue
        L, mats = load(path)
        res[os.path.basename(os.path.normpath(r))] = {m: [stats(mats[m][l]) for l in range(L)] for m in MATRICES}
    if not res:
        sys.exit("no model.bin found")
    print("| run | near-zero (<0.1 std), mean | beyond 3 std, mean | beyond 3 std, largest | excess kurtosis, mean "
          "| excess kurtosis, largest (matrix, layer) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, per in res.items():
        every = [(m, l + 1, s) for m in MATRICES for l, s in enumerate(per[m])]
        worst = max(every, key=lambda e: e[2]["kurtosis"])
        print(f"| {name} | {np.mean([e[2]['near_zero'] for e in every]):.4f} | "
              f"{np.mean([e[2]['large'] for e in every]):.4f} | {max(e[2]['large'] for e in every):.4f} | "
              f"{np.mean([e[2]['kurtosis'] for e in every]):+.2f} | "
              f"{worst[2]['kurtosis']:+.2f} ({worst[0]}, {worst[1]}) |")
    if args.per_matrix:
        print("\nPer matrix, the mean over the layers (kurtosis: mean / largest layer's):\n")
        print("| run | " + " | ".join(f"{m} >3σ | {m} kurtosis" for m in MATRICES) + " |")
        print("|---|" + "---:|---:|" * len(MATRICES))
        for name, per in res.items():
            cells = []
            for m in MATRICES:
                k = [s["kurtosis"] for s in per[m]]
                cells.append(f"{np.mean([s['large'] for s in per[m]]):.4f} | {np.mean(k):+.2f} / {max(k):+.2f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.per_layer:
        m = args.per_layer
        print(f"\nPer layer, {m}:\n")
        print("| run | layer | std | near-zero (<0.1 std) | >3σ | excess kurtosis |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, per in res.items():
            for l, s in enumerate(per[m]):
                print(f"| {name} | {l + 1} | {s['std']:.5f} | {s['near_zero']:.4f} | {s['large']:.4f} | "
                      f"{s['kurtosis']:+.2f} |")


if __name__ == "__main__":
    main()
