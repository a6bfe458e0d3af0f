#!/usr/bin/env bash
# train_llama as a user runs it: determinism, resume (also after a kill -9),
# thread-count independence, --steps 0, and bad input. Uses synthetic shards.
set -u
set -f  # no globbing: the --train patterns must reach the program as written
cd "$(dirname "$0")/.."
BIN=${BIN:-./train_llama}
D=build/cli
rm -rf "$D" && mkdir -p "$D"
fail=0
ok() { echo "  ok   $*"; }
bad() { echo "  FAIL $*"; fail=1; }

T=./build/test_llama
$T write-shard $D/train_000.bin 3000 64 >/dev/null
$T write-shard $D/train_001.bin 2000 64 >/dev/null
$T write-shard $D/val_000.bin 1000 64 >/dev/null
MODEL="--layers 2 --dim 32 --heads 4 --kv-heads 2 --seq-len 16 --vocab 64"
DATA="--train $D/train_*.bin --val $D/val_*.bin --batch 4 --val-every 5 --val-batches 2"
RUN="$BIN $MODEL $DATA --stats-every 2 --threads 2 --init lir --init-std 0.05 --tvr-target 0.02 --tvr-every 3"

# the columns of train.csv that do not depend on timing
trainlog() { cut -d, -f1-4 "$1/train.csv"; }
same() { # same DIR1 DIR2 WHAT
  if cmp -s "$1/model.bin" "$2/model.bin" && cmp -s "$1/state.bin" "$2/state.bin" &&
     diff <(trainlog "$1") <(trainlog "$2") >/dev/null && cmp -s "$1/weights.csv" "$2/weights.csv" &&
     cmp -s "$1/val.csv" "$2/val.csv" && cmp -s "$1/activations.csv" "$2/activations.csv"; then
    ok "$3: model.bin, state.bin, train.csv (step,loss,lr,grad_norm), val/weights/activations.csv identical"
  else
    bad "$3: outputs differ"
  fi
}

echo "determinism and resume"
$RUN --steps 10 --out $D/a >/dev/null || bad "run a failed"
$RUN --steps 10 --out $D/b >/dev/null || bad "run b failed"
same $D/a $D/b "two identical runs"
grep -q ',1$' $D/a/weights.csv && ok "TVR rescaled something in that run" || bad "TVR never fired"
$RUN --steps 10 --out $D/t1 --threads 1 >/dev/null
if cmp -s $D/a/model.bin $D/t1/model.bin && diff <(trainlog $D/a) <(trainlog $D/t1) >/dev/null; then
  ok "1 thread and 2 threads give bitwise the same model and losses"
else bad "thread count changes the result"; fi

# constant schedule: the lr does not depend on --steps, so 5 + 5 must equal 10
$RUN --schedule constant --warmup 3 --steps 10 --out $D/s10 >/dev/null
$RUN --schedule constant --warmup 3 --steps 5 --out $D/s5 >/dev/null
$RUN --schedule constant --warmup 3 --steps 10 --resume $D/s5 >/dev/null || bad "resume failed"
same $D/s10 $D/s5 "10 steps straight vs 5 + --resume 5"

# --shuffle 1: a different data order, and resuming it continues the same order
$RUN --schedule constant --warmup 3 --steps 10 --shuffle 1 --out $D/h10 >/dev/null
$RUN --schedule constant --warmup 3 --steps 5 --shuffle 1 --out $D/h5 >/dev/null
$RUN --schedule constant --warmup 3 --steps 10 --shuffle 1 --resume $D/h5 >/dev/null || bad "shuffled resume failed"
same $D/h10 $D/h5 "shuffled: 10 steps straight vs 5 + --resume 5"
if diff <(trainlog $D/s10) <(trainlog $D/h10) >/dev/null; then bad "--shuffle 1 changed nothing"
else ok "--shuffle 1 gives other losses than the file order"; fi

# kill -9 in the middle of a run that checkpoints every step; resuming must
# still reproduce the straight run bit for bit
$RUN --schedule constant --warmup 3 --steps 60 --out $D/s60 >/dev/null
$RUN --schedule constant --warmup 3 --steps 60 --checkpoint-every 1 --out $D/k >/dev/null &
pid=$!
for _ in $(seq 500); do # wait until a few steps are logged, then kill
  [ "$(cat $D/k/train.csv 2>/dev/null | wc -l)" -ge 6 ] && break
  sleep 0.01
