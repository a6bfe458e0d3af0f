#!/usr/bin/env bash
# train_llama.c's unit tests (test/test_llama.c), in double precision (tight
# gradient check) and in float (the program as it ships).
set -u
cd "$(dirname "$0")/.."
./build/test_llama_f64 all && ./build/test_llama all
