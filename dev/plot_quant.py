#!/usr/bin/env python3
"""Plot dev/paper_a.py --quant-eval's quant.csv: what fake quantization costs each run.

    .venv/bin/python dev/plot_quant.py out/paper_a_600/quant.csv --png docs/paper_a_quant.png

Left: the val loss increase over fp32 of every run under every setting (bars, log scale:
the settings' costs differ by two orders of magnitude). Middle: each run's increase under
the per-tensor activation settings (a8, a4) against its largest |block output| at the last
training step, the quantity Paper A says TVR lowers to make quantization safer. Right: the
same increases against what the quantizer sees, the matmul inputs' max / rms per tensor.
"""
import argparse
import csv
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("csv", help="quant.csv of dev/paper_a.py --quant-eval")
    p.add_argument("--png", required=True)
    p.add_argument("--title", default="")
    args = p.parse_args()
    with open(args.csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{args.csv}: no rows")
    keys = list(rows[0])
    settings = keys[keys.index("none") + 1:]  # the quantized settings follow fp32's column
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    width = 0.8 / len(settings)
    for j, q in enumerate(settings):
        # an increase at or below 0 (w8 can lower the loss by 1e-5) is drawn at 1e-5, the axis floor
        inc = [max(float(r[q]) - float(r["none"]), 1e-5) for r in rows]
        ax.bar([i + (j - (len(settings) - 1) / 2) * width for i in range(len(rows))], inc, width, label=q)
    ax.set_yscale("log")
    ax.set_ylim(1e-5, None)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["run"] for r in rows], rotation=20)
    ax.set_ylabel("val loss increase over fp32 (nats)")
    ax.set_title("fake-quantized evaluation of each final model")
    ax.legend(ncol=3, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    for panel, key, xlabel in ((bx, "final_activation", "largest |block output|, last training step"),
                               (cx, "input_max_over_rms_mean", "matmul inputs: max|x| / rms per tensor (mean)")):
        for q, mark in (("a8", "o"), ("a4", "s")):
            if q not in rows[0]:
                continue
            xs = [float(r[key]) for r in rows]
            ys = [max(float(r[q]) - float(r["none"]), 1e-5) for r in rows]
            panel.scatter(xs, ys, marker=mark, label=f"{q} (per tensor)")
            for x, y, r in zip(xs, ys, rows):
                panel.annotate(r["run"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if panel is bx:
            panel.set_xscale("log")  # 2 to 30: TVR's cut is tenfold; the inputs' spread is not
        panel.set_yscale("log")
        panel.set_xlabel(xlabel)
        panel.set_ylabel("val loss increase over fp32 (nats)")
        panel.legend(fontsize=8)
        panel.grid(alpha=0.3)
    bx.set_title("against the residual stream's outliers")
    cx.set_title("against the quantized inputs' own spread")
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
