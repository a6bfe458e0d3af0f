#!/usr/bin/env bash
# test/test_mpi_gpu_emu.sh: the CUDA programs' data parallelism (docs/parallel.md), emulated:
# train_llama.cu and train_gpt2.cu built for the CPU with MPI (train_*_emu_mpi), NCCL's calls
# served by MPI (test/emu/nccl_emu.h), 2 ranks on this machine. For each program:
#   * 2 ranks x --batch 4 = 1 rank x --grad-accum 2 x --batch 4, bit for bit over 4 steps with
#     clipping, TVR, validation and statistics (model.bin, state.bin, every log); for train_llama
#     also 3 ranks x 2 = 1 rank x --grad-accum 3 x 2 (shards of unequal size);
#   * --grad-accum 2 x 4 against --batch 8 on one rank: the same rows, summed differently, to a
#     stated tolerance;
#   * resumed across rank counts (1 rank x 2 steps, then 2 ranks to 4, and back) = straight;
#   * state.bin does not depend on N: the 2-rank run's file is the 1-rank run's (first point);
# then bad set-ups end every rank with one message and a non-zero status, within a timeout.
# (The .cu programs' --grad-accum against the CPU programs': test/test_llama_gpu.sh and
# test/test_gpt2_gpu.sh, emulated by test/test_gpu_emu.sh.)
# On a machine with 2 GPUs: GPU_MPI_REAL=1 runs the same checks on train_*_cu_mpi.
# Skips where MPI or the CUDA toolkit is absent. Tiny models, 50-70 s on 2 shared cores.
set -u
set -f # the --train patterns reach the programs as written
cd "$(dirname "$0")/.."
fail=0
ok() { echo "  ok   $*"; }
bad() { echo "  FAIL $*"; fail=1; }
if ! command -v mpirun >/dev/null; then echo "  skip: no mpirun (apt-get install openmpi-bin libopenmpi-dev)"; exit 0; fi
if [ "${GPU_MPI_REAL:-0}" = 1 ]; then SUFFIX=cu_mpi; else SUFFIX=emu_mpi; fi
if [ ! -x ./train_llama_$SUFFIX ] || [ ! -x ./train_gpt2_$SUFFIX ]; then
  if command -v mpicxx >/dev/null && command -v ${NVCC:-nvcc} >/dev/null; then
    bad "train_llama_$SUFFIX / train_gpt2_$SUFFIX not built (make emu-mpi, or cuda-mpi)"; exit 1
  fi
  echo "  skip: no mpicxx or no CUDA toolkit, so no train_*_$SUFFIX"; exit 0
fi
# as test/test_mpi.sh: OpenMPI as root, more ranks than it counts cores, no pinning, no banner;
# one OpenMP thread a rank (the emulator's blocks; more only spin on 2 shared cores)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPI="timeout 300 mpirun --quiet --oversubscribe --bind-to none -x OMP_NUM_THREADS"
ONE="timeout 300"
D=build/mpi_gpu_test
rm -rf "$D" && mkdir -p "$D"
T=./build/test_llama
$T write-shard $D/train_000.bin 3000 64 >/dev/null && $T write-shard $D/val_000.bin 1000 64 >/dev/null ||
  { bad "cannot write the test shards (make build/test_llama)"; exit 1; }
# 4 steps: TVR at 2 and 4, statistics at 2 and 4, validation at 0, 2, 4 over 3 batches (split
# 1 + 2 between the ranks), the gradient norm (~1.3) clipped to 0.5 at every step
DATA="--train $D/train_*.bin --val $D/val_*.bin --val-every 2 --val-batches 3"
COMMON="$DATA --seq-len 16 --vocab 64 --layers 2 --dim 32 --heads 4 --stats-every 2 --init lir --init-std 0.05
  --tvr-target 0.02 --tvr-every 2 --grad-clip 0.5"
declare -A MODEL=([llama]="--kv-heads 2" [gpt2]="")

. test/mpi_lib.sh # trainlog, same (bit for bit), drift (the largest differences)

