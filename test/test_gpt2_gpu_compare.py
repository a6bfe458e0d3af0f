#!/usr/bin/env python3
"""test/test_gpt2_gpu_compare.py: compare two GPT-2 checkpoints (llm.c format) tensor by tensor.

Standard library only (the GPU machine may have no numpy). Used by test/test_gpt2_gpu.sh;
for CSV logs it uses test/test_llama_gpu_compare.py's `csv` command, which is model-agnostic.

  model A.bin B.bin TOL          every tensor of two model.bin files
  state A.bin B.bin MODEL TOL TOL_MV   params (TOL), Adam m and v (TOL_MV) of two state.bin files

Errors are max |A - B| / max |B| per tensor; exit status 1 if any is over its tolerance.
"""
import struct
import sys
from array import array

NAMES = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb",
         "fcprojw", "fcprojb", "lnfw", "lnfb"]


def tensor_sizes(path):
    with open(path, "rb") as f:
        h = struct.unpack("256i", f.read(1024))
    if h[0] != 20240326 or h[1] != 3:
        sys.exit(f"{path}: not an llm.c GPT-2 fp32 checkpoint (magic {h[0]}, version {h[1]})")
    T, V, L, NH, C, Vp = h[2:8]
    sizes = [Vp * C, T * C, L * C, L * C, L * 3 * C * C, L * 3 * C, L * C * C, L * C, L * C, L * C, L * 4 * C * C,
             L * 4 * C, L * 4 * C * C, L * C, C, C]
    return list(zip(NAMES, sizes))


def floats(path, offset_bytes):
    a = array("f")
    with open(path, "rb") as f:
        f.seek(offset_bytes)
        a.frombytes(f.read())
    return a


def compare(a, b, sizes, prefix, tol):
    ok, off = True, 0
    for name, n in sizes:
        x, y = a[off:off + n], b[off:off + n]
        nan = any(v != v for v in x)
        err = max((abs(p - q) for p, q in zip(x, y)), default=0.0)
        ref = max((abs(q) for q in y), default=0.0)
        rel = float("nan") if nan else (err / ref if ref > 0 else err)
        good = rel <= tol
        print(f"  {prefix + name:<22} {n:9d} values, max|ref| {ref:9.3e}, relative error {rel:9.2e} "
              f"(tolerance {tol:.0e}){'' if good else '   <-- FAIL'}")
        ok &= good
        off += n
    return ok


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "model":
        pa, pb, tol = sys.argv[2], sys.argv[3], float(sys.argv[4])
        sizes = tensor_sizes(pb)
        if tensor_sizes(pa) != sizes:
            print("  the checkpoints describe different models   <-- FAIL")
            sys.exit(1)
        ok = compare(floats(pa, 1024), floats(pb, 1024), sizes, "", tol)
    elif cmd == "state":
        pa, pb, model, tol, tol_mv = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
        sizes = tensor_sizes(model)
        P = sum(n for _, n in sizes)
        with open(pa, "rb") as f:
            ha = struct.unpack("256i", f.read(1024))
        with open(pb, "rb") as f:
            hb = struct.unpack("256i", f.read(1024))
        ok = ha[:10] == hb[:10]
        print(f"  {'header (step, data position, rng, count)':<22} {'equal' if ok else 'DIFFER   <-- FAIL'}")
        a, b = floats(pa, 1024), floats(pb, 1024)
        if len(a) != 3 * P or len(b) != 3 * P:
            print(f"  state sizes {len(a)} / {len(b)}, want {3 * P}   <-- FAIL")
            sys.exit(1)
        ok &= compare(a[:P], b[:P], sizes, "params ", tol)
        ok &= compare(a[P:2 * P], b[P:2 * P], sizes, "adam m ", tol_mv)
        ok &= compare(a[2 * P:], b[2 * P:], sizes, "adam v ", tol_mv)
    else:
        sys.exit(__doc__)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
