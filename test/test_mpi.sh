#!/usr/bin/env bash
# Data parallelism over MPI (docs/parallel.md), for train_llama_mpi and train_gpt2_mpi on 2
# ranks: 2 ranks x --batch 4 equal 1 rank x --grad-accum 2 x --batch 4 bit for bit over 10
# steps with clipping and TVR (model.bin, state.bin, every log); --grad-accum 2 x 4 against
# --batch 8 to a stated tolerance (a different summation of the same rows); 2 ranks resumed
# from a 1-rank checkpoint and back equal the straight run; bad set-ups end every rank with
# one message. Skips where MPI is absent (.ci/run installs it). Tiny models, about 20 s.
set -u
set -f # the --train patterns reach the programs as written
cd "$(dirname "$0")/.."
fail=0
ok() { echo "  ok   $*"; }
bad() { echo "  FAIL $*"; fail=1; }
if ! command -v mpirun >/dev/null; then echo "  skip: no mpirun (apt-get install openmpi-bin libopenmpi-dev)"; exit 0; fi
if [ ! -x ./train_llama_mpi ] || [ ! -x ./train_gpt2_mpi ]; then
  if command -v mpicc >/dev/null; then bad "train_llama_mpi / train_gpt2_mpi not built (make mpi)"; exit 1; fi
  echo "  skip: mpirun but no mpicc, so no train_*_mpi (apt-get install libopenmpi-dev)"; exit 0
fi
# Debian's OpenMPI as root (CI) needs these; --oversubscribe: 2 ranks may exceed the cores
# mpirun counts; --bind-to none: one core each would serialise them; --quiet: no banner
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPI="timeout 120 mpirun --quiet --oversubscribe --bind-to none"
D=build/mpi_test
rm -rf "$D" && mkdir -p "$D"
T=./build/test_llama
$T write-shard $D/train_000.bin 3000 64 >/dev/null && $T write-shard $D/val_000.bin 1000 64 >/dev/null ||
  { bad "cannot write the test shards (make build/test_llama)"; exit 1; }
DATA="--train $D/train_*.bin --val $D/val_*.bin --val-every 5 --val-batches 3"
COMMON="$DATA --seq-len 16 --vocab 64 --layers 2 --dim 32 --heads 4 --stats-every 2 --init lir --init-std 0.05
  --tvr-target 0.02 --tvr-every 3 --grad-clip 0.5 --threads 1"
declare -A MODEL=([llama]="--kv-heads 2" [gpt2]="")

. test/mpi_lib.sh # trainlog, same (bit for bit), drift (the largest differences)