done
if kill -9 $pid 2>/dev/null; then
  wait $pid 2>/dev/null
  killed_at=$(tail -n1 $D/k/train.csv | cut -d, -f1)
  [ "$killed_at" -lt 60 ] && ok "killed with kill -9 after step $killed_at of 60" ||
    bad "the run ended before kill -9 landed: nothing tested (make the run longer)"
else
  bad "the run ended before kill -9 landed: nothing tested (make the run longer)"
fi
$RUN --schedule constant --warmup 3 --steps 60 --resume $D/k >/dev/null || bad "resume after kill -9 failed"
same $D/s60 $D/k "60 steps straight vs killed + resumed"

$RUN --steps 0 --out $D/z >/dev/null && [ -s $D/z/model.bin ] && [ -s $D/z/state.bin ] &&
  ok "--steps 0 writes model.bin and state.bin" || bad "--steps 0"
$BIN --help | grep -q -- "--tvr-target" && ok "--help lists the flags" || bad "--help"

echo "bad input: one error line naming the culprit, exit status != 0, no crash"
$T write-shard $D/magic.bin 3000 64 1234 >/dev/null
$T write-shard $D/version.bin 3000 64 20240520 7 >/dev/null
$T write-shard $D/short.bin 20 64 >/dev/null
$T write-shard $D/big.bin 3000 200 >/dev/null
head -c 3000 $D/train_000.bin >$D/trunc.bin
head -c 5000 $D/z/model.bin >$D/z_trunc.bin
cp $D/z/model.bin $D/z_version.bin && printf '\x09' | dd of=$D/z_version.bin bs=1 seek=4 conv=notrunc 2>/dev/null
mkdir -p $D/nostate && cp $D/z/model.bin $D/nostate/

expect() { # expect WANT_STATUS PATTERN -- command...   (WANT_STATUS "nz" = any non-zero)
  local want=$1 pat=$2; shift 3
  local err rc
  err=$("$@" 2>&1 >/dev/null); rc=$?
  local lines; lines=$(printf '%s\n' "$err" | grep -c .)
  if { [ "$want" = nz ] && [ $rc -ne 0 ] || [ "$rc" = "$want" ]; } && [ $rc -lt 128 ] &&
     printf '%s' "$err" | grep -q -- "$pat" && [ "$lines" -eq 1 ]; then
    ok "exit $rc: $err"
  else
    bad "want status $want and '$pat' on one line; got status $rc: $err"
  fi
}
B="$BIN $MODEL $DATA --steps 2"
expect 2 "unknown flag --bogus" -- $B --bogus 1
expect 2 "flag --lr needs a value" -- $B --lr
expect 2 "--lr must be in" -- $B --lr -1
expect 2 "--steps: 'abc' is not an integer" -- $B --steps abc
expect 2 "--lr: 'nan' is not a number" -- $B --lr nan
expect 2 "--batch must be in" -- $B --batch 0
expect 2 "--heads 3 does not divide --dim 32" -- $B --heads 3
expect 2 "--kv-heads 3 does not divide --heads 4" -- $B --kv-heads 3
expect 2 "--init must be one of" -- $B --init xavier
expect 2 "--schedule must be one of" -- $B --schedule linear
expect 2 "unexpected argument" -- $B stray
expect 2 "exclude each other" -- $B --init-from $D/z/model.bin --resume $D/z
expect 2 "--layers 3 disagrees with the checkpoint $D/z/model.bin, which has 2" -- $BIN $DATA --init-from $D/z/model.bin --layers 3
expect 2 "--seq-len 32 exceeds the checkpoint's 16" -- $BIN --train "$D/train_*.bin" --init-from $D/z/model.bin --seq-len 32
expect nz "--train $D/nothing\*.bin: no file matches" -- $B --train "$D/nothing*.bin"
expect nz "$D/magic.bin has bad magic 1234" -- $B --train $D/magic.bin
expect nz "$D/version.bin has version 7" -- $B --train $D/version.bin
expect nz "$D/trunc.bin is truncated" -- $B --train $D/trunc.bin
expect nz "$D/short.bin has 20 tokens, fewer than one batch" -- $B --train $D/short.bin
expect nz "$D/big.bin: token .* not below the model's vocabulary size 64" -- $B --train $D/big.bin
expect nz "$D/magic.bin has bad magic" -- $B --val $D/magic.bin
expect nz "checkpoint $D/train_000.bin has bad magic" -- $BIN $DATA --init-from $D/train_000.bin
expect nz "checkpoint $D/z_version.bin has version 9" -- $BIN $DATA --init-from $D/z_version.bin
expect nz "checkpoint $D/z_trunc.bin is 5000 bytes" -- $BIN $DATA --init-from $D/z_trunc.bin
expect nz "cannot open $D/nowhere/model.bin" -- $BIN $DATA --init-from $D/nowhere/model.bin
expect nz "cannot open $D/nostate/state.bin" -- $BIN $DATA --resume $D/nostate
expect 2 "--shuffle must be in" -- $B --shuffle 2
expect 2 "--shuffle 0: the run in $D/h5 was started with --shuffle 1" -- $RUN --steps 12 --resume $D/h5
expect 2 "--seed 7 differs from the run in $D/h5 (1337)" -- $RUN --steps 12 --shuffle 1 --seed 7 --resume $D/h5
expect nz "cannot create output directory $D/train_000.bin/out" -- $B --out $D/train_000.bin/out

