#!/usr/bin/env bash
# E1's sweep (25 sigmas x 10 epochs, 784-256-128-10, Adam, batch 128, 8000 training images)
# by mlp_sweep and by its PyTorch twin (dev/reference/mlp_e1.py), one after the other on
# the same machine, and the ratio of their wall times. The twin runs twice: as a PyTorch
# user would (one process, 2 threads) and spread like mlp_sweep (2 processes, 1 thread
# each); the ratio is taken against the faster of the two.
# Usage: dev/bench_mlp.sh PYTHON   (a python with torch; `make bench-mlp` makes one)
set -eu
cd "$(dirname "$0")/.."
py=${1:-build/venv-torch/bin/python}
out=out/bench_mlp
mkdir -p "$out"
now() { date +%s.%N; }
echo "== mlp_sweep e1 (2 threads, one run per thread)"
t0=$(now); ./mlp_sweep e1 --ref-inits none --threads 2 --out "$out/c" > "$out/c.log"; t1=$(now)
c=$(echo "$t1 - $t0" | bc -l)
grep 'runs in' "$out/c.log"
echo "== PyTorch twin, 1 process x 2 threads"
t0=$(now); "$py" dev/reference/mlp_e1.py --threads 2 --procs 1 --out "$out/torch1" > "$out/torch1.log"; t1=$(now)
p1=$(echo "$t1 - $t0" | bc -l)
grep 'runs in' "$out/torch1.log"
echo "== PyTorch twin, 2 processes x 1 thread"
t0=$(now); "$py" dev/reference/mlp_e1.py --threads 2 --procs 2 --out "$out/torch2" > "$out/torch2.log"; t1=$(now)
p2=$(echo "$t1 - $t0" | bc -l)
grep 'runs in' "$out/torch2.log"
best=$(echo "if ($p1 < $p2) $p1 else $p2" | bc -l)
echo
echo "final test accuracy per sigma (mlp_sweep | PyTorch 1 process | PyTorch 2 processes):"
paste -d, "$out/c/e1_summary.csv" "$out/torch1/e1_summary.csv" "$out/torch2/e1_summary.csv" |
  awk -F, 'NR > 1 { printf "  sigma %-9s %.4f | %.4f | %.4f\n", $1, $3, $7, $11 }'
printf "\nwall time, whole process (data loading included): mlp_sweep %.2f s, PyTorch %.2f s (1x2) / %.2f s (2x1)\n" "$c" "$p1" "$p2"
printf "mlp_sweep is %.1fx faster than the faster PyTorch variant (%.1fx vs 1 process x 2 threads)\n" \
  "$(echo "$best / $c" | bc -l)" "$(echo "$p1 / $c" | bc -l)"
