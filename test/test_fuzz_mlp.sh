#!/usr/bin/env bash
# A seeded fuzz test of mlp_sweep's two readers: mutants (byte flips, truncations, header
# field edits, ...) of a small valid Wine CSV and a small valid IDX pair, each run once
# under AddressSanitizer + UndefinedBehaviorSanitizer with a short timeout. Each outcome is
# a clean error (exit 1 or 2, one "error:" line), accepted (exit 0: the mutant is still a
# valid file), a crash (a signal), a sanitizer report, a hang (the timeout), or other (any
# other status or stderr). It fails on anything but the first two, and prints the counts.
# The runs do nearly no work (1 seed or 1 σ, 1 epoch, 2 hidden units, a few examples), so
# a run costs what the sanitizers' start does.
#   FUZZ_SEED (default 15) and FUZZ_N (mutants per format, default 500) change the set.
set -u
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The sanitizer build (make build/mlp_sweep_asan; make test builds it), with float-to-int
# overflow checks. FUZZ_BIN=path runs another build instead (e.g. an older one, to see what it missed).
bin=${FUZZ_BIN:-build/mlp_sweep_asan}
[ -x "$bin" ] || { echo "FAIL $bin is missing: make build/mlp_sweep_asan"; exit 1; }
# a report must be told from a clean exit 1: sanitizers exit 99/98 and print their name
export ASAN_OPTIONS=detect_leaks=0:exitcode=99 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=98

BIN="$bin" TMP="$tmp" SEED="${FUZZ_SEED:-15}" N="${FUZZ_N:-500}" python3 - <<'EOF'
import gzip, os, random, struct, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor

BIN, TMP, SEED, N = os.environ["BIN"], os.environ["TMP"], int(os.environ["SEED"]), int(os.environ["N"])
rng = random.Random(SEED)
TIMEOUT = 20  # s; a run takes about 0.1 s

# ---- the valid inputs: 10 wines of 3 features in 3 classes; 6 images of 3 x 2 and their labels
wine = "10,3,class_0,class_1,class_2\n" + "".join(
    f"{13 + i / 7:.2f},{(i * 37) % 11 / 3:.3f},{100 + 9 * i},{i % 3}\n" for i in range(10))
