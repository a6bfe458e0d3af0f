"""
Figures and numbers for E3 from a train_gpt2 run directory (weights.csv, hist.csv,
hist_summary.csv, train.csv):

  e3_qkv_std.png    per-layer std of q, k, v vs step (one line per layer)
  e3_hist.png       the chosen matrix's histogram over time (heat map + snapshots)
  e3_sparsity.png   its near-zero share, large-magnitude share and excess kurtosis vs step
  e3_summary.md     the table behind the report: per layer, std at the start, early,
                    at the end, growth, the step where half the growth was reached,
                    and the band (relative spread) over the last 20% of steps

  /usr/bin/python3 dev/plot_e3.py out/e3
Needs numpy and matplotlib (Debian: python3-numpy python3-matplotlib); the summary
table is written even without matplotlib.
"""
import csv
import os
import sys
from collections import defaultdict

import numpy as np


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def std_series(rows, matrix):
    """{layer: (steps, stds)} for one matrix; the last row wins for a repeated step."""
    d = defaultdict(dict)
    for r in rows:
        if r["matrix"] == matrix:
            d[int(r["layer"])][int(r["step"])] = float(r["std"])
    return {l: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for l, v in sorted(d.items())}


def summary(rows, out):
    lines = ["| matrix | layer | std step 0 | std early | std end | growth (end/start) | step of half growth | band, last 20% (max-min)/mean |",
             "|---|---|---|---|---|---|---|---|"]
    for m in ("q", "k", "v"):
        for l, (steps, sd) in std_series(rows, m).items():
            early_i = min(len(steps) - 1, max(1, len(steps) // 10))
            half = sd[0] + 0.5 * (sd[-1] - sd[0])
            reached = steps[np.argmax(sd >= half)] if sd[-1] > sd[0] else float("nan")
            tail = sd[int(len(sd) * 0.8):]
            band = (tail.max() - tail.min()) / tail.mean()
            lines.append(f"| {m} | {l} | {sd[0]:.5f} | {sd[early_i]:.5f} (step {steps[early_i]}) | {sd[-1]:.5f} | "
                         f"{sd[-1] / sd[0]:.3f} | {reached} | {band:.4f} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "e3_summary.md"), "w") as f:
        f.write(text)
    return text


def hist_summary_table(out):
    path = os.path.join(out, "hist_summary.csv")
    if not os.path.exists(path):
        return ""
    rows = read_csv(path)
    pick = [rows[0], rows[len(rows) // 10], rows[len(rows) // 2], rows[-1]]
    lines = ["| step | matrix (layer) | mean | std | near-zero share (Gaussian 0.0797) | large share (Gaussian 0.0027) | excess kurtosis |",
             "|---|---|---|---|---|---|---|"]
    for r in pick:
        lines.append(f"| {r['step']} | {r['matrix']} ({r['layer']}) | {float(r['mean']):.2e} | {float(r['std']):.5f} | "
                     f"{float(r['near_zero']):.4f} | {float(r['large']):.4f} | {float(r['excess_kurtosis']):.3f} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "e3_summary.md"), "a") as f:
        f.write("\n" + text)
    return text


def plots(rows, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # top row: the std itself; bottom row: relative to step 0 (the sampled init differs by a few %)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9), sharex=True)
    for col, m in enumerate(("q", "k", "v")):
        series = std_series(rows, m)
        cmap = plt.get_cmap("viridis")
        for l, (steps, sd) in series.items():
            color = cmap((l - 1) / max(1, len(series) - 1))
            axes[0, col].plot(steps, sd, color=color, label=f"layer {l}", lw=1.2)
            axes[1, col].plot(steps, sd / sd[0], color=color, label=f"layer {l}", lw=1.2)
        axes[0, col].set_title(f"{m}: std per layer")
        axes[1, col].set_title(f"{m}: std / std at step 0")
        axes[1, col].set_xlabel("step")
        for r in range(2):
            axes[r, col].grid(alpha=0.3)
    axes[0, 0].set_ylabel("std of the C×C weight")
    axes[1, 0].set_ylabel("growth since step 0")
    axes[0, -1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "e3_qkv_std.png"), dpi=80)
    plt.close(fig)

    hpath = os.path.join(out, "hist.csv")
    if os.path.exists(hpath):
        h = read_csv(hpath)
        steps = sorted({int(r["step"]) for r in h})
        nb = max(int(r["bin"]) for r in h) + 1
        lo = {int(r["bin"]): float(r["lo"]) for r in h}
        hi = {int(r["bin"]): float(r["hi"]) for r in h}
        grid = np.zeros((len(steps), nb))
        idx = {s: i for i, s in enumerate(steps)}
        for r in h:
            grid[idx[int(r["step"])], int(r["bin"])] = float(r["count"])
        edges = [lo[0]] + [hi[b] for b in range(nb)]
        name = f"{h[0]['matrix']} (layer {h[0]['layer']})"
        fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
        axes[0].imshow(np.log10(grid.T + 1), aspect="auto", origin="lower",
                       extent=[steps[0], steps[-1], edges[0], edges[-1]], cmap="magma")
        axes[0].set_title(f"{name}: log10(1 + count) per bin")
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("weight value")
        centers = 0.5 * (np.array(edges[:-1]) + np.array(edges[1:]))
        for s in (steps[0], steps[len(steps) // 10], steps[len(steps) // 2], steps[-1]):
            axes[1].plot(centers, grid[idx[s]] / grid[idx[s]].sum(), label=f"step {s}")
        axes[1].set_yscale("log")
        axes[1].set_title(f"{name}: histogram snapshots (share per bin)")
        axes[1].set_xlabel("weight value")
        axes[1].legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "e3_hist.png"), dpi=120)
        plt.close(fig)

    spath = os.path.join(out, "hist_summary.csv")
    if os.path.exists(spath):
        s = read_csv(spath)
        st = np.array([int(r["step"]) for r in s])
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, key, ref in zip(axes, ("near_zero", "large", "excess_kurtosis"), (0.0797, 0.0027, 0.0)):
            ax.plot(st, [float(r[key]) for r in s])
            ax.axhline(ref, color="gray", ls="--", lw=1, label="Gaussian")
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("step")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "e3_sparsity.png"), dpi=120)
        plt.close(fig)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "out/e3"
    rows = read_csv(os.path.join(out, "weights.csv"))
    print(summary(rows, out))
    print(hist_summary_table(out))
    try:
        plots(rows, out)
        print(f"figures in {out}/e3_*.png")
    except ImportError as e:
        print(f"no figures ({e}); the tables are in {out}/e3_summary.md")


if __name__ == "__main__":
    main()
