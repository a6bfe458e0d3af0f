#!/usr/bin/env python3
"""
dev/reference/llama.py: an independent PyTorch implementation of train_llama.c.

It is the numerical oracle that `make test` pins the C program to. It is written
with ordinary torch ops and autograd (no hand-written backward), in the plainest
form that matches docs/methods.md and docs/formats.md:

  * the model: token embedding -> L blocks of [RMSNorm -> causal GQA attention with
    interleaved RoPE -> residual, RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm ->
    untied lm_head; mean cross-entropy over all B*T positions;
  * model.bin in and out (docs/formats.md, "model.bin"), llm.c token shards in the
    loader's order (docs/formats.md);
  * training: the learning-rate schedule of docs/methods.md, torch.optim.AdamW (weight decay on
    2-D matrices only), torch.nn.utils.clip_grad_norm_, and TVR (docs/methods.md, paper A)
    right after the update;
  * float32 by default, float64 with --dtype float64, always on the CPU.

It runs on Debian's python3-torch (1.13) and on current PyTorch from pip.

Usage (the flags it shares with train_llama.c have the same names and defaults):
  llama.py --train 'test/fixtures/llama/shakespeare_bytes_*.bin' --init-from model.bin \
           --batch 4 --seq-len 16 --steps 10 --lr 3e-3 --warmup 3 \
           --tvr-target 0.01 --tvr-every 2 --out DIR --debug-state DIR/debug_state.bin
  llama.py --layers 2 --dim 32 ... --init lir --steps 0 --out DIR  (a fresh model.bin)
  llama.py ... --bench 1   (time training steps only: tokens/s, for `make bench-cpu`)

The debug-state file (--debug-state), version 1, little-endian, is what the C test
test/test_reference.c reads. REAL below is float32 when header[2] == 4, float64 when 8.
  int32 header[256]
    [0] 20261124 (magic)   [1] 1 (version)   [2] bytes per REAL (4 or 8)
    [3] B   [4] T   [5] steps N   [6] warmup   [7] schedule (0 cosine, 1 constant)
    [8] tvr_every   [9] tvr_depth_scaled   [10] P (number of parameters)
    [11] max seq len   [12] V   [13] L   [14] NH   [15] NKV   [16] C   [17] F
  float64 hyper[16] in header ints 64..95 (bytes 256..383):
    [0] lr [1] min_lr_frac [2] weight_decay [3] beta1 [4] beta2 [5] eps
    [6] grad_clip [7] tvr_target [8] tvr_threshold [9] norm eps [10] rope theta
  char train_glob[512] in header ints 128..255 (bytes 512..1023), NUL-terminated,
    relative to the repository root
  int32 inputs[B*T], int32 targets[B*T]          the first batch
  REAL  logits[B*T*V]                           its logits, before any update
  REAL  loss                                    its mean cross-entropy
  REAL  grads[P]                                every gradient of that loss, in model.bin's
                                                parameter order (before clipping)
  REAL  step_loss[N], step_lr[N], step_grad_norm[N]   per step 1..N (norm before clipping)
  REAL  params[P]                               the parameters after step N (after TVR)
  int32 step_clipped[N]                         1 where clipping scaled the gradients
  int32 step_rescaled[N]                        how many matrices TVR rescaled at that step
The initial parameters are the model.bin the run started from (--init-from), kept
next to the debug state by dev/reference/make_fixtures.py.
"""
import argparse
import glob
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

MODEL_MAGIC = 20261122
MODEL_VERSION = 1
SHARD_MAGIC = 20240520
DEBUG_MAGIC = 20261124
DEBUG_VERSION = 1
HEADER_INTS = 256

# ----------------------------------------------------------------------------
# the parameter table: names, shapes and weight decay, in model.bin's order.
# Everything that walks the parameters (init, reading, writing, the optimizer's
# groups, TVR, the debug state) reads this one list.

BLOCK_MATRICES = ["wq", "wk", "wv", "wo", "w1", "w3", "w2"]  # the matrices TVR and LIR touch


