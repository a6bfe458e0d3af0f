#!/usr/bin/env bash
# A seeded fuzz test of the two CPU trainers' file readers (issue 15), in the manner of
# test/test_fuzz_mlp.sh: mutants of five small valid files, each run once under
# AddressSanitizer + UndefinedBehaviorSanitizer with a short timeout.
#   shard        a token shard given as --train (train_llama_asan and train_gpt2_asan in turn)
#   llama_model  train_llama's model.bin, given as --init-from
#   llama_state  train_llama's state.bin, in a copy of a run folder given as --resume
#   gpt2_model   llm.c's GPT-2 model.bin (test/fixtures/gpt2_tiny_model.bin), as --init-from
#   gpt2_state   train_gpt2's state.bin, as --resume
# The valid files are made at the start by the programs themselves (a 1-layer LLaMA of width
# 16; GPT-2 from the committed fixtures). Mutations: byte changes at random offsets (most of
# them in the 1024-byte header), truncations, appended bytes, header int32 (and the state's
# int64) fields set to interesting values, LLaMA's header floats (eps, θ) edited, shard
# tokens edited, and float payload entries set to NaN/±Inf or to huge values.
# Each outcome is a clean error (exit 1 or 2, exactly one stderr line "error: ..."),
# accepted (exit 0), silent accept of a corrupt file (exit 0 although the mutation wrote a
# non-finite float), a crash (a signal), a sanitizer report (exit 99/98, or its report in
# stderr), a hang (the timeout) or other (any other status or stderr, e.g. several lines).
# It fails on a crash, a sanitizer report, a hang or other, on a valid file that is not
# accepted, and, with FUZZ_STRICT=1, on a silent accept of a non-finite float too.
# The runs do at most 2 steps of a tiny model, so a run costs what the sanitizers' start does.
#   FUZZ_SEED (default 15), FUZZ_N (mutants per format, default 150), FUZZ_STRICT (default 0).
#   Failing mutants are kept in FUZZ_KEEP (default build/fuzz_trainers) with the command that
#   reproduces each; FUZZ_LLAMA / FUZZ_GPT2 run other builds (e.g. an older one).
set -u
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

llama=${FUZZ_LLAMA:-build/train_llama_asan}
gpt2=${FUZZ_GPT2:-build/train_gpt2_asan}
for b in "$llama" "$gpt2" build/test_llama; do
  [ -x "$b" ] || { echo "FAIL $b is missing: make build/train_llama_asan build/train_gpt2_asan build/test_llama"; exit 1; }
done
# a report must be told from a clean exit 1: sanitizers exit 99/98 and print their name
export ASAN_OPTIONS=detect_leaks=0:exitcode=99 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=98

LLAMA="$llama" GPT2="$gpt2" TMP="$tmp" SEED="${FUZZ_SEED:-15}" N="${FUZZ_N:-150}" \
  STRICT="${FUZZ_STRICT:-0}" KEEP="${FUZZ_KEEP:-build/fuzz_trainers}" python3 - <<'EOF'
import math, os, random, shlex, shutil, struct, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor

LLAMA, GPT2, TMP, KEEP = os.environ["LLAMA"], os.environ["GPT2"], os.environ["TMP"], os.environ["KEEP"]
SEED, N, STRICT = int(os.environ["SEED"]), int(os.environ["N"]), os.environ["STRICT"] == "1"
rng = random.Random(SEED)
TIMEOUT = 20  # s; a run takes about 0.03 s
H = 1024      # every format here starts with a 1024-byte header of 256 int32

# ---- the valid files, written by the programs under test
S = f"{TMP}/seed"
os.mkdir(S)
def must(argv):
    p = subprocess.run(argv, capture_output=True)
    if p.returncode != 0:
        print(f"FAIL making the valid files: {shlex.join(argv)}: exit {p.returncode}: "
              + " | ".join(p.stderr.decode("utf-8", "replace").splitlines()[:6]))
        sys.exit(1)
