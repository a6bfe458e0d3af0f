#!/usr/bin/env python3
"""dev/bench_cpu_gemm.py: PyTorch's side of dev/bench_cpu_gemm.c: the same matmul shapes
(forward out = inp . W^T, backward dW = dout^T . inp and dinp = dout . W), best of N, GFLOP/s.
Usage: .venv-torch/bin/python dev/bench_cpu_gemm.py [reps]   (2 threads)"""
import sys
import time

import torch

SHAPES = [("tiny wq/wo", 1024, 128, 128), ("tiny wk/wv", 1024, 128, 64), ("tiny w1/w3", 1024, 128, 352),
          ("tiny w2", 1024, 352, 128), ("tiny lm_head", 1024, 128, 32000), ("mid wq/wo", 2048, 512, 512),
          ("mid wk/wv", 2048, 512, 256), ("mid w1/w3", 2048, 512, 1408), ("mid w2", 2048, 1408, 512),
          ("mid lm_head", 2048, 512, 32000)]


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.set_num_threads(2)
    print(f"PyTorch {torch.__version__} matmuls, {torch.get_num_threads()} threads, best of {reps}")
    for name, N, Cin, Cout in SHAPES:
        inp, W, dout = torch.randn(N, Cin) * 0.02, torch.randn(Cout, Cin) * 0.02, torch.randn(N, Cout) * 0.02
        bf = bb = 1e30
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.nn.functional.linear(inp, W)
            t1 = time.perf_counter()
            dout.t() @ inp
            dout @ W
            t2 = time.perf_counter()
            bf, bb = min(bf, t1 - t0), min(bb, t2 - t1)
        fl = 2.0 * N * Cin * Cout
        print(f"{name:<22} N={N:5d} Cin={Cin:5d} Cout={Cout:5d} | forward {fl / bf / 1e9:7.1f} GFLOP/s | "
              f"backward (dW + dinp) {2 * fl / bb / 1e9:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
