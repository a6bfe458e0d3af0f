"""PyTorch twin of `mlp_sweep e1`: the same data split, model, init, optimizer and logs.

It is the numerical reference (final accuracies per sigma should be close, not equal:
the random streams differ) and the speed peer for `make bench-mlp`. Written the way a
PyTorch user would: nn.Linear layers, F.cross_entropy, torch.optim.Adam (foreach),
fp32, minibatches sliced from tensors held in memory.

    python dev/reference/mlp_e1.py --out out/e1_torch [--threads 2] [--procs 1] [--sigmas a,b]

--procs N runs N sigma values at a time in N processes (threads split between them),
which is how mlp_sweep itself spreads its runs over the cores.
"""
import argparse
import gzip
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(d, name):
    for p in (os.path.join(d, name), os.path.join(d, name + ".gz")):
        if os.path.exists(p):
            return p
    return None


def load_mnist(d):
    """The same split as mlp_sweep: the 60k training files if present, else t10k with
    every fifth image (i % 5 == 4) held out for testing; pixels / 255."""
    ti, tl = read_idx(find(d, "t10k-images-idx3-ubyte")), read_idx(find(d, "t10k-labels-idx1-ubyte"))
    ri, rl = find(d, "train-images-idx3-ubyte"), find(d, "train-labels-idx1-ubyte")
    if ri and rl:
        xtr, ytr, xte, yte = read_idx(ri), read_idx(rl), ti, tl
    else:
        test = np.arange(len(tl)) % 5 == 4
        xtr, ytr, xte, yte = ti[~test], tl[~test], ti[test], tl[test]
    f = lambda x: torch.tensor(x.reshape(len(x), -1), dtype=torch.float32) / 255.0
    g = lambda y: torch.tensor(y.astype(np.int64))
    return f(xtr), g(ytr), f(xte), g(yte)


def make_model(widths, sigma):
    layers = []
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1])
        nn.init.normal_(lin.weight, 0.0, sigma)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()] if i < len(widths) - 2 else [lin]
    return nn.Sequential(*layers)


def run_sigma(sigma, data, args):
    xtr, ytr, xte, yte = data
    torch.manual_seed(args.seed)
    model = make_model([xtr.shape[1]] + args.hidden + [10], sigma)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    rows, diverged = [], False
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(len(xtr), generator=gen)
        loss_sum, gn_sum, steps = 0.0, 0.0, 0
        for s in range(0, len(xtr), args.batch):
            idx = perm[s : s + args.batch]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
            opt.step()
            loss_sum += loss.item()
            gn_sum += gn.item()
            steps += 1
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        tl = loss_sum / steps
        if not math.isfinite(tl) or not math.isfinite(gn_sum):
            diverged = True
        rows.append((sigma, epoch, tl, acc, gn_sum / steps, int(diverged)))
        if diverged:
            break
    return rows


def worker(args_tuple):
    sigma, args, threads = args_tuple
    torch.set_num_threads(threads)
    return run_sigma(sigma, load_mnist(args.mnist), args)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/e1_torch")
    p.add_argument("--mnist", default="data/mnist")
    p.add_argument("--sigmas", default="")
    p.add_argument("--hidden", default="256,128")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--procs", type=int, default=1)
    args = p.parse_args()
    args.hidden = [int(h) for h in args.hidden.split(",")]
    sigmas = [float(s) for s in args.sigmas.split(",")] if args.sigmas else list(np.logspace(-4, 1, 25))
    os.makedirs(args.out, exist_ok=True)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.procs} process(es), {len(sigmas)} sigmas")
    t0 = time.time()
    if args.procs > 1:
        import multiprocessing as mp

        per = max(1, args.threads // args.procs)
        with mp.get_context("fork").Pool(args.procs) as pool:
            results = pool.map(worker, [(s, args, per) for s in sigmas], chunksize=1)
    else:
        torch.set_num_threads(args.threads)
        data = load_mnist(args.mnist)
        results = []
        for s in sigmas:
            results.append(run_sigma(s, data, args))
            print(f"  sigma {s:.3g}: test acc {results[-1][-1][3]:.4f} ({time.time() - t0:.1f} s)", flush=True)
    elapsed = time.time() - t0
    with open(os.path.join(args.out, "e1_epochs.csv"), "w") as f:
        f.write("sigma,epoch,train_loss,test_acc,grad_norm,diverged\n")
        for rows in results:
            for r in rows:
                f.write("%.6g,%d,%.9g,%.9g,%.9g,%d\n" % r)
    with open(os.path.join(args.out, "e1_summary.csv"), "w") as f:
        f.write("sigma,final_train_loss,final_test_acc,diverged\n")
        for rows in results:
            s, _, tl, acc, _, d = rows[-1]
            f.write("%.6g,%.9g,%.9g,%d\n" % (s, tl, acc, d))
            print("sigma %-10.3g train_loss %-12.6g test_acc %.4f diverged %s" % (s, tl, acc, "yes" if d else "no"))
    print(f"E1 (PyTorch): {len(sigmas)} runs in {elapsed:.2f} s")


if __name__ == "__main__":
    main()
