#!/usr/bin/env bash
# mlp_sweep (E1, E2): unit tests (gradient, init, Adam, statistics) in f32 and f64,
# determinism across thread counts, a learning sanity check, and clear errors for
# bad flags and malformed IDX / CSV files (each number a file gives range-checked, with the
# file and field named). Exits non-zero on the first failure.
set -u
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL $*"; exit 1; }

./build/test_mlp || fail "unit tests (f32)"
./build/test_mlp_f64 || fail "unit tests (f64)"

# ---- determinism: every run is single-threaded, so 1 or 2 threads give the same bytes
./mlp_sweep e1 --sigmas 0.05,3 --epochs 2 --ref-inits torch_default --threads 1 --out "$tmp/a" > "$tmp/a.log" || fail "e1 run (1 thread)"
./mlp_sweep e1 --sigmas 0.05,3 --epochs 2 --ref-inits torch_default --threads 2 --out "$tmp/b" > "$tmp/b.log" || fail "e1 run (2 threads)"
for f in e1_epochs.csv e1_summary.csv e1_reference.csv; do
  cmp -s "$tmp/a/$f" "$tmp/b/$f" || fail "e1 $f differs between 1 and 2 threads"
done
echo "ok   e1 (2 sigmas + 1 reference init, 2 epochs): e1_epochs/summary/reference.csv identical with 1 and 2 threads"
./mlp_sweep e2 --seeds 4 --epochs 30 --threads 1 --out "$tmp/c" > "$tmp/c.log" || fail "e2 run (1 thread)"
./mlp_sweep e2 --seeds 4 --epochs 30 --threads 2 --out "$tmp/d" > "$tmp/d.log" || fail "e2 run (2 threads)"
for f in e2_epochs.csv e2_summary.csv; do
  cmp -s "$tmp/c/$f" "$tmp/d/$f" || fail "e2 $f differs between 1 and 2 threads"
done
echo "ok   e2 (4 seeds x 2 schemes, 30 epochs): e2_epochs/summary.csv identical with 1 and 2 threads"

# ---- it learns: sigma 0.05 reaches >= 90% test accuracy on the 2000 held-out digits in 2 epochs
acc=$(awk -F, '$1 == 0.05 { print $3 }' "$tmp/a/e1_summary.csv")
awk -v a="$acc" 'BEGIN { exit !(a >= 0.90) }' || fail "sigma 0.05: test accuracy $acc < 0.90 after 2 epochs"
echo "ok   e1 sigma 0.05, 2 epochs: test accuracy $acc (want >= 0.90)"
rows=$(($(wc -l < "$tmp/a/e1_epochs.csv") - 1))
[ "$rows" -eq 4 ] || fail "e1_epochs.csv has $rows rows, want 4 (2 sigmas x 2 epochs)"
head -1 "$tmp/a/e1_epochs.csv" | grep -qx 'sigma,epoch,train_loss,test_acc,grad_norm,diverged' || fail "e1_epochs.csv header"
head -1 "$tmp/c/e2_summary.csv" | grep -qx 'init,seed,epochs_to_target,final_val_acc,loss_std,spikes,grad_excursions' || fail "e2_summary.csv header"
echo "ok   e1_epochs.csv has 4 rows (2 sigmas x 2 epochs) and the headers docs/formats.md names"
# every E2 run on this easy task reaches 10% of its initial loss within 30 epochs, at >= 90% validation accuracy
awk -F, 'NR > 1 && ($3 == "" || $4 < 0.9) { bad++ } END { exit bad > 0 }' "$tmp/c/e2_summary.csv" || fail "e2: a run missed the target or has val acc < 0.9"
grep -q 'Mann-Whitney U' "$tmp/c.log" || fail "e2 stdout has no Mann-Whitney summary"
echo "ok   e2: all 8 runs reach the target loss in 30 epochs with val acc >= 0.9; stdout has the Mann-Whitney summary"