# --out creates missing parents, as mkdir -p (a fresh clone has no out/)
rm -rf "$D/new"
$RUN --steps 1 --out "$D/new/a/b" > /dev/null 2>&1 && [ -f "$D/new/a/b/model.bin" ] &&
  ok "--out $D/new/a/b: missing parents created, model.bin written" || bad "--out with missing parents"


echo "state.bin records the run: --resume holds to it"
rm -rf $D/r5 && $RUN --schedule constant --warmup 3 --steps 5 --out $D/r5 >/dev/null
expect 2 "--lr 0.5 differs from the run in $D/r5 (0.003)" -- $RUN --schedule constant --warmup 3 --steps 10 --lr 0.5 --resume $D/r5 --out $D/chg
expect 2 "--batch 2 differs from the run in $D/r5 (4)" -- $RUN --schedule constant --warmup 3 --steps 10 --batch 2 --resume $D/r5 --out $D/chg
rm -rf $D/chg && $RUN --schedule constant --warmup 3 --steps 10 --lr 0.5 --allow-resume-change 1 --resume $D/r5 --out $D/chg \
  >/dev/null && awk -F, '$1 == 6 {found = 1; ok = ($3 == 0.5)} END {exit !(found && ok)}' $D/chg/train.csv &&
  ok "--allow-resume-change 1: the resumed run's step 6 has the new --lr 0.5" || bad "--allow-resume-change 1 failed"
# the flags left out come from state.bin (the model's shape from model.bin): the same run as the straight one
rm -rf $D/bare && cp -r $D/r5 $D/bare && $BIN --train "$D/train_*.bin" --val "$D/val_*.bin" --val-every 5 \
  --val-batches 2 --stats-every 2 --threads 2 --init lir --init-std 0.05 --tvr-target 0.02 --tvr-every 3 \
  --steps 10 --resume $D/bare >/dev/null && same $D/s10 $D/bare "--resume without --batch --seq-len --lr --warmup --schedule"
# another shape with the same parameter count (4 heads / 4 kv-heads against 4 / 2 has more; use layers x width)
rm -rf $D/shape && $BIN --layers 2 --dim 32 --heads 4 --kv-heads 4 --seq-len 16 --vocab 64 $DATA --steps 1 --out $D/shape >/dev/null
rm -rf $D/mix && mkdir -p $D/mix && cp $D/shape/model.bin $D/mix/ && cp $D/r5/state.bin $D/mix/
expect 1 "state file $D/mix/state.bin\( holds\| was written for another model\)" -- $BIN $DATA --steps 10 --resume $D/mix
cp $D/r5/state.bin $D/badstep.bin && printf '\xff\xff\xff\x7f' | dd of=$D/badstep.bin bs=1 seek=8 conv=notrunc 2>/dev/null
rm -rf $D/bs && cp -r $D/r5 $D/bs && cp $D/badstep.bin $D/bs/state.bin
expect 1 "state file $D/bs/state.bin: step 2147483647 is outside" -- $RUN --steps 10 --resume $D/bs
printf '\xff\xff\xff\xff' | dd of=$D/bs/state.bin bs=1 seek=8 conv=notrunc 2>/dev/null
expect 1 "state file $D/bs/state.bin: step -1 is outside" -- $RUN --steps 10 --resume $D/bs

