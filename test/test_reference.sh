#!/usr/bin/env bash
# train_llama.c against the PyTorch oracle (dev/reference/llama.py): every fixture in
# test/fixtures/llama/, with the float32 build and with the float64 build (tight tolerances).
# Needs no Python: the fixtures are committed; `make reference` regenerates them.
set -eu
cd "$(dirname "$0")/.."
# These models are tiny: OpenMP threads that busy-wait between parallel loops would
# spend most of the time spinning, and crawl when other programs load the machine.
export OMP_WAIT_POLICY=passive
for bin in build/test_reference build/test_reference_f64; do
  if [ ! -x "$bin" ]; then echo "$bin is not built (make $bin)"; exit 1; fi
  echo "--- $bin"
  "$bin" test/fixtures/llama/*/
done