def param_table(cfg):
    V, L, C, F_, NH, NKV = cfg["V"], cfg["L"], cfg["C"], cfg["F"], cfg["NH"], cfg["NKV"]
    kv = NKV * (C // NH)
    # (name, shape, weight decay?)
    return [
        ("tok_emb", (V, C), True),
        ("attn_norm", (L, C), False),
        ("wq", (L, C, C), True),
        ("wk", (L, kv, C), True),
        ("wv", (L, kv, C), True),
        ("wo", (L, C, C), True),
        ("ffn_norm", (L, C), False),
        ("w1", (L, F_, C), True),
        ("w3", (L, F_, C), True),
        ("w2", (L, C, F_), True),
        ("final_norm", (C,), False),
        ("lm_head", (V, C), True),
    ]


# ----------------------------------------------------------------------------
# model.bin


def read_model(path, dtype):
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_INTS * 4), dtype="<i4")
        if len(header) != HEADER_INTS or header[0] != MODEL_MAGIC:
            sys.exit(f"error: {path} is not a model.bin (bad magic)")
        if header[1] != MODEL_VERSION:
            sys.exit(f"error: {path} has version {header[1]}, want {MODEL_VERSION}")
        cfg = dict(T=int(header[2]), V=int(header[3]), L=int(header[4]), NH=int(header[5]),
                   NKV=int(header[6]), C=int(header[7]), F=int(header[8]))
        cfg["eps"] = float(header[16:17].view("<f4")[0])
        cfg["theta"] = float(header[17:18].view("<f4")[0])
        params = {}
        for name, shape, _ in param_table(cfg):
            n = int(np.prod(shape))
            buf = np.frombuffer(f.read(n * 4), dtype="<f4")
            if len(buf) != n:
                sys.exit(f"error: {path} is truncated in tensor {name}")
            params[name] = torch.from_numpy(buf.copy()).reshape(shape).to(dtype)
        if f.read(1):
            sys.exit(f"error: {path} has bytes after its last tensor")
    return cfg, params


def write_model(path, cfg, params):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0:9] = [MODEL_MAGIC, MODEL_VERSION, cfg["T"], cfg["V"], cfg["L"], cfg["NH"], cfg["NKV"], cfg["C"], cfg["F"]]
    header[16:18] = np.array([cfg["eps"], cfg["theta"]], dtype="<f4").view("<i4")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        for name, _, _ in param_table(cfg):
            f.write(params[name].detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    os.replace(tmp, path)


def init_params(cfg, scheme, std, seed, dtype):
    """The init schemes of docs/methods.md, drawn with torch's generator (not the C program's RNG:
    the oracle's fresh models have the same distribution, not the same numbers)."""
    g = torch.Generator().manual_seed(seed)
    L = cfg["L"]
    params = {}
    for name, shape, _ in param_table(cfg):
        if name.endswith("norm"):
            params[name] = torch.ones(shape, dtype=torch.float64)
            continue
        w = torch.randn(shape, generator=g, dtype=torch.float64)
        if name in BLOCK_MATRICES:
            for l in range(L):  # block l+1 (1-based)
                s = std
                if scheme == "lir":  # docs/methods.md, LIR: sigma / sqrt(l)
                    s = std / math.sqrt(l + 1)
                elif scheme == "residual" and name in ("wo", "w2"):
                    s = std / math.sqrt(2 * L)
                w[l] *= s
        else:
            w *= std
        params[name] = w
    # round through float32 so a fresh model equals the model.bin it is saved as
    return {k: v.to(torch.float32).to(dtype) for k, v in params.items()}


# ----------------------------------------------------------------------------
# data: llm.c token shards, the loader order of docs/formats.md


def read_shard(path):
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_INTS * 4), dtype="<i4")
        if len(header) != HEADER_INTS or header[0] != SHARD_MAGIC or header[1] != 1:
            sys.exit(f"error: {path} is not a version-1 llm.c token shard")
        tokens = np.frombuffer(f.read(), dtype="<u2")
        if len(tokens) != header[2]:
            sys.exit(f"error: {path}: header says {header[2]} tokens, file has {len(tokens)}")
    return tokens.astype(np.int64)


class DataLoader:
    """Batch k reads B*T+1 contiguous tokens from position p, then p += B*T; when the
    next batch does not fit, move to the start of the next shard (wrapping around)."""

    def __init__(self, pattern, B, T, V):
        self.paths = sorted(glob.glob(pattern))
        if not self.paths:
            sys.exit(f"error: --train {pattern}: no file matches")
        self.B, self.T = B, T
        for p in self.paths:
            tok = read_shard(p)
            if len(tok) < B * T + 1:
                sys.exit(f"error: {p} has fewer tokens than one batch")
            if tok.max() >= V:
                sys.exit(f"error: {p} has a token id >= vocabulary {V}")
        self.shard = 0
        self.tokens = read_shard(self.paths[0])
        self.pos = 0

    def next_batch(self):
        n = self.B * self.T
        if self.pos + n + 1 > len(self.tokens):
            self.shard = (self.shard + 1) % len(self.paths)
            self.tokens = read_shard(self.paths[self.shard])
            self.pos = 0
        buf = torch.from_numpy(self.tokens[self.pos:self.pos + n + 1].copy())
        self.pos += n
        return buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)


