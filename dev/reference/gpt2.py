"""
PyTorch reference for train_gpt2.c: the same GPT-2, written with autograd (no
hand-written backward), trained with torch.optim.AdamW, gradient clipping, the
schedule and TVR of docs/methods.md (paper A). It writes the fixtures that
`make test` compares the C program against (test/test_gpt2.c):

  gpt2_tiny_train.bin  a byte-level token shard (llm.c format) cut from Tiny Shakespeare
  gpt2_tiny_model.bin  a small random GPT-2 in llm.c's checkpoint format (v3, fp32, padded vocab)
  gpt2_tiny_ref.bin    what PyTorch computed on it: logits, loss, every gradient on the
                       first batch, then 10 optimizer steps (loss and grad norm of each,
                       with TVR at steps 5 and 10) and the final parameters

Run (Debian's python3-torch is enough):  /usr/bin/python3 dev/reference/gpt2.py --out test/fixtures
The parameters are kept exactly as the checkpoint lays them out: per-layer tensors are
stacked (L, ...) leaves, so their gradients can be written in checkpoint order.
"""
import argparse
import math
import struct

import numpy as np
import torch
import torch.nn.functional as F

SHARD_MAGIC, GPT2_MAGIC, REF_MAGIC = 20240520, 20240326, 20261125

# The fixture's model and training run. The C test reads all of it from the files.
CFG = dict(max_seq_len=16, vocab=250, padded_vocab=256, layers=2, heads=4, channels=32)
B, T, STEPS = 4, 12, 10  # T < max_seq_len: the unused position rows must stay put
TRAIN = dict(lr=3e-3, warmup=3, min_lr_frac=0.1, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
             grad_clip=1.0, tvr_target=0.015, tvr_threshold=1.2, tvr_every=5)

# checkpoint order; (name, per_layer, weight decay)
PARAMS = [("wte", 0, 1), ("wpe", 0, 1), ("ln1w", 1, 0), ("ln1b", 1, 0), ("qkvw", 1, 1), ("qkvb", 1, 0),
          ("attprojw", 1, 1), ("attprojb", 1, 0), ("ln2w", 1, 0), ("ln2b", 1, 0), ("fcw", 1, 1), ("fcb", 1, 0),
          ("fcprojw", 1, 1), ("fcprojb", 1, 0), ("lnfw", 0, 0), ("lnfb", 0, 0)]
TVR_UNITS = [("qkvw", "qkvb"), ("attprojw", "attprojb"), ("fcw", "fcb"), ("fcprojw", "fcprojb")]


