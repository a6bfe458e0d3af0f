"""Plots for mlp_sweep's experiments (docs/mlp_sweep.md shows them).

    python dev/plot_mlp.py --e1 out/e1 --e2 out/e2 [--torch out/bench_mlp/torch1] [--e1-fashion out/e1_fashion] --out docs/img

E1 (mlp_e1.png): final test accuracy and final train loss against sigma (log x), and the
per-epoch train loss of every sigma. Diverged runs (NaN/inf) are marked with a red x.
E2 (mlp_e2.png): train loss per epoch (median and quartile band of the runs of each
scheme), and the distribution of epochs to reach the target loss.
Reads only the CSV files mlp_sweep writes (docs/formats.md, "The logs").
"""
import argparse
import csv
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def num(s):
    return float(s) if s not in ("", None) else math.nan


def plot_e1(d, torch_dir, out, name="mlp_e1.png", title="MNIST"):
    summ = read_csv(os.path.join(d, "e1_summary.csv"))
    ep = read_csv(os.path.join(d, "e1_epochs.csv"))
    sig = np.array([num(r["sigma"]) for r in summ])
    acc = np.array([num(r["final_test_acc"]) for r in summ])
    loss = np.array([num(r["final_train_loss"]) for r in summ])
    div = np.array([r["diverged"] == "1" for r in summ])
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    ax[0].semilogx(sig, acc, "o-", label="mlp_sweep")
    if torch_dir and os.path.exists(os.path.join(torch_dir, "e1_summary.csv")):
        t = read_csv(os.path.join(torch_dir, "e1_summary.csv"))
        ax[0].semilogx([num(r["sigma"]) for r in t], [num(r["final_test_acc"]) for r in t], "s--", ms=4, alpha=0.7,
                       label="PyTorch twin")
    ref = os.path.join(d, "e1_reference.csv")
    if os.path.exists(ref):
        for r, c in zip(read_csv(ref), ["tab:green", "tab:purple", "tab:brown", "tab:gray"]):
            ax[0].axhline(num(r["final_test_acc"]), color=c, ls=":", lw=1, label=r["init"])
    if div.any():
        ax[0].plot(sig[div], np.full(div.sum(), 0.1), "rx", ms=9, label="diverged")
    ax[0].axvspan(1e-2, 1e-1, color="tab:orange", alpha=0.12, label="paper's stable band")
    ax[0].set(xlabel="σ of N(0, σ²) init", ylabel="final test accuracy", title=f"E1 ({title}): final accuracy")
    ax[0].legend(fontsize=7)
    ax[1].loglog(sig, loss, "o-")
    ax[1].axvspan(1e-2, 1e-1, color="tab:orange", alpha=0.12)
    ax[1].set(xlabel="σ", ylabel="final train loss (mean over last epoch)", title="E1: train loss")
    cmap = plt.get_cmap("viridis")
    ls = np.log10(sig)
    for s in sig:
        rows = [r for r in ep if abs(num(r["sigma"]) - s) <= 1e-9 * s]
        c = cmap((math.log10(s) - ls.min()) / max(1e-9, ls.max() - ls.min()))
        ax[2].semilogy([int(r["epoch"]) for r in rows], [num(r["train_loss"]) for r in rows], color=c, lw=1)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(ls.min(), ls.max()))
    fig.colorbar(sm, ax=ax[2], label="log10 σ")
    ax[2].set(xlabel="epoch", ylabel="train loss", title="E1: loss per epoch")
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    print("wrote", os.path.join(out, name))


def plot_e2(d, out):
    ep = read_csv(os.path.join(d, "e2_epochs.csv"))
    summ = read_csv(os.path.join(d, "e2_summary.csv"))
    schemes = list(dict.fromkeys(r["init"] for r in summ))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for sch, c in zip(schemes, ["tab:blue", "tab:red"]):
        runs = {}
        for r in ep:
            if r["init"] == sch:
                runs.setdefault(r["seed"], []).append(num(r["train_loss"]))
        L = np.array(list(runs.values()))
        x = np.arange(L.shape[1])
        for row in L:
            ax[0].semilogy(x, row, color=c, lw=0.3, alpha=0.25)
        q1, q2, q3 = np.nanpercentile(L, [25, 50, 75], axis=0)
        ax[0].semilogy(x, q2, color=c, lw=2, label=f"{sch} (median of {len(L)})")
        ax[0].fill_between(x, q1, q3, color=c, alpha=0.25)
        e = [num(r["epochs_to_target"]) for r in summ if r["init"] == sch]
        reached = [v for v in e if not math.isnan(v)]
        bins = np.arange(0.5, max(reached + [1]) + 1.5)
        ax[1].hist(reached, bins=bins, color=c, alpha=0.5,
                   label=f"{sch}: median {np.median(reached) if reached else float('nan'):g}, never {len(e) - len(reached)}")
    ax[0].set(xlabel="epoch", ylabel="train loss (whole train split)", title="E2: loss curves")
    ax[0].legend(fontsize=8)
    ax[1].set(xlabel="epochs to reach 10% of the initial loss", ylabel="runs", title="E2: epochs to target")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "mlp_e2.png"), dpi=110)
    print("wrote", os.path.join(out, "mlp_e2.png"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--e1", default="out/e1")
    p.add_argument("--e2", default="out/e2")
    p.add_argument("--torch", default="", help="a PyTorch twin's output folder to overlay on E1")
    p.add_argument("--e1-fashion", default="", help="E1 on Fashion-MNIST: drawn to mlp_e1_fashion.png")
    p.add_argument("--out", default="docs/img")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if os.path.exists(os.path.join(a.e1, "e1_summary.csv")):
        plot_e1(a.e1, a.torch, a.out)
    if a.e1_fashion and os.path.exists(os.path.join(a.e1_fashion, "e1_summary.csv")):
        plot_e1(a.e1_fashion, "", a.out, "mlp_e1_fashion.png", "Fashion-MNIST")
    if os.path.exists(os.path.join(a.e2, "e2_summary.csv")):
        plot_e2(a.e2, a.out)


if __name__ == "__main__":
    main()
