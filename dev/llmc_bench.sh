#!/usr/bin/env bash
# dev/llmc_bench.sh LLMC_DIR WORK STEPS: llm.c's train_gpt2cu on the same shards and shape as
# dev/gpu_check.sh's GPT-2 124M benchmark (Tiny Shakespeare GPT-2 shards, B 8, T 1024, a fresh
# d12 model), in fp32 and in bf16 (llm.c's default), for the ratio in the gpu-check report.
# LLMC_DIR is a checkout of karpathy/llm.c (nothing of it is committed here). It is built in
# scratch copies under WORK, without NVML (llmc/mfu.h uses it only for a utilisation readout,
# and a machine whose driver lacks libnvidia-ml must still build it), MPI, NCCL or cuDNN.
# Writes WORK/speeds.txt: "PRECISION MS_PER_STEP TOKENS_PER_S" per build, means over the steps
# after the first 3.
set -u
src=$1 work=$2 steps=${3:-20}
[ -f "$src/train_gpt2.cu" ] || { echo "llmc_bench: $src is not an llm.c checkout (no train_gpt2.cu)"; exit 1; }
rm -rf "$work" && mkdir -p "$work"
build() { # PRECISION
    local d=$work/$1
    cp -r "$src" "$d" && rm -rf "$d/.git"
    # no NVML: the header test that turns it on, and the library, removed from the copy
    sed -i 's/#if __has_include(<nvml.h>)/#if 0/' "$d/llmc/mfu.h"
    sed -i 's/-lnvidia-ml//g' "$d/Makefile"
    make -C "$d" train_gpt2cu PRECISION=$1 NO_MULTI_GPU=1 NO_USE_MPI=1 USE_CUDNN=0 > "$d.build.log" 2>&1 ||
        { echo "llm.c build ($1) failed:"; tail -20 "$d.build.log"; return 1; }
}
build FP32 & p1=$!
build BF16 & p2=$!
wait $p1 || exit 1
wait $p2 || exit 1
here=$(pwd)
: > "$work/speeds.txt"
for prec in FP32 BF16; do
    (cd "$work/$prec" && ./train_gpt2cu -i "$here/data/tinyshakespeare/gpt2_train_*.bin" \
        -j "$here/data/tinyshakespeare/gpt2_val_*.bin" -e d12 -b 8 -t 1024 -x "$steps" -v 100000 -s 100000 \
        -h 0) > "$work/$prec.run.log" 2>&1 || { echo "llm.c run ($prec) failed:"; tail -20 "$work/$prec.run.log"; exit 1; }
    # llm.c prints "step    5/20 | loss ... | 123.45 ms | ... | 66000 tok/s"
    python3 - "$work/$prec.run.log" "$prec" >> "$work/speeds.txt" <<'PY'
import re, sys
rows = [(int(m.group(1)), float(m.group(2)), float(m.group(3)))
        for m in re.finditer(r'step\s+(\d+)/\d+ \|.*?\|\s*([\d.]+) ms \|.*?([\d.]+) tok/s', open(sys.argv[1]).read())]
rows = [r for r in rows if r[0] > 3]
if not rows:
    sys.exit('no step lines in ' + sys.argv[1])
print(sys.argv[2].lower(), sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows))
PY
done
cat "$work/speeds.txt"