# ----------------------------------------------------------------------------
# the model (docs/methods.md, "The models")


def rope_table(T, hs, theta, dtype):
    """cos and sin of angle t * theta^(-2i/hs) for pair i of a head, t = 0..T-1,
    computed in float64 and rounded once to the working dtype."""
    i = torch.arange(hs // 2, dtype=torch.float64)
    freq = theta ** (-2.0 * i / hs)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * freq[None, :]  # (T, hs/2)
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def rmsnorm(x, gain, eps, fast=False):
    if fast and hasattr(F, "rms_norm"):  # torch >= 2.4's fused op, for the speed race
        return F.rms_norm(x, (x.shape[-1],), weight=gain, eps=eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def apply_rope(x, cos, sin):
    """x: (B, H, T, hs); rotates the interleaved pairs (2i, 2i+1) (llama2.c's convention)."""
    B, H, T, hs = x.shape
    xp = x.reshape(B, H, T, hs // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.reshape(B, H, T, hs)


def attention(q, k, v, NH, NKV, fast):
    """Causal softmax attention, scale 1/sqrt(hs); query head h reads kv head h // (NH/NKV)."""
    hs = q.shape[-1]
    if fast and hasattr(F, "scaled_dot_product_attention"):  # what a PyTorch user would write today
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=(NKV != NH))
        except TypeError:  # torch < 2.5: no enable_gqa
            pass
    rep = NH // NKV
    k = k.repeat_interleave(rep, dim=1)  # kv head j serves query heads j*rep .. j*rep+rep-1
    v = v.repeat_interleave(rep, dim=1)
    if fast and hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[2]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    att = att.masked_fill(~mask, float("-inf"))
    att = torch.softmax(att, dim=-1)
    return att @ v


def forward(params, cfg, idx, rope, fast=False):
    """idx: (B, T) token ids -> logits (B, T, V)."""
    B, T = idx.shape
    C, NH, NKV, L, eps = cfg["C"], cfg["NH"], cfg["NKV"], cfg["L"], cfg["eps"]
    hs = C // NH
    cos, sin = rope[0][:T], rope[1][:T]
    x = params["tok_emb"][idx]  # (B, T, C)
    for l in range(L):
        n = rmsnorm(x, params["attn_norm"][l], eps, fast)
        q = F.linear(n, params["wq"][l]).view(B, T, NH, hs).transpose(1, 2)
        k = F.linear(n, params["wk"][l]).view(B, T, NKV, hs).transpose(1, 2)
        v = F.linear(n, params["wv"][l]).view(B, T, NKV, hs).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = attention(q, k, v, NH, NKV, fast).transpose(1, 2).reshape(B, T, C)
        h = x + F.linear(y, params["wo"][l])
        n = rmsnorm(h, params["ffn_norm"][l], eps, fast)
        x = h + F.linear(F.silu(F.linear(n, params["w1"][l])) * F.linear(n, params["w3"][l]), params["w2"][l])
    return F.linear(rmsnorm(x, params["final_norm"], eps, fast), params["lm_head"])


# ----------------------------------------------------------------------------
# training: schedule, clipping, AdamW, TVR (docs/methods.md, "The training loop")


def lr_at(step, a):
    """Steps are 1..N. Linear warm-up to lr at step W, then cosine down to lr*min_lr_frac at step N."""
    if a.warmup > 0 and step <= a.warmup:
        return a.lr * step / a.warmup
    if a.schedule == "constant":
        return a.lr
    lr_min = a.lr * a.min_lr_frac
    span = a.steps - a.warmup
    progress = (step - a.warmup) / span if span > 0 else 1.0
    return lr_min + 0.5 * (a.lr - lr_min) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def tvr_rescale(params, cfg, a):
    """Target Variance Rescaling (docs/methods.md, paper A): for each block matrix, mean mu and
    unbiased std s (float64); if s / target_l > threshold, W <- (W - mu) * target_l / s + mu.
    target_l = target, or target / sqrt(l) with --tvr-depth-scaled 1. Returns how many were rescaled."""
    count = 0
    for name in BLOCK_MATRICES:
        for l in range(cfg["L"]):
            w = params[name][l]
            w64 = w.to(torch.float64)
            mu = w64.mean().item()
            s = w64.std(unbiased=True).item()
            target = a.tvr_target / math.sqrt(l + 1) if a.tvr_depth_scaled else a.tvr_target
            if s / target > a.tvr_threshold:
                w.copy_(((w64 - mu) * (target / s) + mu).to(w.dtype))
                count += 1
    return count


def make_optimizer(params, cfg, a):
    table = param_table(cfg)
    decay = [params[n] for n, _, d in table if d]
    no_decay = [params[n] for n, _, d in table if not d]
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)
    if a.bench:
        kw["foreach"] = True  # the fast multi-tensor path a PyTorch user gets by default today
    return torch.optim.AdamW(groups, **kw)


def global_grad_norm(params):
    norms = torch.stack([p.grad.detach().norm(2) for p in params])
    return norms.norm(2)


def train(a, cfg, params, dtype):
    """Runs a.steps steps; returns the debug record (first batch, logits, grads, per-step logs)."""
    plist = [params[n] for n, _, _ in param_table(cfg)]
    for p in plist:
        p.requires_grad_(True)
    opt = make_optimizer(params, cfg, a)
    loader = DataLoader(a.train, a.batch, a.seq_len, cfg["V"])
    rope = rope_table(cfg["T"], cfg["C"] // cfg["NH"], cfg["theta"], dtype)
    rec = dict(loss=[], lr=[], grad_norm=[], clipped=[], rescaled=[])
    csv = open(os.path.join(a.out, "train.csv"), "w") if a.out else None
    if csv:
        csv.write("step,loss,lr,grad_norm,ms,tokens_per_s\n")
    t_bench = None
    for step in range(1, a.steps + 1):
        if a.bench and step == 2:
            t_bench = time.perf_counter()  # the first step warms caches and allocators
        t0 = time.perf_counter()
        x, y = loader.next_batch()
        # --autocast bf16: PyTorch's mixed precision as its docs give it, around forward and loss
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
            logits = forward(params, cfg, x, rope, fast=a.bench)
            loss = F.cross_entropy(logits.view(-1, cfg["V"]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 1 and not a.bench:
            rec["inputs"], rec["targets"] = x.clone(), y.clone()
            rec["logits"] = logits.detach().clone()
            rec["loss0"] = loss.item()
            rec["grads"] = {n: p.grad.detach().clone() for n, p in zip([t[0] for t in param_table(cfg)], plist)}
        if a.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(plist, a.grad_clip)
            clipped = int(a.grad_clip / (norm.item() + 1e-6) < 1.0)
        else:
            norm = global_grad_norm(plist)
            clipped = 0
        lr = lr_at(step, a)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        rescaled = 0
        if a.tvr_target > 0 and step % a.tvr_every == 0:
            rescaled = tvr_rescale(params, cfg, a)
        ms = 1000 * (time.perf_counter() - t0)
        for k, v in (("loss", loss.item()), ("lr", lr), ("grad_norm", norm.item()), ("clipped", clipped),
                     ("rescaled", rescaled)):
            rec[k].append(v)
        if csv:
            csv.write(f"{step},{loss.item():.6f},{lr:.6e},{norm.item():.6f},{ms:.1f},"
                      f"{a.batch * a.seq_len / (ms / 1000):.0f}\n")
        if not a.quiet:
            print(f"step {step:4d} | loss {loss.item():.6f} | lr {lr:.3e} | grad_norm {norm.item():.4f}"
                  f"{' (clipped)' if clipped else ''}{f' | tvr {rescaled}' if rescaled else ''} | {ms:.1f} ms")
    if t_bench is not None:
        dt = time.perf_counter() - t_bench
        tok = (a.steps - 1) * a.batch * a.seq_len
        print(f"pytorch tokens/s: {tok / dt:.1f} ({a.steps - 1} timed steps, {dt:.2f} s, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads)")
    if csv:
        csv.close()
    return rec


def write_debug_state(path, a, cfg, params, rec, dtype):
    table = param_table(cfg)
    P = sum(int(np.prod(s)) for _, s, _ in table)
    rb = 8 if dtype == torch.float64 else 4
    npdt = "<f8" if rb == 8 else "<f4"
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0:18] = [DEBUG_MAGIC, DEBUG_VERSION, rb, a.batch, a.seq_len, a.steps, a.warmup,
                    1 if a.schedule == "constant" else 0, a.tvr_every, a.tvr_depth_scaled, P, cfg["T"],
                    cfg["V"], cfg["L"], cfg["NH"], cfg["NKV"], cfg["C"], cfg["F"]]
    hyper = np.zeros(16, dtype="<f8")
    hyper[0:11] = [a.lr, a.min_lr_frac, a.weight_decay, a.beta1, a.beta2, a.eps, a.grad_clip, a.tvr_target,
                   a.tvr_threshold, cfg["eps"], cfg["theta"]]
    header[64:96] = hyper.view("<i4")
    g = a.train.encode()
    if len(g) >= 512:
        sys.exit("error: --train pattern too long for the debug state")
    header[128:256] = np.frombuffer(g + b"\0" * (512 - len(g)), dtype="<i4")

    def reals(t):
        return np.asarray(t.detach().cpu().numpy() if torch.is_tensor(t) else t, dtype=npdt).tobytes()

    with open(path + ".tmp", "wb") as f:
        f.write(header.tobytes())
        f.write(rec["inputs"].numpy().astype("<i4").tobytes())
        f.write(rec["targets"].numpy().astype("<i4").tobytes())
        f.write(reals(rec["logits"]))
        f.write(reals([rec["loss0"]]))
        for name, _, _ in table:
            f.write(reals(rec["grads"][name]))
        for k in ("loss", "lr", "grad_norm"):
            f.write(reals(rec[k]))
        for name, _, _ in table:
            f.write(reals(params[name]))
        f.write(np.asarray(rec["clipped"], dtype="<i4").tobytes())
        f.write(np.asarray(rec["rescaled"], dtype="<i4").tobytes())
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------
# command line (the flags shared with train_llama.c have its names and defaults)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default="data/tinyshakespeare/llama2_train_*.bin", help="glob of llm.c token shards")
    p.add_argument("--init-from", help="start from this model.bin")
    p.add_argument("--out", help="directory for model.bin and train.csv")
    p.add_argument("--debug-state", help="write the debug-state file (see the top of this file)")
    # a fresh model
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=0, help="0 = 2/3*4C rounded up to 32")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--norm-eps", type=float, default=1e-5)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--init", choices=["plain", "lir", "residual"], default="plain")
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1337)
    # training
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--tvr-target", type=float, default=0.0)
    p.add_argument("--tvr-every", type=int, default=50)
    p.add_argument("--tvr-threshold", type=float, default=1.2)
    p.add_argument("--tvr-depth-scaled", type=int, default=0, choices=[0, 1])
    # this program only
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--bench", type=int, default=0, choices=[0, 1],
                   help="1: time steps 2..N with today's fast torch ops (sdpa, foreach AdamW)")
    p.add_argument("--quiet", type=int, default=0, choices=[0, 1])
    p.add_argument("--autocast", choices=["off", "bf16"], default="off",
                   help="bf16: torch.autocast('cpu', bfloat16) around forward and loss (the bf16 race)")
    a = p.parse_args(argv)
    if a.steps < 0 or a.batch < 1 or a.seq_len < 1 or a.lr < 0 or a.tvr_every < 1:
        p.error("--steps >= 0, --batch >= 1, --seq-len >= 1, --lr >= 0 and --tvr-every >= 1")
    return a