for m in llama gpt2; do
  P=./train_${m}_$SUFFIX
  RUN="$COMMON ${MODEL[$m]}"
  echo "$m ($P): 2 ranks against gradient accumulation"
  $ONE $P $RUN --batch 4 --grad-accum 2 --steps 4 --out $D/$m.k2 > $D/$m.k2.log 2>&1 ||
    bad "$m --grad-accum 2 failed: $(tail -2 $D/$m.k2.log)"
  $MPI -np 2 $P $RUN --batch 4 --steps 4 --out $D/$m.n2 > $D/$m.n2.log 2>&1 ||
    bad "$m 2 ranks failed: $(tail -2 $D/$m.n2.log)"
  grep -q "2 ranks x 1 micro-steps" $D/$m.n2.log && ok "$m: ran as 2 ranks over NCCL" || bad "$m: not 2 ranks"
  same $D/$m.k2 $D/$m.n2 "$m: 2 ranks x batch 4 = 1 rank x --grad-accum 2 x batch 4 (4 steps)"
  grep -q ',1$' $D/$m.n2/weights.csv && ok "$m: TVR rescaled in that run" || bad "$m: TVR never fired"
  if [ $m = llama ]; then # 3 ranks: shards of unequal size (21, 21, 22 of the 64 chunks), 1 val batch each
    $ONE $P $RUN --batch 2 --grad-accum 3 --steps 4 --out $D/$m.k3 > $D/$m.k3.log 2>&1 || bad "$m --grad-accum 3 failed"
    $MPI -np 3 $P $RUN --batch 2 --steps 4 --out $D/$m.n3 > $D/$m.n3.log 2>&1 ||
      bad "$m 3 ranks failed: $(tail -2 $D/$m.n3.log)"
    same $D/$m.k3 $D/$m.n3 "$m: 3 ranks x batch 2 = 1 rank x --grad-accum 3 x batch 2 (4 steps)"
    # --precision bf16: each rank's bf16 weights are made after ZeRO-1's all-gather
    $ONE $P $RUN --batch 4 --grad-accum 2 --steps 4 --precision bf16 --out $D/$m.k2b > $D/$m.k2b.log 2>&1 ||
      bad "$m bf16 --grad-accum 2 failed: $(tail -2 $D/$m.k2b.log)"
    $MPI -np 2 $P $RUN --batch 4 --steps 4 --precision bf16 --out $D/$m.n2b > $D/$m.n2b.log 2>&1 ||
      bad "$m bf16 2 ranks failed: $(tail -2 $D/$m.n2b.log)"
    same $D/$m.k2b $D/$m.n2b "$m --precision bf16: 2 ranks x batch 4 = 1 rank x --grad-accum 2 x batch 4"
  fi
  awk -F, 'NR > 1 && $4 > 0.5 { n++ } END { exit !(n > 0) }' $D/$m.n2/train.csv && ok "$m: clipping was active (norm > 0.5)" ||
    bad "$m: the gradient norm never exceeded --grad-clip 0.5"

  echo "$m: --grad-accum 2 x batch 4 against --batch 8 (1 rank)"
  $ONE $P $RUN --batch 8 --steps 4 --out $D/$m.b8 > $D/$m.b8.log 2>&1 || bad "$m --batch 8 failed"
  if [ "$(trainlog $D/$m.k2 | cut -d, -f1)" = "$(trainlog $D/$m.b8 | cut -d, -f1)" ]; then
    read -r dl dp <<< "$(drift $D/$m.k2 $D/$m.b8)"
    # the same rows, summed differently (two means of 4 rows halved, one mean of 8; cuBLAS's
    # sums over rows cut in another place): fp32 rounding, test/test_mpi.sh's tolerances
    if python3 -c "import sys; sys.exit(not (float('$dl') < 1e-5 and float('$dp') < 1e-4))"; then
      ok "$m: same data; losses within $dl relative, parameters within $dp of the largest (tolerances 1e-5, 1e-4)"
    else
      bad "$m: --grad-accum 2 x 4 and --batch 8 differ by $dl (losses), $dp (parameters)"
    fi
    # and they must differ somewhere: equal bits would mean K was ignored
    cmp -s $D/$m.k2/model.bin $D/$m.b8/model.bin && bad "$m: --grad-accum 2 x 4 gave --batch 8's bits (K ignored?)"
  else
    bad "$m: --batch 8 did not log the same steps"
  fi

  echo "$m: resume across rank counts"
  $ONE $P $RUN --batch 4 --grad-accum 2 --steps 2 --out $D/$m.r1 > $D/$m.r1a.log 2>&1 || bad "$m 1 rank x 2 steps failed"
  $MPI -np 2 $P $RUN --steps 4 --resume $D/$m.r1 > $D/$m.r1.log 2>&1 || bad "$m 2-rank resume failed: $(tail -2 $D/$m.r1.log)"
  grep -q "2 ranks x 1 micro-steps" $D/$m.r1.log && ok "$m: --grad-accum left off: 1 on 2 ranks (the run's 8 rows)" ||
    bad "$m: the 2-rank resume did not choose --grad-accum 1"
  same $D/$m.k2 $D/$m.r1 "$m: 1 rank x 2 steps, then 2 ranks x 2 = the straight run"
  $MPI -np 2 $P $RUN --batch 4 --steps 2 --out $D/$m.r2 > $D/$m.r2a.log 2>&1 || bad "$m 2 ranks x 2 steps failed"
  $ONE $P $RUN --steps 4 --resume $D/$m.r2 > $D/$m.r2.log 2>&1 || bad "$m 1-rank resume failed: $(tail -2 $D/$m.r2.log)"
  grep -q "1 ranks x 2 micro-steps" $D/$m.r2.log && ok "$m: --grad-accum left off: 2 on 1 rank" ||
    bad "$m: the 1-rank resume did not choose --grad-accum 2"
  same $D/$m.k2 $D/$m.r2 "$m: 2 ranks x 2 steps, then 1 rank x 2 = the straight run"
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
MPI_SHORT="timeout 60 mpirun --quiet --oversubscribe --bind-to none -x OMP_NUM_THREADS"
L="$COMMON --kv-heads 2 --batch 4 --steps 3"
mkdir -p $D/wa/d $D/wb/d && cp $D/train_000.bin $D/wa/d/ # rank 1's folder lacks the shard
W=$PWD
SHARD="--train d/train_*.bin --val-every 0 --seq-len 16 --vocab 64 --layers 2 --dim 32 --batch 4 --steps 3 --out o"
expect nonzero "rank 1 of 2: --train d/train_\*.bin: no file matches" "a shard rank 1 cannot read" -- \
  $MPI_SHORT -np 1 -wdir $D/wa $W/train_llama_$SUFFIX $SHARD : -np 1 -wdir $D/wb $W/train_llama_$SUFFIX $SHARD
# the run's 8 rows a step cannot be cut into 3 ranks x 4 rows
expect 2 "12 rows a step differs from the run in $D/gpt2.r2 (8)" "3 ranks x batch 4 resuming an 8-row run" -- \
  $MPI_SHORT -np 3 ./train_gpt2_$SUFFIX $COMMON --batch 4 --steps 6 --resume $D/gpt2.r2 --out $D/x1
expect nonzero "rank 1 has another command line than rank 0" "ranks given different flags" -- \
  $MPI_SHORT -np 1 ./train_gpt2_$SUFFIX $L --out $D/x2 : -np 1 ./train_gpt2_$SUFFIX $L --out $D/x2 --lr 1e-3
expect 2 "--lr: 'x' is not a number" "a bad flag on both ranks" -- $MPI_SHORT -np 2 ./train_llama_$SUFFIX $L --lr x --out $D/x3
for plain in ./train_llama_${SUFFIX%_mpi} ./train_gpt2_${SUFFIX%_mpi}; do
  [ -x $plain ] || continue
  expect 1 "built without MPI" "$plain (no MPI) started as one of 2 ranks" -- env OMPI_COMM_WORLD_SIZE=2 $plain $L --out $D/x4
done
exit $fail