GPT2_SHARD, GPT2_MODEL = "test/fixtures/gpt2_tiny_train.bin", "test/fixtures/gpt2_tiny_model.bin"
LLAMA_SHARD = f"{S}/llama_train.bin"
COMMON = ["--batch", "2", "--steps", "2", "--val", "", "--val-every", "0", "--stats-every", "0", "--threads", "1"]
LLAMA_SHAPE = ["--layers", "1", "--dim", "16", "--heads", "2", "--kv-heads", "1", "--seq-len", "8", "--vocab", "64"]
GPT2_SHAPE = ["--layers", "1", "--dim", "16", "--heads", "2", "--seq-len", "8", "--vocab", "250"]
must(["build/test_llama", "write-shard", LLAMA_SHARD, "200", "64"])
must([LLAMA, "--train", LLAMA_SHARD] + LLAMA_SHAPE + COMMON + ["--out", f"{S}/llama_run"])
must([GPT2, "--train", GPT2_SHARD, "--init-from", GPT2_MODEL] + COMMON + ["--out", f"{S}/gpt2_run"])
seeds = {
    "shard": open(LLAMA_SHARD, "rb").read(),
    "shard_gpt2": open(GPT2_SHARD, "rb").read(),
    "llama_model": open(f"{S}/llama_run/model.bin", "rb").read(),
    "llama_state": open(f"{S}/llama_run/state.bin", "rb").read(),
    "gpt2_model": open(GPT2_MODEL, "rb").read(),
    "gpt2_state": open(f"{S}/gpt2_run/state.bin", "rb").read(),
}
FORMATS = ["shard", "llama_model", "llama_state", "gpt2_model", "gpt2_state"]
# the header fields each format reads (int32 indices), its int64 fields, its header floats
FIELDS = {"shard": [0, 1, 2, 3], "llama_model": list(range(9)), "gpt2_model": list(range(8)),
          "llama_state": list(range(12)), "gpt2_state": list(range(12))}
INT64 = {"llama_state": [4, 6, 8], "gpt2_state": [4, 6, 8]}
HFLOAT = {"llama_model": [16, 17]}
INT_MAX, INT_MIN = 2**31 - 1, -2**31
INTS = [0, -1, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 128, 129, 249, 250, 256, 257, 1024, 46341,
        65535, 65536, 1 << 20, 1 << 24, 1 << 28, 1 << 30, INT_MAX, INT_MAX - 1, INT_MIN, INT_MIN + 1, -2, -1024]
INT64S = [0, -1, 1, 2, 16, 17, 199, 200, 1 << 31, 1 << 32, (1 << 62), (1 << 63) - 1, -(1 << 63), -(1 << 31)]
NONFINITE = [math.nan, math.inf, -math.inf]

def payload_floats(fmt):  # number of float32 entries after the header
    return (len(seeds[fmt]) - H) // 4

# ---- a mutant is a list of ops, drawn here in order (so the set depends on the seed alone)
# and applied in the worker; each op is (kind, arguments), printed as the mutant's description.
def offset(n):  # a byte offset, weighted toward the header's fields, then the rest of the header
    r = rng.random()
    if r < 0.45: return rng.randrange(min(80, n))
    if r < 0.65: return rng.randrange(min(H, n))
    return rng.randrange(n)

def seed_of(fmt, i):  # odd shard mutants are GPT-2's shard
    return "shard_gpt2" if fmt == "shard" and i % 2 else fmt

