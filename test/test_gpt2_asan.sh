#!/usr/bin/env bash
# train_gpt2.c under AddressSanitizer + UBSan: the unit, gradient and fixture checks
# (double build), and a short run with every log, TVR, validation and a resume.
# Needs: make build/test_gpt2_asan build/train_gpt2_asan (make test builds them).
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
fail=0
for mode in units gradcheck "fixtures test/fixtures"; do
  ./build/test_gpt2_asan $mode > /dev/null || { echo "FAIL: test_gpt2_asan $mode"; fail=1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
FX=test/fixtures/gpt2_tiny_train.bin
ARGS="--train $FX --val $FX --val-every 2 --val-batches 2 --layers 2 --dim 32 --heads 4 --vocab 250 --seq-len 16
      --batch 2 --tvr-target 0.01 --tvr-every 2 --stats-every 2 --hist-layer 2 --hist-matrix fc_proj --threads 2"
./build/train_gpt2_asan $ARGS --steps 3 --out "$tmp/r" > /dev/null || { echo "FAIL: asan run"; fail=1; }
./build/train_gpt2_asan $ARGS --steps 5 --resume "$tmp/r" > /dev/null || { echo "FAIL: asan resume"; fail=1; }
[ $fail -eq 0 ] && echo "ok: train_gpt2 clean under ASan/UBSan (units, gradcheck, fixtures, run + resume)"
exit $fail