# ---- divergence: sigma 1e30 overflows to inf/NaN; it is recorded as diverged and the sweep goes on
./mlp_sweep e1 --sigmas 1e30,0.05 --epochs 2 --ref-inits none --out "$tmp/div" > /dev/null || fail "e1 with a diverging sigma"
grep -qx '1e+30,nan,nan,1' "$tmp/div/e1_summary.csv" || fail "sigma 1e30 not recorded as diverged: $(cat "$tmp/div/e1_summary.csv")"
awk -F, '$1 == 0.05 && $4 == 0 && $3 > 0.9 { ok = 1 } END { exit !ok }' "$tmp/div/e1_summary.csv" || fail "the sweep did not go on after a diverged sigma"
echo "ok   e1 sigma 1e30: diverged = 1 with NaN loss/accuracy; the next sigma (0.05) still trains (acc > 0.9)"

# ---- errors: bad command lines exit 2, bad files exit 1, each with a message naming the problem
expect() { # expect STATUS PATTERN command...
  local want=$1 pat=$2; shift 2
  "$@" > "$tmp/out" 2> "$tmp/err"; local got=$?
  [ "$got" -eq "$want" ] || fail "'$*' exited $got, want $want (stderr: $(cat "$tmp/err"))"
  grep -q -- "$pat" "$tmp/err" || fail "'$*': stderr lacks '$pat': $(cat "$tmp/err")"
  echo "ok   exit $want, '$pat': $*"
}
expect 2 "usage" ./mlp_sweep
expect 2 "unknown experiment" ./mlp_sweep e3
expect 2 "unknown flag --bogus" ./mlp_sweep e1 --bogus 1
expect 2 "needs a value" ./mlp_sweep e1 --epochs
expect 2 "--lr must be in" ./mlp_sweep e1 --lr -1
expect 2 "--batch must be in" ./mlp_sweep e2 --batch 0
expect 2 "not an integer" ./mlp_sweep e2 --seeds 1.5
expect 2 "comma-separated" ./mlp_sweep e1 --sigmas 0.1,abc
expect 2 "comma-separated" ./mlp_sweep e1 --sigmas 0.1,-2
expect 2 "comma-separated" ./mlp_sweep e1 --hidden 256,,128
expect 2 "whole numbers" ./mlp_sweep e1 --hidden 25.5
expect 2 "sigma-max" ./mlp_sweep e1 --sigma-min 1 --sigma-max 0.1
expect 2 "unknown init scheme" ./mlp_sweep e1 --ref-inits kaiming
expect 2 "exactly two" ./mlp_sweep e2 --schemes xavier_normal
expect 2 "must be one of" ./mlp_sweep e1 --split train
./mlp_sweep e1 --help | grep -q -- "--sigmas" || fail "e1 --help does not list --sigmas"
./mlp_sweep e2 --help | grep -q -- "--target-frac" || fail "e2 --help does not list --target-frac"
echo "ok   e1 --help and e2 --help list their flags"

