#!/usr/bin/env bash
# train_llama --precision bf16 as a user runs it: the loss curve beside fp32's, determinism
# (twice, and 1 thread = 2), resume, every bf16 kernel this CPU has against the others, and
# bad input. Tolerances and why: docs/perf.md, "bf16 on the CPU".
set -u
set -f # no globbing: the --train patterns reach the program as written
cd "$(dirname "$0")/.."
D=build/bf16
rm -rf "$D" && mkdir -p "$D"
fail=0
ok() { echo "  ok   $*"; }
bad() { echo "  FAIL $*"; fail=1; }

echo "the curve: make run's model and data, 60 steps, fp32 and bf16 from the same init"
CURVE="--train data/tinyshakespeare/llama2_train_*.bin --val data/tinyshakespeare/llama2_val_*.bin
  --layers 4 --dim 128 --heads 4 --kv-heads 2 --ffn 352 --seq-len 128 --vocab 32000 --batch 8 --steps 60
  --lr 3e-3 --warmup 20 --init lir --init-std 0.006 --tvr-target 0.01 --tvr-every 20 --val-every 60
  --val-batches 5 --stats-every 0 --threads 2"
./train_llama $CURVE --out $D/fp32 > $D/fp32.log || bad "fp32 curve run failed"
./train_llama $CURVE --out $D/bf16 --precision bf16 > $D/bf16.log || bad "bf16 curve run failed"
grep -q '^matmuls: bf16' $D/bf16.log && ok "the bf16 run says so: $(grep '^matmuls:' $D/bf16.log)" ||
  bad "the bf16 run does not say 'matmuls: bf16'"
# largest relative train-loss difference over the 60 steps, and the final val losses
read -r worst first_diff <<< "$(paste -d, $D/fp32/train.csv $D/bf16/train.csv | awk -F, 'NR > 1 {
  d = $2 - $8; if (d < 0) d = -d; r = d / $2; if (r > m) m = r; if (!f && r > 0) f = $1 }
  END { printf "%.6f %d\n", m, f }')"
v32=$(tail -1 $D/fp32/val.csv | cut -d, -f2)
v16=$(tail -1 $D/bf16/val.csv | cut -d, -f2)
dv=$(awk -v a="$v32" -v b="$v16" 'BEGIN { d = (b - a) / a; printf "%.6f", d < 0 ? -d : d }')
echo "  (train loss: largest relative difference $worst, first at step $first_diff; val loss fp32 $v32, bf16 $v16)"
awk -v w="$worst" 'BEGIN { exit !(w > 1e-5) }' && ok "bf16 is not fp32: the curves part (largest rel. diff $worst > 1e-5)" ||
  bad "bf16 and fp32 curves agree to $worst: the inputs were not rounded"
awk -v w="$worst" 'BEGIN { exit !(w <= 0.03) }' && ok "train loss within 3% of fp32 at every step ($worst)" ||
  bad "train loss differs from fp32 by $worst (> 3%)"
awk -v d="$dv" 'BEGIN { exit !(d <= 0.01) }' && ok "val loss after 60 steps within 1% of fp32 ($dv)" ||
  bad "val loss differs from fp32 by $dv (> 1%)"

echo "determinism and resume in bf16 (synthetic shards)"
T=./build/test_llama
$T write-shard $D/train_000.bin 3000 64 > /dev/null
$T write-shard $D/val_000.bin 1000 64 > /dev/null
RUN="./train_llama --layers 2 --dim 32 --heads 4 --kv-heads 2 --seq-len 16 --vocab 64 --train $D/train_*.bin
  --val $D/val_*.bin --batch 4 --val-every 5 --val-batches 2 --stats-every 2 --init lir --init-std 0.05
  --tvr-target 0.02 --tvr-every 3 --precision bf16"
$RUN --steps 10 --threads 2 --out $D/a > /dev/null || bad "bf16 run a failed"
$RUN --steps 10 --threads 2 --out $D/b > /dev/null || bad "bf16 run b failed"
$RUN --steps 10 --threads 1 --out $D/t1 > /dev/null || bad "bf16 run with 1 thread failed"
cmp -s $D/a/model.bin $D/b/model.bin && ok "two bf16 runs: model.bin identical" || bad "two bf16 runs differ"
cmp -s $D/a/model.bin $D/t1/model.bin && ok "bf16, 1 thread = 2 threads: model.bin identical" ||
  bad "bf16 depends on --threads"
$RUN --steps 5 --threads 2 --out $D/r5 > /dev/null
$RUN --steps 10 --threads 2 --resume $D/r5 > /dev/null || bad "bf16 resume failed"
cmp -s $D/a/model.bin $D/r5/model.bin && ok "bf16: 5 steps + resume 5 = 10 steps, model.bin identical" ||
  bad "bf16 resume differs from the uninterrupted run"
${RUN/--precision bf16/} --steps 10 --threads 2 --out $D/f > /dev/null || bad "the fp32 run failed"
[ -s $D/f/model.bin ] && ! cmp -s $D/a/model.bin $D/f/model.bin && ok "the bf16 model.bin differs from the fp32 one" ||
  bad "the bf16 run's model.bin equals fp32's (or the fp32 run wrote none)"

echo "every bf16 kernel this CPU has (RESCALE_BF16_KERNEL): the same curve up to summation order"
kernels="ref"
grep -q avx512_bf16 /proc/cpuinfo && kernels="$kernels avx512"
grep -q amx_bf16 /proc/cpuinfo && kernels="$kernels amx"
for k in $kernels; do
  if RESCALE_BF16_KERNEL=$k $RUN --steps 10 --threads 2 --out $D/k_$k > $D/k_$k.log 2>&1; then
    # relative difference of every train loss against the ref kernel's
    w=$(paste -d, $D/k_ref/train.csv $D/k_$k/train.csv | awk -F, 'NR > 1 { d = ($2 - $8) / $2; if (d < 0) d = -d;
      if (d > m) m = d } END { printf "%.2e", m }')
    # fp32 sums of the same bf16 products in another order: ~1e-6 relative per step, and
    # 10 steps of training amplify it; 1e-3 is far below what a wrong product would do
    awk -v w="$w" 'BEGIN { exit !(w <= 1e-3) }' && ok "$k: train losses within $w of ref's (tol 1e-3)" ||
      bad "$k: train losses differ from ref's by $w"
  else
    bad "RESCALE_BF16_KERNEL=$k failed: $(tail -1 $D/k_$k.log)"
  fi
done

echo "bad input"
out=$(./train_llama --precision fp16 --steps 1 2>&1); rc=$?
[ $rc = 2 ] && echo "$out" | grep -q -- "--precision" && ok "--precision fp16: exit 2, names the flag" ||
  bad "--precision fp16: rc $rc, '$out'"
out=$(RESCALE_BF16_KERNEL=tpu $RUN --steps 1 --out $D/x 2>&1); rc=$?
[ $rc != 0 ] && echo "$out" | grep -q "RESCALE_BF16_KERNEL=tpu" && ok "RESCALE_BF16_KERNEL=tpu: exit $rc, names it" ||
  bad "RESCALE_BF16_KERNEL=tpu: rc $rc, '$out'"
exit $fail