def draw(fmt, key):
    n = len(seeds[key])
    kinds = ["flip", "flip", "truncate", "append", "int", "int"]
    if fmt in INT64: kinds += ["int64"]
    if fmt in HFLOAT: kinds += ["hfloat"]
    if fmt == "shard": kinds += ["token", "token"]
    else: kinds += ["nonfinite", "nonfinite", "bigfloat"]
    ops, nonfinite = [], False
    for _ in range(1 if rng.random() < 0.85 else 2):  # sometimes two mutations at once
        k = rng.choice(kinds)
        if k == "flip":
            for _ in range(rng.choice([1, 1, 2, 4])):
                i = offset(n)
                ops.append(("xor", i, 1 << rng.randrange(8)) if rng.random() < 0.5 else ("byte", i, rng.randrange(256)))
        elif k == "truncate":
            r = rng.random()
            m = rng.randrange(H) if r < 0.3 else H if r < 0.4 else n - rng.choice([1, 2, 3, 4]) if r < 0.6 \
                else rng.randrange(H, n)
            ops.append(("truncate", m))
        elif k == "append":
            ops.append(("append", bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 4, 8, 4096])))))
        elif k == "int":
            f = rng.choice(FIELDS[fmt]) if rng.random() < 0.9 else rng.randrange(256)
            v = rng.choice(INTS) if rng.random() < 0.8 else rng.randrange(INT_MIN, INT_MAX + 1)
            ops.append(("int32", f, v))
        elif k == "int64":
            ops.append(("int64", rng.choice(INT64[fmt]), rng.choice(INT64S)))
        elif k == "hfloat":
            v = rng.choice(NONFINITE + [0.0, -1.0, 1e-45, 1e38, 3.4e38, -1e-5])
            nonfinite |= not math.isfinite(v)
            ops.append(("hfloat", rng.choice(HFLOAT[fmt]), v))
        elif k == "token":
            i = rng.randrange((n - H) // 2)
            ops.append(("token", i, rng.choice([63, 64, 65, 249, 250, 251, 1000, 32767, 32768, 65535])))
        elif k in ("nonfinite", "bigfloat"):
            P = payload_floats(key)
            for _ in range(rng.choice([1, 1, 2, 3])):
                r = rng.random()
                i = 0 if r < 0.1 else P - 1 if r < 0.2 else rng.randrange(P)
                v = rng.choice(NONFINITE) if k == "nonfinite" else rng.choice([1e30, -1e30, 3.4e38, 1e-45])
                ops.append(("float", i, v))
            nonfinite |= k == "nonfinite"
    # (a non-finite float counts only if it is still in the file: see still_nonfinite)
    return ops, nonfinite

def apply(b, ops):
    b = bytearray(b)
    for op in ops:
        k = op[0]
        if k == "xor" and op[1] < len(b): b[op[1]] ^= op[2]
        elif k == "byte" and op[1] < len(b): b[op[1]] = op[2]
        elif k == "truncate": del b[op[1]:]
        elif k == "append": b += op[1]
        elif k == "int32" and 4 * op[1] + 4 <= len(b): b[4 * op[1]:4 * op[1] + 4] = struct.pack("<i", op[2])
        elif k == "int64" and 4 * op[1] + 8 <= len(b):
            b[4 * op[1]:4 * op[1] + 8] = struct.pack("<q" if op[2] < 2**63 else "<Q", op[2])
        elif k == "hfloat" and 4 * op[1] + 4 <= len(b): b[4 * op[1]:4 * op[1] + 4] = struct.pack("<f", op[2])
        elif k == "token" and H + 2 * op[1] + 2 <= len(b): b[H + 2 * op[1]:H + 2 * op[1] + 2] = struct.pack("<H", op[2])
        elif k == "float" and H + 4 * op[1] + 4 <= len(b): b[H + 4 * op[1]:H + 4 * op[1] + 4] = struct.pack("<f", op[2])
    return bytes(b)

def describe(ops):
    out = []
    for op in ops:
        k = op[0]
        if k == "xor": out.append(f"byte {op[1]} ^= 0x{op[2]:02x}")
        elif k == "byte": out.append(f"byte {op[1]} = 0x{op[2]:02x}")
        elif k == "truncate": out.append(f"truncated to {op[1]} bytes")
        elif k == "append": out.append(f"{len(op[1])} bytes appended")
        elif k == "int32": out.append(f"int32 header[{op[1]}] = {op[2]}")
        elif k == "int64": out.append(f"int64 header[{op[1]}..{op[1] + 1}] = {op[2]}")
        elif k == "hfloat": out.append(f"float header[{op[1]}] = {op[2]}")
        elif k == "token": out.append(f"token {op[1]} = {op[2]}")
        elif k == "float": out.append(f"float payload[{op[1]}] (byte {H + 4 * op[1]}) = {op[2]}")
    return "; ".join(out)

def still_nonfinite(fmt, ops):  # does the mutant, as written, hold a non-finite float?
    if fmt == "shard": return False
    b = apply(seeds[fmt], ops)
    for op in ops:
        if op[0] == "float" and not math.isfinite(op[2]) and H + 4 * op[1] + 4 <= len(b) and \
                not math.isfinite(struct.unpack_from("<f", b, H + 4 * op[1])[0]): return True
        if op[0] == "hfloat" and not math.isfinite(op[2]) and 4 * op[1] + 4 <= len(b) and \
                not math.isfinite(struct.unpack_from("<f", b, 4 * op[1])[0]): return True
    return False

# ---- the command for each format; the mutant's file or folder is `path`
def command(fmt, n, path, out):
    if fmt == "shard":  # the two programs in turn: both read shards with common/dataloader.h
        if n % 2 == 0: return [LLAMA, "--train", path] + LLAMA_SHAPE + COMMON + ["--out", out]
        return [GPT2, "--train", path] + GPT2_SHAPE + COMMON + ["--out", out]
    # with a checkpoint the architecture (and --seq-len) comes from the header: no shape flags
    if fmt == "llama_model": return [LLAMA, "--train", LLAMA_SHARD, "--init-from", path] + COMMON + ["--out", out]
    if fmt == "gpt2_model": return [GPT2, "--train", GPT2_SHARD, "--init-from", path] + COMMON + ["--out", out]
    if fmt == "llama_state":
        return [LLAMA, "--train", LLAMA_SHARD, "--resume", path] + COMMON[:2] + ["--steps", "3"] + COMMON[4:] + ["--out", out]
    return [GPT2, "--train", GPT2_SHARD, "--resume", path] + COMMON[:2] + ["--steps", "3"] + COMMON[4:] + ["--out", out]

jobs = []  # (format, index, ops, nonfinite)
for fmt in FORMATS:
    for i in range(-1, N):  # -1: the unmutated file, which must be accepted
        ops, nf = ([], False) if i < 0 else draw(fmt, seed_of(fmt, i))
        jobs.append((fmt, i, ops, nf))

def run(job):
    fmt, i, ops, nf = job
    d = f"{TMP}/{fmt}{i}"
    os.mkdir(d)
    seed = seeds[seed_of(fmt, i)]
    data = apply(seed, ops)
    if fmt.endswith("_state"):  # a copy of the run folder, its state.bin mutated
        run_dir = f"{S}/{fmt.split('_')[0]}_run"
        path = f"{d}/run"
        os.mkdir(path)
        shutil.copy(f"{run_dir}/model.bin", f"{path}/model.bin")
        open(f"{path}/state.bin", "wb").write(data)
    else:
        path = f"{d}/mutant.bin"
        open(path, "wb").write(data)
    argv = command(fmt, i, path, f"{d}/out")
    t = time.time()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=TIMEOUT)
        rc, err = p.returncode, p.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        rc, err = None, f"still running after {TIMEOUT} s"
    dt = time.time() - t
    lines = err.splitlines()
    if rc is None: cls = "hang"
    elif rc in (98, 99) or "Sanitizer" in err or "runtime error" in err: cls = "sanitizer"
    elif rc < 0: cls = "crash"
    elif rc == 0: cls = "silent corrupt" if nf and still_nonfinite(fmt, ops) else "accepted"
    elif rc in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "): cls = "clean error"
    else: cls = "other"
    bad = cls in ("crash", "sanitizer", "hang", "other") or (i < 0 and cls != "accepted") or \
        (STRICT and cls == "silent corrupt")
    repro = None
    if bad or cls == "silent corrupt":  # keep the mutant and the command that reproduces it
        keep = f"{KEEP}/{fmt}{i}"
        shutil.rmtree(keep, ignore_errors=True)
        os.makedirs(os.path.dirname(keep) or ".", exist_ok=True)
        shutil.copytree(d, keep, ignore=shutil.ignore_patterns("out"))
        kpath = f"{keep}/{os.path.relpath(path, d)}"
        shutil.copy(LLAMA_SHARD, f"{KEEP}/llama_train.bin")  # the valid shard, which TMP loses
        kargv = [f"{KEEP}/llama_train.bin" if a == LLAMA_SHARD else a for a in command(fmt, i, kpath, f"{keep}/out")]
        repro = shlex.join(kargv)
        open(f"{keep}/repro.sh", "w").write(
            "#!/usr/bin/env bash\n# " + f"{fmt} mutant {i}: {describe(ops)}\n# {cls}: exit {rc}\n"
            "# run from the repository root\n"
            "export ASAN_OPTIONS=detect_leaks=0:exitcode=99 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=98\n"
            + repro + "\n")
    shutil.rmtree(d, ignore_errors=True)
    return job, cls, rc, lines, dt, bad, repro

