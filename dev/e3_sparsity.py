"""
E3's sparsity question for every layer at once: compare two llm.c GPT-2 checkpoints
(the init and the end of a run) matrix by matrix: std, the share of near-zero entries
(|w − μ| < 0.1·std; 0.0797 for a Gaussian), of large ones (|w − μ| > 3·std; 0.0027) and
the excess kurtosis (0 for a Gaussian) of q, k, v (the parts of c_attn) and the MLP.

  ./train_gpt2 <the run's flags> --steps 0 --out out/e3_init   # the same seed gives the same init
  /usr/bin/python3 dev/e3_sparsity.py out/e3_init/model.bin out/e3/model.bin > out/e3/e3_sparsity.md
"""
import sys

import numpy as np


def load(path):
    h = np.fromfile(path, dtype=np.int32, count=256)
    assert h[0] == 20240326 and h[1] == 3, f"{path}: not an llm.c fp32 GPT-2 checkpoint"
    maxT, V, L, NH, C, Vp = (int(x) for x in h[2:8])
    p = np.fromfile(path, dtype=np.float32, offset=1024)
    sizes = [("wte", Vp * C), ("wpe", maxT * C), ("ln1w", L * C), ("ln1b", L * C), ("qkvw", L * 3 * C * C),
             ("qkvb", L * 3 * C), ("attprojw", L * C * C), ("attprojb", L * C), ("ln2w", L * C), ("ln2b", L * C),
             ("fcw", L * 4 * C * C), ("fcb", L * 4 * C), ("fcprojw", L * 4 * C * C)]
    out, off = {}, 0
    for name, n in sizes:
        out[name] = p[off:off + n]
        off += n
    qkv = out["qkvw"].reshape(L, 3, C, C)
    mats = {"q": qkv[:, 0], "k": qkv[:, 1], "v": qkv[:, 2], "fc": out["fcw"].reshape(L, 4 * C, C),
            "fc_proj": out["fcprojw"].reshape(L, C, 4 * C)}
    return L, mats


def stats(w):
    w = w.astype(np.float64).ravel()
    d = np.abs(w - w.mean())
    sd = w.std(ddof=1)
    var = (d ** 2).mean()
    return sd, (d < 0.1 * sd).mean(), (d > 3 * sd).mean(), (d ** 4).mean() / var ** 2 - 3


def main():
    L, a = load(sys.argv[1])
    _, b = load(sys.argv[2])
    print("| matrix | layer | std init → end | near-zero init → end | large init → end | excess kurtosis init → end |")
    print("|---|---|---|---|---|---|")
    for m in ("q", "k", "v", "fc", "fc_proj"):
        for l in range(L):
            s0, s1 = stats(a[m][l]), stats(b[m][l])
            print(f"| {m} | {l + 1} | {s0[0]:.4f} → {s1[0]:.4f} | {s0[1]:.4f} → {s1[1]:.4f} | "
                  f"{s0[2]:.4f} → {s1[2]:.4f} | {s0[3]:+.3f} → {s1[3]:+.3f} |")


if __name__ == "__main__":
    main()