# payloads: a NaN in state.bin's parameters or in model.bin, and a model.bin with bytes appended
poke_nan() { python3 -c "import struct, sys; f = open(sys.argv[1], 'r+b'); f.seek(1024 + 4 * int(sys.argv[2])); f.write(struct.pack('f', float('nan')))" "$@"; }
rm -rf $D/pn && cp -r $D/r5 $D/pn && poke_nan $D/pn/state.bin 10
expect 1 "$D/pn/state.bin: 1 of its 28832 parameters are not finite (the first at index 10)" -- $RUN --steps 10 --resume $D/pn
rm -rf $D/pm && cp -r $D/r5 $D/pm && poke_nan $D/pm/state.bin $((28832 + 7))
expect 1 "$D/pm/state.bin: 1 of its 28832 AdamW's m are not finite (the first at index 7)" -- $RUN --steps 10 --resume $D/pm
rm -rf $D/pa && cp -r $D/r5 $D/pa && printf 'xxxx' >> $D/pa/model.bin
expect 1 "checkpoint $D/pa/model.bin is 116356 bytes; its header describes 28832 parameters" -- $RUN --steps 10 --resume $D/pa
cp $D/r5/model.bin $D/nanmodel.bin && poke_nan $D/nanmodel.bin 3
expect 1 "$D/nanmodel.bin: 1 of its 28832 parameters are not finite (the first at index 3)" -- $BIN $DATA --init-from $D/nanmodel.bin --steps 1 --out $D/nm

poke_int() { python3 -c "import struct, sys; f = open(sys.argv[1], 'r+b'); f.seek(4 * int(sys.argv[2])); f.write(struct.pack('i', int(sys.argv[3])))" "$@"; }
cp $D/r5/model.bin $D/huge.bin && poke_int $D/huge.bin 7 16777216
expect 1 "checkpoint $D/huge.bin: dim 16777216 is outside \[1, 65536\]" -- $BIN $DATA --init-from $D/huge.bin --steps 1 --out $D/hg
cp $D/r5/model.bin $D/theta.bin && python3 -c "import struct, sys; f = open(sys.argv[1], 'r+b'); f.seek(68); f.write(struct.pack('f', float('inf')))" $D/theta.bin
expect 1 "checkpoint $D/theta.bin: rope theta inf is outside \[1, 1e9\]" -- $BIN $DATA --init-from $D/theta.bin --steps 1 --out $D/th

mkdir -p $D/adir.bin
expect 1 "data shard $D/adir.bin is not a file" -- $BIN $MODEL --train $D/adir.bin --val "" --steps 1 --out $D/ad
rm -rf $D/sp && cp -r $D/r5 $D/sp && poke_int $D/sp/state.bin 3 9
expect 1 "$D/sp/state.bin: its data position names shard 9, but --train matches 2" -- $RUN --steps 10 --resume $D/sp
# a write that fails (here the file-size limit, as a full disk would) leaves no model.bin.tmp behind
rm -rf $D/full && (trap '' XFSZ; ulimit -f 60; $RUN --steps 1 --out $D/full > /dev/null 2> $D/full.err); rc=$?
[ $rc = 1 ] && grep -q "cannot write $D/full/model.bin.tmp" $D/full.err && [ ! -e $D/full/model.bin.tmp ] &&
  ok "a failed checkpoint write: one error line, no model.bin.tmp left" || bad "failed write: exit $rc, $(cat $D/full.err)"

expect 2 "this configuration needs about [0-9.]* GiB, more than the" -- $BIN --layers 64 --dim 16384 --heads 16 --kv-heads 16 --vocab 64 $DATA --steps 1 --out $D/mem

