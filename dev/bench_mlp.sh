#!/usr/bin/env bash
# E1's sweep (25 sigmas x 10 epochs, 784-256-128-10, Adam lr 1e-3, batch 128, 8000 training
# images) by mlp_sweep and by its PyTorch twin (dev/reference/mlp_e1.py), one after the other
# on the same machine, and the ratio of their times. The twin runs twice: as a PyTorch user
# would (one process, 2 threads) and spread like mlp_sweep (2 processes, 1 thread each); the
# ratio is taken against the faster of the two. Wall time is what a user waits; CPU time
# (user + system) is printed too, as it is less disturbed by other jobs on a shared machine.
# Usage: dev/bench_mlp.sh PYTHON [SIGMAS]   (PYTHON: one with torch, `make bench-mlp` makes one;
#        SIGMAS: a comma-separated subset for a quick check, default all 25)
set -eu
cd "$(dirname "$0")/.."
py=${1:-build/venv-torch/bin/python}
sig=${2:-}
out=out/bench_mlp
mkdir -p "$out"
sflag=(); [ -n "$sig" ] && sflag=(--sigmas "$sig")
timed() { # timed NAME command...: runs it, leaves "wall cpu" in $out/NAME.time
  local name=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$out/$name.time.raw" "$@" > "$out/$name.log"
  awk '{ printf "%.2f %.2f\n", $1, $2 + $3 }' "$out/$name.time.raw" > "$out/$name.time"
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== mlp_sweep e1 (2 threads, one run per thread)"
timed c ./mlp_sweep e1 --ref-inits none --threads 2 --out "$out/c" "${sflag[@]}"
echo "== PyTorch twin, 1 process x 2 threads"
timed torch1 "$py" dev/reference/mlp_e1.py --threads 2 --procs 1 --out "$out/torch1" "${sflag[@]}"
echo "== PyTorch twin, 2 processes x 1 thread"
timed torch2 "$py" dev/reference/mlp_e1.py --threads 2 --procs 2 --out "$out/torch2" "${sflag[@]}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "final test accuracy per sigma (mlp_sweep | PyTorch 1 process | PyTorch 2 processes):"
paste -d, "$out/c/e1_summary.csv" "$out/torch1/e1_summary.csv" "$out/torch2/e1_summary.csv" |
  awk -F, 'NR > 1 { printf "  sigma %-9s %.4f | %.4f | %.4f\n", $1, $3, $7, $11 }'
read cw cc < "$out/c.time"; read w1 c1 < "$out/torch1.time"; read w2 c2 < "$out/torch2.time"
echo
printf "%-34s %10s %10s\n" "whole process, data loading included" "wall s" "cpu s"
printf "%-34s %10s %10s\n" "mlp_sweep (2 threads)" "$cw" "$cc" "PyTorch, 1 process x 2 threads" "$w1" "$c1" \
  "PyTorch, 2 processes x 1 thread" "$w2" "$c2"
awk -v cw="$cw" -v cc="$cc" -v w1="$w1" -v c1="$c1" -v w2="$w2" -v c2="$c2" 'BEGIN {
  bw = w1 < w2 ? w1 : w2; bc = c1 < c2 ? c1 : c2
  printf "\nmlp_sweep vs the faster PyTorch variant: %.1fx less wall time, %.1fx less CPU time\n", bw / cw, bc / cc }'