if os.path.isdir(KEEP):  # the last run's mutants (only what this test writes there)
    for e in os.listdir(KEEP):
        if e == "llama_train.bin": os.remove(f"{KEEP}/{e}")
        elif any(e.startswith(f) and e[len(f):].lstrip("-").isdigit() for f in FORMATS): shutil.rmtree(f"{KEEP}/{e}")
t0 = time.time()
with ThreadPoolExecutor(2) as pool:
    results = list(pool.map(run, jobs))
elapsed = time.time() - t0

CLASSES = ["clean error", "accepted", "silent corrupt", "crash", "sanitizer", "hang", "other"]
counts = {(f, c): 0 for f in FORMATS for c in CLASSES}
bad = []
for (fmt, i, ops, nf), cls, rc, lines, dt, isbad, repro in results:
    counts[fmt, cls] += 1
    if isbad:
        bad.append(f"{fmt} mutant {i} ({describe(ops) or 'unmutated'}): {cls}, exit {rc}\n"
                   f"       reproduce: {repro}\n       stderr: " + " | ".join(lines[:4])[:500])
print(f"fuzz (seed {SEED}, {N} mutants per format + the valid file; {LLAMA}, {GPT2}; timeout {TIMEOUT} s per run)")
print(f"  {'format':12}" + "".join(f"{c:>15}" for c in CLASSES))
for f in FORMATS:
    print(f"  {f:12}" + "".join(f"{counts[f, c]:>15}" for c in CLASSES))
slowest = max(results, key=lambda r: r[4])
print(f"  {len(jobs)} runs in {elapsed:.1f} s on 2 workers (slowest {slowest[4]:.2f} s: {slowest[0][0]} mutant {slowest[0][1]})")
silent = sum(counts[f, "silent corrupt"] for f in FORMATS)
print(f"  silent accepts of a non-finite float: {silent}" +
      ("" if STRICT else " (not a failure unless FUZZ_STRICT=1)") + (f"; mutants in {KEEP}" if silent else ""))
# the mutants must also reach the readers' checks, not only the accepted path
for f in FORMATS:
    if counts[f, "clean error"] < N // 4: bad.append(f"{f}: only {counts[f, 'clean error']} clean errors")
for b in bad[:30]: print("FAIL", b)
if len(bad) > 30: print(f"FAIL ... and {len(bad) - 30} more; every mutant with repro.sh in {KEEP}")
print(f"{'FAIL' if bad else 'ok  '} trainers' readers: {len(bad)} fuzz failures")
sys.exit(1 if bad else 0)
EOF
