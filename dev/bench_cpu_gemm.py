#!/usr/bin/env python3
"""dev/bench_cpu_gemm.py: PyTorch's side of dev/bench_cpu_gemm.c: the same matmul shapes
(forward out = inp . W^T, backward dW = dout^T . inp and dinp = dout . W), best of N, GFLOP/s,
in fp32 and in bf16, and the two ceilings (a 2048^3 product in each).
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
    print(f"{'shape':<14} {'N':>5} {'Cin':>5} {'Cout':>5} | fp32 fwd / bwd GFLOP/s | bf16 fwd / bwd GFLOP/s")
    for name, N, Cin, Cout in SHAPES:
        row = f"{name:<14} {N:5d} {Cin:5d} {Cout:5d}"
        for dtype in (torch.float32, torch.bfloat16):  # bf16: the matmuls autocast would run
            inp, W = (torch.randn(N, Cin) * 0.02).to(dtype), (torch.randn(Cout, Cin) * 0.02).to(dtype)
            dout = (torch.randn(N, Cout) * 0.02).to(dtype)
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
            row += f" | {fl / bf / 1e9:7.0f} / {2 * fl / bb / 1e9:7.0f}"
        print(row, flush=True)
    # the ceilings: one large square product in each precision
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
        best = 1e30
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        print(f"ceiling: 2048^3 {str(dtype)[6:]} matmul {2 * 2048 ** 3 / best / 1e9:.0f} GFLOP/s")

if __name__ == "__main__":
    main()
