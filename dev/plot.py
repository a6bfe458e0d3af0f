#!/usr/bin/env python3
"""Plot the logs of one or more train_llama / train_gpt2 runs (docs/formats.md, "The logs").

    .venv/bin/python dev/plot.py out/run                       # -> out/run/plot.png
    .venv/bin/python dev/plot.py out/paper_a/* --png out/paper_a/plot.png --matrix w2

Four panels: train loss (and val loss, dots) vs step; the largest |activation| over all
blocks vs step; layer 1's std of --matrix vs step, one line per run; and, for the first run,
every layer's std of --matrix vs step (TVR steps show as drops).

--per-layer NAME,NAME,... also writes <png>_layers.png: one column per named run (the
directory's base name) with every layer's std of --matrix (top) and largest |activation|
(bottom), each row on one y scale, so that runs with and without TVR sit side by side.
"""
import argparse
import csv
import os
import sys


def read(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="output directories (--out of a run)")
    p.add_argument("--png", help="output file (default: <first run>/plot.png)")
    p.add_argument("--per-layer", default="", help="comma-separated run names for the per-layer std figure")
    p.add_argument("--matrix", default="w2", help="matrix for the std panels (wq wk wv wo w1 w3 w2; q k v for GPT-2)")
    args = p.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("matplotlib is missing: run `make venv` and use .venv/bin/python")
    runs = [r for r in args.runs if os.path.exists(os.path.join(r, "train.csv"))]
    if not runs:
        sys.exit("none of the given directories has a train.csv")
    fig, ax = plt.subplots(2, 2, figsize=(13, 9))
    for r in runs:
        name = os.path.basename(os.path.normpath(r))
        tr = read(os.path.join(r, "train.csv"))
        line, = ax[0, 0].plot([int(x["step"]) for x in tr], [float(x["loss"]) for x in tr], lw=0.7, label=name)
        va = read(os.path.join(r, "val.csv"))
        ax[0, 0].plot([int(x["step"]) for x in va], [float(x["val_loss"]) for x in va], "o", ms=4,
                      color=line.get_color())
        acts = read(os.path.join(r, "activations.csv"))
        steps = sorted({int(x["step"]) for x in acts})
        peak = {s: 0.0 for s in steps}
        for x in acts:
            peak[int(x["step"])] = max(peak[int(x["step"])], float(x["max_abs"]))
        ax[0, 1].plot(steps, [peak[s] for s in steps], label=name)
        w = [x for x in read(os.path.join(r, "weights.csv")) if x["matrix"] == args.matrix and x["layer"] == "1"]
        ax[1, 0].plot([int(x["step"]) for x in w], [float(x["std"]) for x in w], label=name)
    first = read(os.path.join(runs[0], "weights.csv"))
    layers = sorted({int(x["layer"]) for x in first})
    for l in layers:
        w = [x for x in first if x["matrix"] == args.matrix and int(x["layer"]) == l]
        ax[1, 1].plot([int(x["step"]) for x in w], [float(x["std"]) for x in w], label=f"layer {l}")
    ax[0, 0].set(title="train loss (lines), val loss (dots)", xlabel="step", ylabel="loss")
    ax[0, 1].set(title="largest |activation| over blocks", xlabel="step", yscale="log")
    ax[1, 0].set(title=f"std of layer 1's {args.matrix}", xlabel="step")
    ax[1, 1].set(title=f"std of {args.matrix} per layer: {os.path.basename(os.path.normpath(runs[0]))}", xlabel="step")
    for a in ax.flat:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    out = args.png or os.path.join(runs[0], "plot.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    if args.per_layer:
        plot_per_layer(plt, runs, args.per_layer.split(","), args.matrix, os.path.splitext(out)[0] + "_layers.png")


def plot_per_layer(plt, runs, names, matrix, out):
    by_name = {os.path.basename(os.path.normpath(r)): r for r in runs}
    missing = [n for n in names if n not in by_name]
    if missing:
        sys.exit(f"--per-layer: no run named {', '.join(missing)} among the given directories")
    fig, ax = plt.subplots(2, len(names), figsize=(5 * len(names), 8), sharey="row", squeeze=False)
    for col, name in enumerate(names):
        panels = [(read(os.path.join(by_name[name], "weights.csv")), "std", f"std of {matrix}"),
                  (read(os.path.join(by_name[name], "activations.csv")), "max_abs", "max |activation|")]
        for row, (rows, key, what) in enumerate(panels):
            if key == "std":
                rows = [x for x in rows if x["matrix"] == matrix]
            a = ax[row, col]
            for l in sorted({int(x["layer"]) for x in rows}):
                w = [x for x in rows if int(x["layer"]) == l]
                a.plot([int(x["step"]) for x in w], [float(x[key]) for x in w], label=f"layer {l}")
            a.set(title=f"{name}: {what} per layer", xlabel="step")
            if key == "max_abs":
                a.set_yscale("log")
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
