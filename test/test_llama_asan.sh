#!/usr/bin/env bash
# The same tests under AddressSanitizer + UndefinedBehaviorSanitizer: any
# out-of-bounds access, use after free or undefined operation aborts the run.
set -u
cd "$(dirname "$0")/.."
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
./build/test_llama_asan gemm && ./build/test_llama_asan tvr && ./build/test_llama_asan adamw &&
  ./build/test_llama_asan checkpoint && ./build/test_llama_asan overfit &&
  BIN=./build/train_llama_asan bash test/test_llama_cli.sh