def shapes(c):
    L, C, V, T = c["layers"], c["channels"], c["padded_vocab"], c["max_seq_len"]
    return {"wte": (V, C), "wpe": (T, C), "ln1w": (L, C), "ln1b": (L, C), "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
            "attprojw": (L, C, C), "attprojb": (L, C), "ln2w": (L, C), "ln2b": (L, C), "fcw": (L, 4 * C, C),
            "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C), "fcprojb": (L, C), "lnfw": (C,), "lnfb": (C,)}


def init_params(c, gen):
    """Random parameters, far enough from the usual init that every term matters:
    norm gains 1 ± 0.1, biases 0.02·N(0,1), block l's matrices 0.02/√l (so TVR at
    target 0.015 rescales layer 1 and leaves layer 2), padded vocabulary rows 0."""
    P = {}
    for name, shape in shapes(c).items():
        if name.endswith("w") and name.startswith("ln"):
            t = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif name in ("wte", "wpe"):
            t = 0.02 * torch.randn(shape, generator=gen)
        elif name.endswith("w"):
            t = 0.02 * torch.randn(shape, generator=gen)
            for l in range(c["layers"]):
                t[l] /= math.sqrt(l + 1)
        else:
            t = 0.02 * torch.randn(shape, generator=gen)
        P[name] = t
    P["wte"][c["vocab"]:] = 0
    return {k: v.float().requires_grad_(True) for k, v in P.items()}


def forward(P, c, idx, targets=None):
    """GPT-2: pre-LayerNorm blocks, causal attention, GELU (tanh) MLP, tied output."""
    Bq, Tq = idx.shape
    C, NH, V = c["channels"], c["heads"], c["vocab"]
    hs = C // NH
    x = P["wte"][idx] + P["wpe"][:Tq]
    mask = torch.ones(Tq, Tq, dtype=torch.bool).tril()
    for l in range(c["layers"]):
        h = F.layer_norm(x, (C,), P["ln1w"][l], P["ln1b"][l], eps=1e-5)
        qkv = F.linear(h, P["qkvw"][l], P["qkvb"][l])
        q, k, v = (t.view(Bq, Tq, NH, hs).transpose(1, 2) for t in qkv.split(C, dim=2))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(Bq, Tq, C)
        x = x + F.linear(y, P["attprojw"][l], P["attprojb"][l])
        h = F.layer_norm(x, (C,), P["ln2w"][l], P["ln2b"][l], eps=1e-5)
        h = F.gelu(F.linear(h, P["fcw"][l], P["fcb"][l]), approximate="tanh")
        x = x + F.linear(h, P["fcprojw"][l], P["fcprojb"][l])
    x = F.layer_norm(x, (C,), P["lnfw"], P["lnfb"], eps=1e-5)
    logits = x @ P["wte"][:V].T
    loss = None if targets is None else F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    return logits, loss


def lr_at(step, steps, t):
    """docs/methods.md: linear warm-up to lr at W, then cosine down to lr·min_lr_frac at N."""
    if step <= t["warmup"]:
        return t["lr"] * step / t["warmup"]
    lo = t["lr"] * t["min_lr_frac"]
    return lo + 0.5 * (t["lr"] - lo) * (1 + math.cos(math.pi * (step - t["warmup"]) / (steps - t["warmup"])))


@torch.no_grad()
def tvr(P, c, t):
    """Paper A's TVR on each block matrix as stored (c_attn whole), bias zeroed when rescaled."""
    for l in range(c["layers"]):
        for w, b in TVR_UNITS:
            w64 = P[w][l].double()
            mu, sd = w64.mean(), w64.std()  # unbiased
            if sd / t["tvr_target"] > t["tvr_threshold"]:
                P[w][l] = ((w64 - mu) * t["tvr_target"] / sd + mu).float()
                P[b][l].zero_()


def batches(tokens, Bq, Tq):
    """The loader of docs/formats.md on one shard: batch k reads B·T+1 tokens from p, then p += B·T."""
    p, n = 0, Bq * Tq
    while True:
        if p + n + 1 > len(tokens):
            p = 0
        chunk = torch.tensor(tokens[p:p + n + 1].astype(np.int64))
        yield chunk[:-1].view(Bq, Tq), chunk[1:].view(Bq, Tq)
        p += n


def write_shard(path, tokens, vocab):
    h = np.zeros(256, dtype=np.int32)
    h[:4] = [SHARD_MAGIC, 1, len(tokens), vocab]
    with open(path, "wb") as f:
        f.write(h.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def write_model(path, P, c):
    h = np.zeros(256, dtype=np.int32)
    h[:8] = [GPT2_MAGIC, 3, c["max_seq_len"], c["vocab"], c["layers"], c["heads"], c["channels"], c["padded_vocab"]]
    with open(path, "wb") as f:
        f.write(h.tobytes())
        for name, _, _ in PARAMS:
            f.write(P[name].detach().numpy().astype(np.float32).tobytes())


def flat(tensors):
    return np.concatenate([t.detach().numpy().astype(np.float32).ravel() for t in tensors])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="test/fixtures")
    ap.add_argument("--text", default="data/tinyshakespeare/input.txt")
    args = ap.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)

    # byte-level tokens (all below 128 < V = 250)
    tokens = np.frombuffer(open(args.text, "rb").read()[:2048], dtype=np.uint8).astype(np.uint16)
    write_shard(f"{args.out}/gpt2_tiny_train.bin", tokens, CFG["vocab"])
    P = init_params(CFG, gen)
    write_model(f"{args.out}/gpt2_tiny_model.bin", P, CFG)

    # 1. logits, loss and every gradient on the first batch
    data = batches(tokens, B, T)
    x, y = next(data)
    logits, loss = forward(P, CFG, x, y)
    loss.backward()
    grads = [P[n].grad.clone() for n, _, _ in PARAMS]
    print(f"loss {loss.item():.6f}")

    # 2. STEPS optimizer steps from the same start, with TVR every tvr_every steps
    for p in P.values():
        p.grad = None
    decay = [P[n] for n, _, d in PARAMS if d]
    no_decay = [P[n] for n, _, d in PARAMS if not d]
    t = TRAIN
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t["eps"], foreach=False)
    data = batches(tokens, B, T)
    losses, norms = [], []
    for step in range(1, STEPS + 1):
        x, y = next(data)
        opt.zero_grad(set_to_none=True)
        _, l = forward(P, CFG, x, y)
        l.backward()
        norm = torch.nn.utils.clip_grad_norm_([P[n] for n, _, _ in PARAMS], t["grad_clip"])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, STEPS, t)
        opt.step()
        if step % t["tvr_every"] == 0:
            tvr(P, CFG, t)
        losses.append(l.item())
        norms.append(norm.item())
        print(f"step {step} loss {l.item():.6f} grad_norm {norm.item():.6f}")

    h = np.zeros(256, dtype=np.int32)
    nparams = sum(int(np.prod(s)) for s in shapes(CFG).values())
    h[:10] = [REF_MAGIC, 1, B, T, STEPS, CFG["vocab"], nparams, t["warmup"], t["tvr_every"], 0]
    fl = np.array([t[k] for k in ("lr", "min_lr_frac", "weight_decay", "beta1", "beta2", "eps", "grad_clip",
                                  "tvr_target", "tvr_threshold")], dtype=np.float32)
    h[16:16 + len(fl)] = fl.view(np.int32)
    with open(f"{args.out}/gpt2_tiny_ref.bin", "wb") as f:
        f.write(h.tobytes())
        for arr in (flat([logits]), np.array([loss.item()], np.float32), flat(grads), np.array(losses, np.float32),
                    np.array(norms, np.float32), flat([P[n] for n, _, _ in PARAMS])):
            f.write(arr.astype(np.float32).tobytes())


if __name__ == "__main__":
    main()
