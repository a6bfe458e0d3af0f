#!/usr/bin/env python3
"""test/test_llama_gpu_compare.py: compare two runs of the LLaMA trainers number by number.

Standard library only (the GPU machine may have no numpy). Used by test/test_llama_gpu.sh.

  model A.bin B.bin TOL          every tensor of two model.bin files
  state A.bin B.bin TOL TOL_MV   params (TOL), Adam m and v (TOL_MV) of two state.bin files
  csv A.csv B.csv KEYS COLS TOL  rows matched on the KEYS columns, COLS compared
                                 (a column named name=exact must be equal)
  bench train.csv SKIP           mean ms/step and tokens/s over the steps after SKIP

Errors are max |A - B| / max |B| over a tensor or a column, as in test/test_reference.c.
Each comparison prints one line per tensor or column; the exit status is 1 if any is over
its tolerance (a NaN counts as over).
"""
import math
import operator
import struct
import sys
from array import array

NAMES = ["tok_emb", "attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w3", "w2", "final_norm", "lm_head"]


def tensor_sizes(path):
    with open(path, "rb") as f:
        h = struct.unpack("256i", f.read(1024))
    if h[0] != 20261122:
        sys.exit(f"{path}: not a model.bin (magic {h[0]})")
    T, V, L, NH, NKV, C, F = h[2:9]
    kvd = NKV * (C // NH)
    sizes = [V * C, L * C, L * C * C, L * kvd * C, L * kvd * C, L * C * C, L * C, L * F * C, L * F * C, L * C * F, C,
             V * C]
    return list(zip(NAMES, sizes))


def floats(path, offset_bytes):
    a = array("f")
    with open(path, "rb") as f:
        f.seek(offset_bytes)
        a.frombytes(f.read())
    return a


def rel_err(a, b):
    # map() with operator and math functions runs the loops in C: ~10x a Python for-loop
    if any(map(math.isnan, a)):
        return float("nan"), 0.0
    err = max(map(abs, map(operator.sub, a, b)), default=0.0)
    ref = max(map(abs, b), default=0.0)
    return (err / ref if ref > 0 else err), ref


def report(what, n, err, ref, tol):
    ok = err <= tol
    print(f"  {what:<28} {n:9d} values, max|ref| {ref:9.3e}, relative error {err:9.2e} (tolerance {tol:.0e})"
          f"{'' if ok else '   <-- FAIL'}")
    return ok


def compare_tensors(a, b, sizes, prefix, tol):
    ok, off = True, 0
    for name, n in sizes:
        err, ref = rel_err(a[off:off + n], b[off:off + n])
        ok &= report(f"{prefix}{name}", n, err, ref, tol)
        off += n
    return ok


def cmd_model(pa, pb, tol):
    sizes = tensor_sizes(pb)
    if tensor_sizes(pa) != sizes:
        print(f"  {pa} and {pb} describe different models   <-- FAIL")
        return False
    a, b = floats(pa, 1024), floats(pb, 1024)
    if len(a) != len(b) or len(b) != sum(n for _, n in sizes):
        print(f"  {pa} / {pb}: wrong sizes   <-- FAIL")
        return False
    return compare_tensors(a, b, sizes, "", tol)


def cmd_state(pa, pb, model_path, tol, tol_mv):
    sizes = tensor_sizes(model_path)
    P = sum(n for _, n in sizes)
    with open(pa, "rb") as f:
        ha = struct.unpack("256i", f.read(1024))
    with open(pb, "rb") as f:
        hb = struct.unpack("256i", f.read(1024))
    ok = ha[:8] == hb[:8]
    print(f"  {'header (step, data position, rng)':<28} {'equal' if ok else 'DIFFER   <-- FAIL'}")
    a, b = floats(pa, 1024), floats(pb, 1024)
    if len(a) != 3 * P or len(b) != 3 * P:
        print(f"  state sizes {len(a)} / {len(b)}, want {3 * P}   <-- FAIL")
        return False
    ok &= compare_tensors(a[:P], b[:P], sizes, "state params ", tol)
    ok &= compare_tensors(a[P:2 * P], b[P:2 * P], sizes, "adam m ", tol_mv)
    ok &= compare_tensors(a[2 * P:], b[2 * P:], sizes, "adam v ", tol_mv)
    return ok


def read_csv(path):
    with open(path) as f:
        lines = [l.strip() for l in f if l.strip()]
    head = lines[0].split(",")
    return head, [dict(zip(head, l.split(","))) for l in lines[1:]]


def cmd_csv(pa, pb, keys, cols, tol):
    _, ra = read_csv(pa)
    _, rb = read_csv(pb)
    keys = keys.split(",")
    ia = {tuple(r[k] for k in keys): r for r in ra}
    ok = True
    if len(ra) != len(rb) or any(tuple(r[k] for k in keys) not in ia for r in rb):
        print(f"  {pa} and {pb} have different rows ({len(ra)} / {len(rb)})   <-- FAIL")
        return False
    for col in cols.split(","):
        exact = col.endswith("=exact")
        col = col.split("=")[0]
        a = [float(ia[tuple(r[k] for k in keys)][col]) for r in rb]
        b = [float(r[col]) for r in rb]
        if exact:
            bad = sum(x != y for x, y in zip(a, b))
            print(f"  {col + ' (' + pb.split('/')[-1] + ')':<28} {len(b):9d} values, {bad} differ"
                  f"{'' if bad == 0 else '   <-- FAIL'}")
            ok &= bad == 0
        else:
            err, ref = rel_err(a, b)
            ok &= report(f"{col} ({pb.split('/')[-1]})", len(b), err, ref, tol)
    return ok


def cmd_bench(path, skip):
    _, rows = read_csv(path)
    rows = [r for r in rows if int(r["step"]) > skip]
    if not rows:
        sys.exit(f"{path}: no steps after {skip}")
    ms = sum(float(r["ms"]) for r in rows) / len(rows)
    tok = sum(float(r["tokens_per_s"]) for r in rows) / len(rows)
    print(f"{ms:.3f} {tok:.0f} {len(rows)}")
    return True


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "model":
        ok = cmd_model(args[0], args[1], float(args[2]))
    elif cmd == "state":
        ok = cmd_state(args[0], args[1], args[2], float(args[3]), float(args[4]))
    elif cmd == "csv":
        ok = cmd_csv(args[0], args[1], args[2], args[3], float(args[4]))
    elif cmd == "bench":
        ok = cmd_bench(args[0], int(args[1]))
    else:
        sys.exit(__doc__)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