def idx(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload
images = idx(0x803, [6, 3, 2], bytes((17 * i) % 256 if i % 3 else 0 for i in range(36)))
labels = idx(0x801, [6], bytes([3, 1, 4, 1, 5, 9]))

NUMS = ["", " ", "  \t", "0", "-1", "1", "2", "4", "5", "9", "10", "11", "13.5", "1e300", "-1e300", "1e39", "1e-400",
        "99999999", "100000001", "2147483647", "2147483648", "4294967296", "nan", "-nan", "inf", "0x10", "1,2",
        "62", "63", "1.5", "-0", "+3", " 7 ", "3e38", "\0", "\r", "é"]
DIMS = [0, 1, 2, 3, 4, 5, 6, 7, 255, 256, 65536, 65537, 46341, 100000000, 100000001, 0x7fffffff, 0x80000000,
        0xffffffff]

def flip(b):
    b = bytearray(b)
    for _ in range(rng.choice([1, 1, 2, 4])):
        i = rng.randrange(len(b))
        b[i] = b[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(b)

def truncate(b):
    return b[:rng.randrange(len(b))]

def wine_mutant():
    kind = rng.choice(["flip", "truncate", "header", "field", "line", "comma"])
    if kind == "flip": return kind, flip(wine.encode())
    if kind == "truncate": return kind, truncate(wine.encode())
    lines = wine.split("\n")
    if kind == "header":  # rows, features or a class name
        f = lines[0].split(",")
        f[rng.randrange(len(f))] = rng.choice(NUMS + [str(rng.randrange(-5, 200))])
        lines[0] = ",".join(f)
    elif kind == "field":  # one feature or class of one row
        r = rng.randrange(1, 11)
        f = lines[r].split(",")
        f[rng.randrange(len(f))] = rng.choice(NUMS)
        lines[r] = ",".join(f)
    elif kind == "line":  # a row dropped, duplicated or blanked
        r = rng.randrange(1, 11)
        op = rng.randrange(3)
        if op == 0: del lines[r]
        elif op == 1: lines.insert(r, lines[r])
        else: lines[r] = rng.choice(["", " ", ",,,", "\r"])
    else:  # a comma added or removed
        s = "\n".join(lines)
        i = rng.randrange(len(s))
        s = s[:i] + "," + s[i:] if rng.random() < 0.5 else s.replace(",", "", 1) if "," not in s[i:] else \
            s[:i] + s[i:].replace(",", "", 1)
        return kind, s.encode()
    return kind, "\n".join(lines).encode()

def idx_mutant():
    kind = rng.choice(["flip", "flip_header", "truncate", "dim", "magic", "append", "gzip"])
    img, lbl = images, labels
    which = rng.random() < 0.7  # the images (else the labels)
    b = img if which else lbl
    nhdr = 16 if which else 8
    if kind == "flip": b = flip(b)
    elif kind == "flip_header": b = flip(b[:nhdr]) + b[nhdr:]
    elif kind == "truncate": b = truncate(b)
    elif kind == "dim":
        d = rng.randrange(4 if which else 2) if rng.random() < 0.2 else rng.randrange(1, 4 if which else 2)
        v = rng.choice(DIMS) if rng.random() < 0.8 else rng.randrange(1 << 32)
        b = b[:4 * d] + struct.pack(">I", v) + b[4 * d + 4:]
    elif kind == "magic": b = struct.pack(">I", rng.choice([0x801, 0x802, 0x803, 0x804, 0x903, 0, 0xffffffff])) + b[4:]
    elif kind == "append": b = b + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
    else:  # gzip it, perhaps corrupting or cutting the compressed stream
        b = gzip.compress(b, mtime=0)
        op = rng.randrange(3)
        if op == 1: b = flip(b)
        elif op == 2: b = truncate(b)
    if which: img = b
    else: lbl = b
    gz = kind == "gzip"
    return kind, img if which else images, lbl if not which else labels, gz, which

# ---- write every mutant, then run them on 2 workers
jobs = []  # (format, kind, argv)
def add(fmt, kind, argv): jobs.append((fmt, kind, argv, len(jobs)))
for i in range(-1, N):  # -1: the unmutated input, which must be accepted
    kind, b = ("valid", wine.encode()) if i < 0 else wine_mutant()
    p = f"{TMP}/wine{i}.csv"
    open(p, "wb").write(b)
    add("wine", kind, ["e2", "--wine", p, "--seeds", "1", "--epochs", "1", "--hidden", "2"])
for i in range(-1, N):
    if i < 0: kind, img, lbl, gz, which = "valid", images, labels, False, True
    else: kind, img, lbl, gz, which = idx_mutant()
    d = f"{TMP}/idx{i}"
    os.mkdir(d)
    open(f"{d}/t10k-images-idx3-ubyte" + (".gz" if gz and which else ""), "wb").write(img)
    open(f"{d}/t10k-labels-idx1-ubyte" + (".gz" if gz and not which else ""), "wb").write(lbl)
    add("idx", kind, ["e1", "--mnist", d, "--sigmas", "0.1", "--epochs", "1", "--hidden", "2", "--ref-inits", "none"])

def run(job):
    fmt, kind, argv, n = job
    out = f"{TMP}/out{n}"
    t = time.time()
    try:
        p = subprocess.run([BIN] + argv + ["--threads", "1", "--out", out], capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return job, "hang", f"still running after {TIMEOUT} s", time.time() - t
    err = p.stderr.decode("utf-8", "replace")
    lines = err.splitlines()
    if "Sanitizer" in err or "runtime error:" in err: cls = "sanitizer"
    elif p.returncode < 0: cls = "crash"
    elif p.returncode == 0: cls = "accepted"
    elif p.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "): cls = "clean error"
    else: cls = "other"
    return job, cls, f"exit {p.returncode}: " + " | ".join(lines[:6])[:600], time.time() - t

t0 = time.time()
with ThreadPoolExecutor(2) as pool:
    results = list(pool.map(run, jobs))
elapsed = time.time() - t0

CLASSES = ["clean error", "accepted", "crash", "sanitizer", "hang", "other"]
BAD = {"crash", "sanitizer", "hang", "other"}
counts = {(f, c): 0 for f in ("wine", "idx") for c in CLASSES}
bad = []
for (fmt, kind, argv, n), cls, msg, dt in results:
    counts[fmt, cls] += 1
    if cls in BAD or (kind == "valid" and cls != "accepted"):
        bad.append(f"{fmt} mutant {n} ({kind}, {argv[2]}): {cls}: {msg}")
print(f"fuzz (seed {SEED}, {N} mutants per format + the valid input; {BIN}, timeout {TIMEOUT} s per run)")
print(f"  {'format':8}" + "".join(f"{c:>13}" for c in CLASSES))
for f in ("wine", "idx"):
    print(f"  {f:8}" + "".join(f"{counts[f, c]:>13}" for c in CLASSES))
slowest = max(results, key=lambda r: r[3])
print(f"  {len(jobs)} runs in {elapsed:.1f} s on 2 workers (slowest {slowest[3]:.2f} s)")
# the mutants must also reach the readers' checks, not only the accepted path
for f in ("wine", "idx"):
    if counts[f, "clean error"] < N // 4: bad.append(f"{f}: only {counts[f, 'clean error']} clean errors")
    if counts[f, "accepted"] < 1: bad.append(f"{f}: no mutant (nor the valid input) was accepted")
for b in bad[:20]: print("FAIL", b)
print(f"{'FAIL' if bad else 'ok  '} mlp_sweep readers: {len(bad)} fuzz failures")
sys.exit(1 if bad else 0)
EOF
