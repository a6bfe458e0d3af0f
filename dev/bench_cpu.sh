#!/usr/bin/env bash
# dev/bench_cpu.sh (`make bench-cpu`): the CPU speed race. The same LLaMA configs are
# trained by ./train_llama and by current PyTorch from pip (dev/reference/llama.py --bench 1:
# F.scaled_dot_product_attention, F.rms_norm, foreach AdamW), 2 threads each, one after the
# other in this one run, on the same shards: fp32 against fp32, and train_llama --precision bf16
# against torch.autocast("cpu", bfloat16). Prints tokens/s of each and the ratios.
# Timings skip the first step (allocation, caches) on both sides.
#
# Usage: dev/bench_cpu.sh [tiny|mid|all]   (default all; STEPS_TINY, STEPS_MID, REPEATS override
# the step counts and the number of rounds)
# The machine is shared and noisy: compare the two numbers of one run, not numbers across runs.
set -eu
cd "$(dirname "$0")/.."
which="${1:-all}"
THREADS=2
REPEATS=${REPEATS:-2}
# Both sides run on GNU OpenMP (pip's torch ships libgomp). Its default busy-waiting at
# barriers costs dearly on a shared machine: with other programs running, perf showed 61%
# of train_llama's cycles spinning in libgomp, and tokens/s rose 2.6x (C) and 1.6x (PyTorch)
# with passive waiting. Passive for both by default; OMP_WAIT_POLICY=active on a quiet machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
VENV=.venv-torch
TRAIN='data/tinyshakespeare/llama2_train_*.bin'

# current PyTorch (Debian's 1.13 is the numerical oracle, too old to race against)
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, numpy" 2>/dev/null; then
  echo "installing current PyTorch into $VENV (pip install torch numpy; a few GB, about a minute)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch numpy
fi
[ -x ./train_llama ] || make train_llama
ls $TRAIN > /dev/null 2>&1 || { echo "no shards match $TRAIN (see data/README.md)"; exit 1; }

# name | model flags | batch flags | steps
CONFIGS=(
  "tiny|--layers 4 --dim 128 --heads 4 --kv-heads 2 --ffn 352 --vocab 32000|--batch 8 --seq-len 128|${STEPS_TINY:-21}"
  "mid|--layers 8 --dim 512 --heads 8 --kv-heads 4 --ffn 1408 --vocab 32000|--batch 8 --seq-len 256|${STEPS_MID:-6}"
)
OUT=build/bench_cpu
mkdir -p "$OUT"
rows=()
for cfg in "${CONFIGS[@]}"; do
  IFS='|' read -r name model batch steps <<< "$cfg"
  [ "$which" = all ] || [ "$which" = "$name" ] || continue
  common="$model $batch --steps $steps --lr 1e-3 --warmup 0 --init plain --init-std 0.02"
  echo "=== $name: $model $batch, $steps steps (first one not timed), $THREADS threads, $REPEATS rounds"
  tokens=$(echo "$batch" | awk '{ print $2 * $4 }')
  c_tps=0; t_tps=0; cb_tps=0; tb_tps=0
  # C and PyTorch take turns, REPEATS rounds; each side keeps its best round, so a burst of
  # load from other programs on this shared machine hurts one round, not the result.
  # Each round: fp32 against PyTorch fp32, then --precision bf16 against torch.autocast bf16.
  for round in $(seq "$REPEATS"); do
    for prec in fp32 bf16; do
      # C: tokens/s over steps 2..N from its train.csv (step,loss,lr,grad_norm,ms,tokens_per_s)
      OMP_NUM_THREADS=$THREADS ./train_llama --train "$TRAIN" --val '' $common --threads $THREADS \
        --stats-every 0 --val-every 0 --precision $prec --out "$OUT/$name.$prec" > "$OUT/$name.$prec.c.log"
      c=$(awk -F, -v tok="$tokens" 'NR > 2 { n += 1; ms += $5 } END { printf "%.1f", n * tok / (ms / 1000) }' \
        "$OUT/$name.$prec/train.csv")
      ac=off; [ $prec = bf16 ] && ac=bf16
      OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$VENV/bin/python" dev/reference/llama.py --train "$TRAIN" \
        $common --threads $THREADS --bench 1 --quiet 1 --autocast $ac > "$OUT/$name.$prec.torch.log"
      t=$(awk '/pytorch tokens\/s:/ { print $3 }' "$OUT/$name.$prec.torch.log")
      echo "round $round, $prec: train_llama.c $c tokens/s ($(grep '^matmuls:' "$OUT/$name.$prec.c.log" | cut -c 10-)), PyTorch ${t} tokens/s (autocast $ac)"
      if [ $prec = fp32 ]; then
        c_tps=$(awk -v a="$c" -v b="$c_tps" 'BEGIN { print (a > b ? a : b) }')
        t_tps=$(awk -v a="$t" -v b="$t_tps" 'BEGIN { print (a > b ? a : b) }')
      else
        cb_tps=$(awk -v a="$c" -v b="$cb_tps" 'BEGIN { print (a > b ? a : b) }')
        tb_tps=$(awk -v a="$t" -v b="$tb_tps" 'BEGIN { print (a > b ? a : b) }')
      fi
    done
  done
  # training FLOPs per token (docs/perf.md): 6*N + 6*L*C*T, N = parameters in matmuls (lm_head included)
  fpt=$(echo "$model $batch" | awk '{ for (i = 1; i < NF; i++) f[$i] = $(i + 1)
    L = f["--layers"]; C = f["--dim"]; H = f["--heads"]; KV = f["--kv-heads"]; F = f["--ffn"]; V = f["--vocab"]; T = f["--seq-len"]
    N = L * (2 * C * C + 2 * C * KV * C / H + 3 * C * F) + V * C; print 6 * N + 6 * L * C * T }')
  rows+=("$name|$c_tps|$t_tps|$cb_tps|$tb_tps|$fpt")
done

tv=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
echo
echo "| config | C fp32 tok/s (GFLOP/s) | PyTorch $tv fp32 | C / PyTorch fp32 | C bf16 tok/s (GFLOP/s) | PyTorch autocast bf16 | C bf16 / autocast | C bf16 / PyTorch fp32 |"
echo "|---|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do
  IFS='|' read -r name c t cb tb fpt <<< "$r"
  awk -v n="$name" -v c="$c" -v t="$t" -v cb="$cb" -v tb="$tb" -v f="$fpt" 'BEGIN {
    printf "| %s | %.0f (%.0f) | %.0f (%.0f) | %.2fx | %.0f (%.0f) | %.0f (%.0f) | %.2fx | %.2fx |\n",
      n, c, c * f / 1e9, t, t * f / 1e9, c / t, cb, cb * f / 1e9, tb, tb * f / 1e9, cb / tb, cb / t }'
done
echo "($THREADS threads each, OMP_WAIT_POLICY=$OMP_WAIT_POLICY, best of $REPEATS alternating rounds, $(nproc) cores on this machine, load average: $(cut -d' ' -f1-3 /proc/loadavg))"