for m in llama gpt2; do
  P=./train_${m}_mpi
  RUN="$COMMON ${MODEL[$m]}"
  echo "$m: 2 ranks against gradient accumulation"
  ./train_$m $RUN --batch 4 --grad-accum 2 --steps 10 --threads 2 --out $D/$m.k2 >/dev/null || bad "$m --grad-accum 2 failed"
  $MPI -np 2 $P $RUN --batch 4 --steps 10 --out $D/$m.n2 > $D/$m.n2.log 2>&1 || bad "$m 2 ranks failed: $(tail -2 $D/$m.n2.log)"
  grep -q "2 ranks x 1 micro-steps" $D/$m.n2.log && ok "$m: ran as 2 ranks" || bad "$m: not 2 ranks"
  same $D/$m.k2 $D/$m.n2 "$m: 2 ranks x batch 4 = 1 rank x --grad-accum 2 x batch 4 (10 steps)"
  grep -q ',1$' $D/$m.n2/weights.csv && ok "$m: TVR rescaled in that run" || bad "$m: TVR never fired"
  awk -F, 'NR > 1 && $4 > 0.5 { n++ } END { exit !(n > 0) }' $D/$m.n2/train.csv && ok "$m: clipping was active (norm > 0.5)" ||
    bad "$m: the gradient norm never exceeded --grad-clip 0.5"

  echo "$m: --grad-accum 2 x batch 4 against --batch 8 (1 rank)"
  ./train_$m $RUN --batch 8 --steps 10 --out $D/$m.b8 >/dev/null || bad "$m --batch 8 failed"
  if [ "$(trainlog $D/$m.k2 | cut -d, -f1)" = "$(trainlog $D/$m.b8 | cut -d, -f1)" ]; then
    read -r dl dp <<< "$(drift $D/$m.k2 $D/$m.b8)"
    # the same rows, summed differently (two means of 4 rows halved, one mean of 8): fp32 rounding
    if python3 -c "import sys; sys.exit(not (float('$dl') < 1e-5 and float('$dp') < 1e-4))"; then
      ok "$m: same data; losses within $dl relative, parameters within $dp of the largest (tolerances 1e-5, 1e-4)"
    else
      bad "$m: --grad-accum 2 x 4 and --batch 8 differ by $dl (losses), $dp (parameters)"
    fi
  else
    bad "$m: --batch 8 did not log the same steps"
  fi

  echo "$m: resume across rank counts"
  ./train_$m $RUN --batch 4 --grad-accum 2 --steps 5 --checkpoint-every 5 --out $D/$m.r1 >/dev/null
  $MPI -np 2 $P $RUN --steps 10 --resume $D/$m.r1 > $D/$m.r1.log 2>&1 || bad "$m 2-rank resume failed: $(tail -2 $D/$m.r1.log)"
  grep -q "2 ranks x 1 micro-steps" $D/$m.r1.log && ok "$m: --grad-accum left off: 1 on 2 ranks (the run's 8 rows)" ||
    bad "$m: the 2-rank resume did not choose --grad-accum 1"
  same $D/$m.k2 $D/$m.r1 "$m: 1 rank x 5 steps, then 2 ranks x 5 = the straight run"
  $MPI -np 2 $P $RUN --batch 4 --steps 5 --out $D/$m.r2 > $D/$m.r2.log 2>&1 || bad "$m 2 ranks x 5 steps failed"
  ./train_$m $RUN --steps 10 --resume $D/$m.r2 > $D/$m.r2b.log 2>&1 || bad "$m 1-rank resume failed: $(tail -2 $D/$m.r2b.log)"
  same $D/$m.k2 $D/$m.r2 "$m: 2 ranks x 5 steps, then 1 rank x 5 = the straight run"
done

echo "bad set-ups: every rank ends, one message"
expect() { # STATUS|nonzero MESSAGE-REGEX WHAT -- COMMAND...: its exit status, and exactly one error line
  local want=$1 msg=$2 what=$3; shift 4
  local t0=$SECONDS
  "$@" > $D/bad.out 2> $D/bad.err
  local rc=$? n
  n=$(grep -c '^error: ' $D/bad.err)
  if { [ "$want" = nonzero ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] || [ "$rc" = "$want" ]; } && [ "$n" = 1 ] &&
     grep -q -e "$msg" $D/bad.err; then
    ok "$what: exit $rc in $((SECONDS - t0)) s, one line: $(grep '^error: ' $D/bad.err)"
  else
    bad "$what: exit $rc, $n error lines: $(head -c 300 $D/bad.err)"
  fi
}
L="$COMMON --kv-heads 2 --batch 4 --steps 3"
mkdir -p $D/wa/d $D/wb/d && cp $D/train_000.bin $D/wa/d/ # rank 1's folder lacks the shard
W=$PWD
SHARD="--train d/train_*.bin --val-every 0 --seq-len 16 --vocab 64 --layers 2 --dim 32 --batch 4 --steps 3 --threads 1 --out o"
expect nonzero "rank 1 of 2: --train d/train_\*.bin: no file matches" "a shard rank 1 cannot read" -- \
  $MPI -np 1 -wdir $D/wa $W/train_llama_mpi $SHARD : -np 1 -wdir $D/wb $W/train_llama_mpi $SHARD
expect nonzero "rank 1 has another command line than rank 0" "ranks given different flags" -- \
  $MPI -np 1 ./train_gpt2_mpi $L --out $D/x : -np 1 ./train_gpt2_mpi $L --out $D/x --lr 1e-3
expect 2 "rows a step differs from the run in $D/llama.r2 (8)" "a resume that changes the global batch" -- \
  $MPI -np 2 ./train_llama_mpi $L --grad-accum 2 --steps 12 --resume $D/llama.r2 --out $D/x2
expect 2 "--lr: 'x' is not a number" "a bad flag on both ranks" -- $MPI -np 2 ./train_llama_mpi $L --lr x --out $D/x3
expect 1 "built without MPI" "the plain build started as one of 2 ranks" -- env OMPI_COMM_WORLD_SIZE=2 ./train_llama $L --out $D/x4
exit $fail