echo "--eval-only 1 and --quant (fake-quantized evaluation)"
EVAL="$BIN --init-from $D/r5/model.bin --eval-only 1 --val $D/val_*.bin --batch 4 --val-batches 2 --threads 2"
rm -rf $D/ev && $EVAL --out $D/ev > $D/ev.out 2>&1
want=$(tail -n1 $D/r5/val.csv | cut -d, -f2) got=$(tail -n1 $D/ev/eval.csv 2>/dev/null | cut -d, -f7)
[ -n "$want" ] && [ "$want" = "$got" ] && grep -q "^eval: val loss" $D/ev.out &&
  ok "--eval-only 1: val loss $got = the run's last val.csv row (the same batches), in eval.csv" ||
  bad "--eval-only 1: '$got' against val.csv's '$want': $(tail -2 $D/ev.out)"
for q in w8a8 w8a8-token w8 w4g128 a8 a8-token a4 a4-token w16a16; do $EVAL --quant $q --out $D/ev > /dev/null 2>&1 || bad "--quant $q failed"; done
n=$(awk -F, 'NR > 1 && $7 + 0 == $7 {n++} END {print n + 0}' $D/ev/eval.csv)
nq=$(awk -F, -v w="$want" 'NR > 1 && $2 != "none" && $7 != w {n++} END {print n + 0}' $D/ev/eval.csv)
[ "$n" = 10 ] && [ "$nq" = 9 ] && ok "eval.csv: one header and 10 rows (none and 9 settings), each quantized loss another number" ||
  bad "eval.csv after 10 evaluations: $n rows, $nq of them quantized and different: $(cat $D/ev/eval.csv)"
ni=$(awk -F, 'NR > 1 && $2 == "none" && $7 >= 1 && $8 >= 1 {n++} END {print n + 0}' $D/ev/inputs.csv)
[ "$(grep -c . $D/ev/inputs.csv)" = 91 ] && [ "$ni" = 9 ] &&
  ok "inputs.csv: 9 rows an evaluation (4 inputs x 2 layers + lnf), max/rms >= 1 per tensor and per token" ||
  bad "inputs.csv: $(grep -c . $D/ev/inputs.csv) lines, $ni good rows of --quant none"
expect 2 "--quant must be one of" -- $EVAL --quant int8 --out $D/ev
expect 2 "--eval-only 1 needs a model: --init-from MODEL.bin" -- $BIN --eval-only 1 --val "$D/val_*.bin"
expect 2 "--eval-only 1 needs validation shards: --val GLOB" -- $EVAL --val ""
expect 2 "--eval-only must be in" -- $EVAL --eval-only 2
expect 2 "--quant w8a8 needs --eval-only 1" -- $B --quant w8a8

echo "non-finite numbers: the run stops, the last good checkpoint stays"
# --eps 0 divides 0 by 0 in AdamW: step 1's update makes NaN weights, step 2's loss is NaN
NAN="$BIN $MODEL $DATA --eps 0 --val-every 0"
rm -rf $D/nan && expect 1 "step 2: the loss is -*nan and the gradient norm -*nan; stopped before the update, no checkpoint was written" -- $NAN --steps 4 --out $D/nan
[ ! -e $D/nan/model.bin ] && ok "no model.bin written by the NaN run" || bad "the NaN run wrote model.bin"
rm -rf $D/good && $BIN $MODEL $DATA --val-every 0 --steps 2 --out $D/good > /dev/null && cp $D/good/model.bin $D/good.bin
expect 1 "parameters are not finite .*; the checkpoint in $D/good was not overwritten" -- \
  $NAN --steps 4 --checkpoint-every 1 --out $D/good
cmp -s $D/good/model.bin $D/good.bin && ok "the good run's checkpoint intact after a NaN update in the same --out" ||
  bad "the NaN run overwrote the checkpoint"
rm -rf $D/skip && $NAN --steps 4 --skip-nonfinite 1 --out $D/skip > $D/skip.out 2>&1
grep -q '^step 3: loss -*nan, gradient norm -*nan: not finite, update skipped (2 so far)' $D/skip.out &&
  grep -q 'parameters are not finite' $D/skip.out && [ "$(grep -c . $D/skip/train.csv)" = 5 ] &&
  ok "--skip-nonfinite 1: steps 2-4 skipped and counted, their train.csv rows kept, the final checkpoint refused" ||
  bad "--skip-nonfinite 1: $(tail -2 $D/skip.out)"
[ $fail -eq 0 ] && echo "all command-line checks passed"
exit $fail