def main(argv=None):
    a = parse_args(argv)
    dtype = torch.float64 if a.dtype == "float64" else torch.float32
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.init_from:
        cfg, params = read_model(a.init_from, dtype)
    else:
        nkv = a.kv_heads
        ffn = a.ffn or (2 * 4 * a.dim // 3 + 31) // 32 * 32  # train_llama.c's rule
        if a.dim % a.heads or a.heads % nkv or (a.dim // a.heads) % 2:
            sys.exit("error: --heads must divide --dim into even head sizes, --kv-heads must divide --heads")
        cfg = dict(T=a.seq_len, V=a.vocab, L=a.layers, NH=a.heads, NKV=nkv, C=a.dim, F=ffn,
                   eps=float(np.float32(a.norm_eps)), theta=float(np.float32(a.rope_theta)))
        params = init_params(cfg, a.init, a.init_std, a.seed, dtype)
    if a.seq_len > cfg["T"]:
        sys.exit(f"error: --seq-len {a.seq_len} is above the model's {cfg['T']}")
    if a.out:
        os.makedirs(a.out, exist_ok=True)
    rec = None
    if a.steps > 0:
        if not a.train:
            sys.exit("error: --train is needed when --steps > 0")
        rec = train(a, cfg, params, dtype)
    if a.out and not a.bench:
        write_model(os.path.join(a.out, "model.bin"), cfg, params)
    if a.debug_state:
        if rec is None:
            sys.exit("error: --debug-state needs --steps >= 1")
        write_debug_state(a.debug_state, a, cfg, params, rec, dtype)


if __name__ == "__main__":
    main()
