"""
E3 (docs/methods.md; paper B, section 4.3): variance dynamics of a 12-layer GPT-2.

Trains GPT-2 from scratch with paper B's init (N(0, 0.02²) weights, xavier_normal
token embedding, biases 0: `--init e3`) and AdamW, logging every --stats-every steps
the std of each layer's q, k, v (the three C×C parts of c_attn) and of the other
block matrices (weights.csv), and a histogram of one chosen matrix (hist.csv,
hist_summary.csv). Then draws the figures with dev/plot_e3.py.

  /usr/bin/python3 dev/e3.py --config cpu --out out/e3          # the CPU-sized run (make e3)
  /usr/bin/python3 dev/e3.py --config gpt2-124m --bin ./train_gpt2_cu --out out/e3_124m --dry-run

Data: GPT-2 token shards of Tiny Shakespeare and the Gutenberg books
(`make data-gutenberg` writes data/gutenberg/gpt2_*.bin).
"""
import argparse
import os
import shlex
import subprocess
import sys

CONFIGS = {
    # 12 layers as in the paper, small width so that the CPU run takes minutes
    "cpu": dict(layers=12, dim=64, heads=4, seq_len=64, batch=8, steps=2000, lr=1e-3, warmup=100,
                stats_every=20, val_every=250, checkpoint_every=500),
    # GPT-2 small (124M) for the GPU
    "gpt2-124m": dict(layers=12, dim=768, heads=12, seq_len=1024, batch=16, steps=20000, lr=6e-4, warmup=700,
                      stats_every=100, val_every=500, checkpoint_every=2000),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=CONFIGS, default="cpu")
    ap.add_argument("--bin", default="./train_gpt2")
    ap.add_argument("--out", default="out/e3")
    ap.add_argument("--train", default="data/*/gpt2_train_*.bin")
    ap.add_argument("--val", default="data/*/gpt2_val_*.bin")
    ap.add_argument("--steps", type=int, help="override the config's step count")
    ap.add_argument("--hist-layer", type=int, default=1)
    ap.add_argument("--hist-matrix", default="q")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                    help="constant: no lr decay after warm-up (separates an equilibrium from a shrinking step)")
    ap.add_argument("--dry-run", action="store_true", help="print the command only")
    args = ap.parse_args()
    c = dict(CONFIGS[args.config])
    if args.steps:
        c["steps"] = args.steps
    cmd = [args.bin, "--train", args.train, "--val", args.val, "--out", args.out, "--init", "e3", "--init-std", "0.02",
           "--hist-layer", str(args.hist_layer), "--hist-matrix", args.hist_matrix, "--val-batches", "10",
           "--threads", str(args.threads), "--schedule", args.schedule]
    for k, v in c.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    print(" ".join(shlex.quote(x) for x in cmd), flush=True)
    if args.dry_run:
        return
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "command.txt"), "w") as f:
        f.write(" ".join(shlex.quote(x) for x in cmd) + "\n")
    rc = subprocess.call(cmd)
    if rc != 0:
        sys.exit(rc)
    subprocess.check_call([sys.executable, os.path.join(os.path.dirname(__file__), "plot_e3.py"), args.out])


if __name__ == "__main__":
    main()