# IDX files: write small ones with python3's standard library (gzip, struct)
mk() { python3 -c "
import gzip, struct, sys
path, magic, dims, payload = sys.argv[1], int(sys.argv[2], 0), [int(d) for d in sys.argv[3].split(',')], bytes(int(b) for b in sys.argv[4].split(',')) if sys.argv[4] else b''
data = struct.pack('>I', magic) + b''.join(struct.pack('>I', d) for d in dims) + payload
(gzip.open if path.endswith('.gz') else open)(path, 'wb').write(data)" "$@"; }
d="$tmp/idx"; mkdir -p "$d"
px=$(python3 -c "print(','.join(['0','255','7','0']*5))")   # 5 images of 2x2
mk "$d/t10k-images-idx3-ubyte" 0x803 5,2,2 "$px"
mk "$d/t10k-labels-idx1-ubyte.gz" 0x801 5 "1,2,3,4,5"
./mlp_sweep e1 --mnist "$d" --sigmas 0.1 --epochs 1 --ref-inits none --out "$tmp/ok" > /dev/null || fail "a valid 5-image IDX set (plain + .gz) was rejected"
echo "ok   a valid hand-made IDX pair (one plain, one .gz; 4 train / 1 test images) trains"
mk "$d/t10k-labels-idx1-ubyte.gz" 0x801 5 "1,2,3,4,10"
expect 1 "is not a digit" ./mlp_sweep e1 --mnist "$d" --ref-inits none
mk "$d/t10k-labels-idx1-ubyte.gz" 0x801 4 "1,2,3,4"
expect 1 "has 5 images but" ./mlp_sweep e1 --mnist "$d" --ref-inits none
mk "$d/t10k-labels-idx1-ubyte.gz" 0x803 5 "1,2,3,4,5"
expect 1 "not an IDX file" ./mlp_sweep e1 --mnist "$d" --ref-inits none
mk "$d/t10k-labels-idx1-ubyte.gz" 0x801 5 "1,2,3"
expect 1 "truncated" ./mlp_sweep e1 --mnist "$d" --ref-inits none
mk "$d/t10k-labels-idx1-ubyte.gz" 0x801 5 "1,2,3,4,5,6"
expect 1 "more bytes than its header" ./mlp_sweep e1 --mnist "$d" --ref-inits none
head -c 10 "$d/t10k-images-idx3-ubyte" > "$d/short" && mv "$d/short" "$d/t10k-images-idx3-ubyte"
expect 1 "truncated" ./mlp_sweep e1 --mnist "$d" --ref-inits none
head -c 300000 data/mnist/t10k-images-idx3-ubyte.gz > "$d/t10k-images-idx3-ubyte.gz" && rm "$d/t10k-images-idx3-ubyte"
expect 1 "t10k-images-idx3-ubyte.gz" ./mlp_sweep e1 --mnist "$d" --ref-inits none
expect 1 "no t10k-images" ./mlp_sweep e1 --mnist "$tmp" --ref-inits none

# Wine CSV files
w="$tmp/wine.csv"
printf '3,2,a,b\n1.0,2.0,0\n3.0,4.0,1\n' > "$w"; expect 1 "header says 3 rows but the file has 2" ./mlp_sweep e2 --wine "$w"
printf '2,2,a,b\n1.0,2.0,0\n3.0,1\n' > "$w"; expect 1 "wine.csv:3: expected 3 fields" ./mlp_sweep e2 --wine "$w"
printf '2,2,a,b\n1.0,x,0\n3.0,4.0,1\n' > "$w"; expect 1 "wine.csv:2: field 2 ('x') is not a number" ./mlp_sweep e2 --wine "$w"
printf '2,2,a,b\n1.0,2.0,0\n3.0,4.0,2\n' > "$w"; expect 1 "is not an integer in \[0, 2)" ./mlp_sweep e2 --wine "$w"
printf '' > "$w"; expect 1 "is empty" ./mlp_sweep e2 --wine "$w"
expect 1 "cannot open" ./mlp_sweep e2 --wine "$tmp/missing.csv"
printf '2,2,a,b\n1.0,2.0,0\n3.0,4.0,1\n' > "$w"; expect 1 "has 2 classes; --positive-class 2 does not exist" ./mlp_sweep e2 --positive-class 2 --wine "$w"

# ---- every number a data file gives is range-checked, with the file and field named (issue 15, item 5)
# Each of these was accepted (exit 0) or misreported before: a blank field read as 0, a header count
# truncated to an integer, an empty validation split (val_acc NaN), an int overflow of rows x columns.
E2F="--seeds 1 --epochs 1 --hidden 2 --threads 1 --out $tmp/o2"
e2w() { expect 1 "$1" ./mlp_sweep e2 --wine "$w" $E2F; } # e2w PATTERN: $w is refused with PATTERN
ok6='1,2,0\n3,4,1\n1,2,0\n3,4,1\n1,2,0\n'                 # five good rows; a sixth is added per case
printf "6,2,a,b\n${ok6}3,4, \n" > "$w"; e2w "wine.csv:7: field 3 (the class) is blank"
printf "6,2,a,b\n${ok6}3,4,\n" > "$w"; e2w "wine.csv:7: field 3 (the class) is blank"
printf "6,2,a,b\n${ok6}3,   ,1\n" > "$w"; e2w "wine.csv:7: field 2 (feature 2) is blank"
printf "6,2,a,b\n${ok6}3,4,1.5\n" > "$w"; e2w "wine.csv:7: field 3: class '1.5' is not an integer"
[ "$(wc -l < "$tmp/err")" -eq 1 ] || fail "the class '1.5' error is not one line: $(cat "$tmp/err")"
printf "6,2.5,a,b\n${ok6}3,4,1\n" > "$w"; e2w "wine.csv:1: field 2 (features) '2.5' is not a whole number"
printf "6.7,2,a,b\n${ok6}3,4,1\n" > "$w"; e2w "wine.csv:1: field 1 (rows) '6.7' is not a whole number"
printf "1e300,2,a,b\n${ok6}3,4,1\n" > "$w"; e2w "wine.csv:1: field 1 (rows) '1e300' is not a whole number"
printf "6,99,a,b\n${ok6}3,4,1\n" > "$w"; e2w "wine.csv:1: field 2 (features) is 99, outside \[1, 62\]"
printf "99999999,2,a,b\n${ok6}3,4,1\n" > "$w"; e2w "wine.csv:1: field 1 (rows) is 99999999, but .* do not fit in the"
printf "6,2,a, \n${ok6}3,4,1\n" > "$w"; e2w "wine.csv:1: field 4 (class name 2) is blank"
printf "6,2,a,b\n${ok6}3,1e39,1\n" > "$w"; e2w "wine.csv:7: field 2 ('1e39') is too large for a 4-byte real"
printf "6,2,a,b\n${ok6}3,-nan,1\n" > "$w"; e2w "wine.csv:7: field 2 ('-nan') is not finite"
printf '5,1,a,b\n3e38,0\n3e38,1\n3e38,0\n3e38,1\n-3e38,0\n' > "$w" # training: one value (sd 0); validation: 6e38 away
e2w "wine.csv: feature 1 of data row 5 (validation) is too far from the training split's mean"
printf '4,2,a,b\n1,2,0\n3,4,1\n1,2,0\n3,4,1\n' > "$w"; e2w "wine.csv has 4 wines; .* needs at least 5"
mkdir -p "$tmp/wdir"; expect 1 "wdir is a directory, not a data file" ./mlp_sweep e2 --wine "$tmp/wdir" $E2F
printf "6,2,a,b\r\n${ok6}3,4,1\r\n" > "$w"
./mlp_sweep e2 --wine "$w" $E2F > /dev/null || fail "a valid CRLF Wine file was refused"
echo "ok   a valid 6-row Wine file with CRLF line ends trains"

E1F="--sigmas 0.1 --epochs 1 --ref-inits none --hidden 2 --threads 1 --out $tmp/o1"
d="$tmp/idx2"; mkdir -p "$d"; lbl="$d/t10k-labels-idx1-ubyte"; img="$d/t10k-images-idx3-ubyte"
e1d() { expect 1 "$1" ./mlp_sweep e1 --mnist "$d" $E1F; } # e1d PATTERN: the IDX pair in $d is refused with PATTERN
mk "$lbl" 0x801 1 "1"
mk "$img" 0x803 1,46341,46341 "" # 46341^2 > INT_MAX: it overflowed int (UBSan) before
e1d "t10k-images-idx3-ubyte: header fields 2, 3 (rows, columns) give 46341 x 46341 = 2147488281 values per image"
mk "$img" 0x803 1,0,28 ""; e1d "t10k-images-idx3-ubyte: header field 2 (rows) is 0, outside \[1, 100000000\]"
mk "$lbl" 0x801 20000 ""; mk "$img" 0x803 20000,256,256 ""
e1d "t10k-images-idx3-ubyte: header field 1 (image count) 20000 x 65536 values each = 1310720000 bytes of data, more"
mk "$img" 0x803 20000,28,28 ""
e1d "t10k-images-idx3-ubyte is truncated: its header gives 15680000 bytes of data, the file has 0"
# an allocation a header asks for and memory refuses names the file and the fields (a .gz file's size says nothing)
mk "$lbl" 0x801 15000 "" && rm "$img" && mk "$img.gz" 0x803 15000,256,256 ""
expect 1 "t10k-images-idx3-ubyte.gz: out of memory allocating 983040000 x 1 bytes for the data of header fields 1-3" \
  bash -c 'ulimit -v 300000; exec "$@"' - ./mlp_sweep e1 --mnist "$d" $E1F
rm "$img.gz"; mk "$lbl" 0x801 4 "1,2,3,4"; mk "$img" 0x803 4,2,2 "$(python3 -c "print(','.join(['0,255,7,0'] * 4))")"
e1d "t10k-images-idx3-ubyte has 4 images; .* needs at least 5"
rm "$img"; mkdir "$img"; e1d "t10k-images-idx3-ubyte is a directory, not a data file"
expect 1 "is not a folder" ./mlp_sweep e1 --mnist "$w" $E1F
echo "all mlp_sweep checks passed"
