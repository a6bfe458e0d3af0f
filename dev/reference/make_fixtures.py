#!/usr/bin/env python3
"""
dev/reference/make_fixtures.py: (re)makes the fixtures under test/fixtures/llama/ that
test/test_reference.c compares train_llama.c against (`make reference`).

  test/fixtures/llama/shakespeare_bytes_000.bin, _001.bin   byte-level token shards of the
      start of Tiny Shakespeare (ASCII, so vocabulary 128 and small embedding tables), 300 and 260 tokens: small enough that ten steps cross
      into the second shard and wrap around to the first (the loader order is tested too)
  test/fixtures/llama/<name>/model.bin        the initial model: made by `./train_llama --steps 0`
      with the fixture's --init when ./train_llama exists (so the C program's own init is
      what the test starts from), else by the oracle's init (same distribution)
  test/fixtures/llama/<name>/debug_state.bin      the oracle's record of the run in float32
  test/fixtures/llama/<name>/debug_state_f64.bin  the same run in float64 (format: the top of llama.py)

It prints how far the float32 run is from the float64 one, measured the way the C test
measures: float32's own noise on that fixture, which the C test's tolerances must sit above.

Usage: python3 dev/reference/make_fixtures.py [--train-llama ./train_llama] [--only NAME]
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import llama  # noqa: E402

FIXDIR = "test/fixtures/llama"
SHARDS = "test/fixtures/llama/shakespeare_bytes_*.bin"
SHARD_SIZES = [300, 260]
VOCAB = 128
TEXT_CANDIDATES = ["data/tinyshakespeare/input.txt"]

# Each fixture: the model (fresh-model flags, as train_llama.c takes them) and the run.
# Together they cover GQA and MQA and plain MHA, the three inits, warm-up then cosine,
# warm-up then constant, no warm-up, clipping active / inactive / off, TVR with a flat and
# with a depth-scaled target, and AdamW hyperparameters away from their defaults.
FIXTURES = {
    # GQA (4 query heads share 2 kv heads), LIR init, TVR target 0.01 every 2 steps (block 1's
    # sigma 0.02 is above 1.2 * 0.01, so step 2 rescales), clipping at 1.0, 3 warm-up steps then cosine.
    "gqa_lir_tvr": dict(
        model="--layers 2 --dim 32 --heads 4 --kv-heads 2 --ffn 88 --seq-len 16 --vocab 128 "
              "--init lir --init-std 0.02 --seed 11",
        run="--batch 4 --seq-len 16 --steps 10 --lr 3e-3 --min-lr-frac 0.1 --warmup 3 --schedule cosine "
            "--weight-decay 0.1 --grad-clip 1.4 --tvr-target 0.01 --tvr-every 2 --tvr-threshold 1.2"),
    # plain multi-head attention, plain init with a large sigma, clipping active on every step,
    # a constant schedule after 2 warm-up steps, other betas, eps and weight decay.
    "mha_clip_constant": dict(
        model="--layers 2 --dim 32 --heads 4 --kv-heads 4 --ffn 96 --seq-len 24 --vocab 128 "
              "--init plain --init-std 0.05 --seed 12",
        run="--batch 2 --seq-len 24 --steps 10 --lr 1e-3 --warmup 2 --schedule constant "
            "--weight-decay 0.05 --beta1 0.8 --beta2 0.99 --eps 1e-6 --grad-clip 0.25"),
    # multi-query attention (one kv head), 3 layers, the residual init, no clipping, no warm-up,
    # cosine to 0, TVR with the depth-scaled target target/sqrt(l) and threshold 1.0.
    "mqa_residual_tvrdepth": dict(
        model="--layers 3 --dim 32 --heads 4 --kv-heads 1 --ffn 64 --seq-len 32 --vocab 128 "
              "--init residual --init-std 0.02 --seed 13",
        run="--batch 2 --seq-len 32 --steps 10 --lr 2e-3 --min-lr-frac 0.0 --warmup 0 --schedule cosine "
            "--weight-decay 0.1 --grad-clip 0 --tvr-target 0.012 --tvr-every 2 --tvr-threshold 1.0 "
            "--tvr-depth-scaled 1"),
}


def make_shards():
    text = None
    for cand in TEXT_CANDIDATES:
        path = cand if os.path.isabs(cand) else os.path.join(ROOT, cand)
        if os.path.exists(path):
            text = open(path, "rb").read()
            break
    if text is None:
        sys.exit("error: Tiny Shakespeare's input.txt not found in " + ", ".join(TEXT_CANDIDATES))
    pos = 0
    for i, n in enumerate(SHARD_SIZES):
        tokens = np.frombuffer(text[pos:pos + n], dtype=np.uint8).astype("<u2")
        assert tokens.max() < VOCAB
        pos += n
        header = np.zeros(256, dtype="<i4")
        header[0:4] = [llama.SHARD_MAGIC, 1, n, VOCAB]
        with open(os.path.join(ROOT, FIXDIR, f"shakespeare_bytes_{i:03d}.bin"), "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.tobytes())


def check_init(path, model_flags):
    """The C program's init, seen from outside: each matrix's std against its scheme's sigma
    (a loose statistical check: 15%, the matrices have 500+ entries)."""
    a = llama.parse_args(model_flags.split())
    cfg, params = llama.read_model(path, torch.float64)
    for name, _, _ in llama.param_table(cfg):
        t = params[name]
        if name.endswith("norm"):
            assert torch.all(t == 1), f"{path}: {name} should start at 1"
            continue
        layers = range(cfg["L"]) if name in llama.BLOCK_MATRICES else [None]
        for l in layers:
            w = t if l is None else t[l]
            want = a.init_std
            if l is not None and a.init == "lir":
                want = a.init_std / math.sqrt(l + 1)
            if l is not None and a.init == "residual" and name in ("wo", "w2"):
                want = a.init_std / math.sqrt(2 * cfg["L"])
            got = w.std().item()
            assert abs(got / want - 1) < 0.15 and abs(w.mean().item()) < 0.2 * want, \
                f"{path}: {name}[{l}] std {got:.5f}, want {want:.5f} for --init {a.init}"


def initial_model(name, fx, train_llama, outdir):
    path = os.path.join(outdir, "model.bin")
    if train_llama:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [train_llama, "--train", SHARDS, "--val", "", "--steps", "0", "--out", tmp, "--threads", "1"]
            cmd += fx["model"].split()
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            os.replace(os.path.join(tmp, "model.bin"), path)
        check_init(path, fx["model"])
        return "train_llama"
    llama.main(fx["model"].split() + ["--steps", "0", "--out", outdir, "--quiet", "1"])
    return "oracle"


def read_debug(path):
    """Just enough of the debug-state reader to compare two oracle runs (float32 vs float64)."""
    raw = open(path, "rb").read()
    h = np.frombuffer(raw[:1024], dtype="<i4")
    rb, B, T, N, P, V = h[2], h[3], h[4], h[5], h[10], h[12]
    dt = "<f8" if rb == 8 else "<f4"
    off = 1024 + 2 * B * T * 4
    out = {}
    for key, n in (("logits", B * T * V), ("loss", 1), ("grads", P), ("step_loss", N), ("step_lr", N),
                   ("step_grad_norm", N), ("params", P)):
        out[key] = np.frombuffer(raw[off:off + n * rb], dtype=dt).astype(np.float64)
        off += n * rb
    out["clipped"] = np.frombuffer(raw[off:off + 4 * N], dtype="<i4")
    out["rescaled"] = np.frombuffer(raw[off + 4 * N:off + 8 * N], dtype="<i4")
    return out


def max_rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def run_fixture(name, fx, train_llama):
    outdir = os.path.join(ROOT, FIXDIR, name)
    os.makedirs(outdir, exist_ok=True)
    who = initial_model(name, fx, train_llama, outdir)
    model = os.path.join(outdir, "model.bin")
    common = fx["run"].split() + ["--train", SHARDS, "--init-from", model, "--quiet", "1", "--threads", "1"]
    state = os.path.join(outdir, "debug_state.bin")
    llama.main(common + ["--debug-state", state])
    s64 = os.path.join(outdir, "debug_state_f64.bin")
    llama.main(common + ["--debug-state", s64, "--dtype", "float64"])
    d32, d64 = read_debug(state), read_debug(s64)
    print(f"{name}: initial model.bin by {who}; losses {d32['step_loss'][0]:.4f} -> {d32['step_loss'][-1]:.4f}; "
          f"clipped at steps {[i + 1 for i, c in enumerate(d32['clipped']) if c]}; "
          f"TVR rescaled {[(i + 1, int(r)) for i, r in enumerate(d32['rescaled']) if r]} (step, matrices)")
    print(f"  float32 vs float64 oracle (the noise floor): logits {max_rel(d32['logits'], d64['logits']):.1e}, "
          f"loss {max_rel(d32['loss'], d64['loss']):.1e}, grads {max_rel(d32['grads'], d64['grads']):.1e}, "
          f"step losses {max_rel(d32['step_loss'], d64['step_loss']):.1e}, "
          f"grad norms {max_rel(d32['step_grad_norm'], d64['step_grad_norm']):.1e}, "
          f"final params {max_rel(d32['params'], d64['params']):.1e} (all relative to the max abs)")
    clip = float(dict(zip(fx["run"].split()[::2], fx["run"].split()[1::2]))["--grad-clip"])
    if clip > 0 and np.min(np.abs(d64["step_grad_norm"] / clip - 1)) < 1e-3:
        sys.exit(f"error: {name}: a step's grad norm is within 0.1% of --grad-clip: move the threshold")
    if list(d32["clipped"]) != list(d64["clipped"]) or list(d32["rescaled"]) != list(d64["rescaled"]):
        sys.exit(f"error: {name}: float32 and float64 disagree on which steps clip or rescale: "
                 "move the fixture's thresholds away from the edge")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train-llama", default="./train_llama", help="C program for the initial model.bin ('' = oracle)")
    p.add_argument("--only", default="")
    a = p.parse_args()
    os.chdir(ROOT)
    torch.set_num_threads(1)
    tl = a.train_llama if a.train_llama and os.path.exists(os.path.join(ROOT, a.train_llama)) else ""
    if a.train_llama and not tl:
        print(f"note: {a.train_llama} not built: the oracle writes the initial model.bin files")
    os.makedirs(os.path.join(ROOT, FIXDIR), exist_ok=True)
    make_shards()
    for name, fx in FIXTURES.items():
        if not a.only or a.only == name:
            run_fixture(name, fx, tl)


if __name__ == "__main__":
    main()
