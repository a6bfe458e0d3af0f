#!/usr/bin/env bash
# test/test_gpu_emu.sh: the CUDA programs run here, without a GPU: train_llama.cu and
# train_gpt2.cu built for the CPU under test/emu/ (every CUDA thread a fiber; docs/emulator.md)
# and checked against the CPU programs by the same scripts a GPU machine runs.
#
#  1. the emulator's own tests (test/emu/test_emu.cu) under every schedule
#  2. ThreadSanitizer: the same kernels race-free; a kernel without its __syncthreads reported
#  3. test/test_llama_gpu.sh and test/test_gpt2_gpu.sh with GPU_EMULATED=1 (fixtures against
#     PyTorch, GPU vs CPU on every log column, model.bin and state.bin, checkpoint round trips
#     CPU <-> GPU, rerun and resume bit for bit) under three schedules: threads in order, and
#     shuffled with two seeds (these leave out the one large run, V 32000, which in order takes
#     40% of the time)
#  4. the schedules agree bit for bit: every emulated model.bin and state.bin of step 3 is the
#     same file under each schedule (a race in a kernel would make some schedule differ)
#  5. AddressSanitizer + UBSan builds: the fixture test, and both trainers through every kernel
#     (TVR, statistics, validation, checkpoint, resume)
#  6. --attention flash (the default, common/cuda_attention.h) against --attention matmul: the
#     attention workbench's versions against its CPU loops, and 4 training steps of each trainer;
#     train_gpt2.cu's fused classifier against its two kernels (RESCALE_FUSED_CLASSIFIER=0);
#     --attention cudnn is refused with a clear error (an emulated build has no cuDNN)
#  7. --recompute 1 against --recompute 0 (both trainers, flash attention): the same model.bin,
#     state.bin and logs, bit for bit, with a smaller memory estimate; --recompute 2 refused
#  8. --precision bf16 (test/test_gpu_bf16.sh): train_llama.cu against train_llama's bf16 (the
#     ref kernel) with both attentions, against its own fp32; train_gpt2.cu's flash against its
#     matmul path and against fp32; bitwise under a shuffled schedule; the attention
#     workbench's version 4 (flash with bf16 inputs) runs in part 6
# The dev/cuda workbenches run emulated in `GPU_CHECK_EMULATE=1 make gpu-check` (.ci/run).
# Reports: out/emu/. Skips (exit 0) where nvcc's headers are missing (no CUDA toolkit).
set -u
cd "$(dirname "$0")/.."
if [ ! -x train_llama_emu ] || [ ! -x train_gpt2_emu ]; then
    if ! command -v ${NVCC:-nvcc} >/dev/null 2>&1; then
        echo "skipped: no CUDA toolkit (nvcc), so no CUDA headers to build the emulated programs"
        exit 0
    fi
    echo "error: the emulated programs are not built (make emu)"
    exit 1
fi
R=out/emu
rm -rf "$R"
mkdir -p "$R"
passed=0
failed=0
failures=""
t0=$(date +%s)

# step NAME COMMAND...: run it with its output in $R/NAME.log, report ok/FAIL with the time
step() {
    local name=$1 log
    shift
    log=$R/$(echo "$name" | tr -c 'A-Za-z0-9_.-' '_').log
    local start=$(date +%s)
    if "$@" > "$log" 2>&1; then
        passed=$((passed + 1))
        echo "  ok   $name ($(( $(date +%s) - start ))s)"
    else
        failed=$((failed + 1))
        failures="$failures
  $name"
        echo "  FAIL $name ($(( $(date +%s) - start ))s); the last lines of $log:"
        tail -15 "$log" | sed 's/^/       /'
    fi
}

SCHEDULES=("inorder 1" "random 1" "random 2")
tag() { echo "$1$([ "$1" = random ] && echo "$2")"; }

echo "1. the emulator's own tests"
for s in "inorder 1" "reverse 1" "random 1" "random 2"; do
    set -- $s
    step "test_emu EMU_SCHED=$1 EMU_SEED=$2" env EMU_SCHED=$1 EMU_SEED=$2 build/emu/test_emu
done

echo "2. ThreadSanitizer"
tsan_race() { # the racy kernel must be reported, by name
    local out rc
    out=$(TSAN_OPTIONS="halt_on_error=1 exitcode=66" build/emu/test_emu_tsan race 2>&1)
    rc=$?
    echo "$out"
    [ $rc -eq 66 ] || { echo "exit status $rc, want 66 (a TSan report)"; return 1; }
    grep -q "reverse_racy_kernel" <<< "$out" || { echo "the report does not name reverse_racy_kernel"; return 1; }
}
step "TSan: test_emu's kernels (barriers, shuffles, reductions, the classifier) race-free" \
    env TSAN_OPTIONS="halt_on_error=1" build/emu/test_emu_tsan
step "TSan: the reversal without its __syncthreads is reported as a data race" tsan_race

echo "3. the GPU test scripts, emulated, under three schedules"
for s in "${SCHEDULES[@]}"; do
    set -- $s
    t=$(tag "$1" "$2")
    large=$([ "$1" = inorder ] && echo 0 || echo 1)
    step "test_llama_gpu.sh EMU_SCHED=$1 EMU_SEED=$2$([ $large = 1 ] && echo ' (without the V 32000 run)')" \
        env EMU_SCHED=$1 EMU_SEED=$2 GPU_EMULATED=1 GPU_SKIP_HOST=1 GPU_SKIP_LARGE=$large \
        GPU_REPORT_DIR=$R/llama_$t bash test/test_llama_gpu.sh
    step "test_gpt2_gpu.sh EMU_SCHED=$1 EMU_SEED=$2" env EMU_SCHED=$1 EMU_SEED=$2 GPU_EMULATED=1 GPU_SKIP_HOST=1 \
        GPU_REPORT_DIR=$R/gpt2_$t bash test/test_gpt2_gpu.sh
done

echo "4. the schedules agree bit for bit"
same_bits() { # MODEL: each checkpoint a shuffled schedule wrote is the in-order schedule's file
    local model=$1 n=0 base=$R/${1}_inorder s dir f
    for s in "${SCHEDULES[@]:1}"; do
        dir=$R/${model}_$(tag $s)
        for f in "$dir"/*.gpu/*.bin "$dir"/bit.*/*.bin "$dir"/rt*/*.bin; do
            [ -f "$f" ] || continue
            cmp "$f" "$base/${f#$dir/}" || return 1
            n=$((n + 1))
        done
    done
    echo "$n files identical to the in-order schedule's"
    [ "$n" -gt 0 ]
}
step "train_llama_emu: checkpoints identical under inorder, random 1, random 2" same_bits llama
step "train_gpt2_emu: checkpoints identical under inorder, random 1, random 2" same_bits gpt2

echo "5. AddressSanitizer + UBSan"
FIX=test/fixtures/llama
step "ASan: the fixture test (all three fixtures)" build/emu/test_llama_gpu_asan "$FIX/gqa_lir_tvr" \
    "$FIX/mha_clip_constant" "$FIX/mqa_residual_tvrdepth"
asan_run() { # PROGRAM MODEL DATA EXTRA...: 3 steps through every kernel, then resume to 4
    local prog=$1 model=$2 data=$3 out=$R/asan_$(basename "$1")
    shift 3
    "$prog" --init-from "$model" --train "$data" --val "$data" --batch 2 --seq-len 16 --steps 3 --warmup 1 \
        --tvr-target 0.001 --tvr-every 1 --stats-every 1 --val-every 1 --val-batches 1 "$@" --out "$out" &&
        "$prog" --resume "$out" --train "$data" --val "$data" --batch 2 --seq-len 16 --steps 4 --warmup 1 \
            --tvr-target 0.001 --tvr-every 1 --stats-every 1 --val-every 1 --val-batches 1 "$@"
}
step "ASan: train_llama_emu, 3 steps + resume (TVR, stats, validation, checkpoints)" \
    asan_run build/emu/train_llama_asan "$FIX/gqa_lir_tvr/model.bin" "$FIX/shakespeare_bytes_*.bin"
step "ASan: train_gpt2_emu, 3 steps + resume (TVR, stats, histograms, validation, checkpoints)" \
    asan_run build/emu/train_gpt2_asan test/fixtures/gpt2_tiny_model.bin test/fixtures/gpt2_tiny_train.bin \
    --hist-layer 1

echo "6. the newer kernels: flash attention against --attention matmul, GPT-2's fused classifier"
step "dev/cuda/attention: versions 2 (matmul), 3 (flash), 4 (flash, bf16) against the CPU loops (GQA, T 200, hs 64)" \
    build/emu/dev/cuda/attention
attn_pair() { # NAME PROGRAM MODEL DATA EXTRA...: 4 steps each way; the losses and grad norms agree to 1e-6,
    # and the memory estimates differ (the flag did switch the path: flash keeps no T x T matrix)
    local name=$1 prog=$2 model=$3 data=$4 a
    shift 4
    for a in flash matmul; do
        "$prog" --init-from "$model" --train "$data" --val-every 0 --batch 2 --seq-len 16 --steps 4 --warmup 1 \
            --tvr-target 0.001 --tvr-every 2 --attention $a "$@" --out "$R/attn_${name}_$a" > "$R/attn_${name}_$a.log" || return 1
    done
    python3 - "$R/attn_${name}_flash" "$R/attn_${name}_matmul" <<'PY'
import csv, re, sys
a, b = ([r for r in csv.DictReader(open(d + '/train.csv'))] for d in sys.argv[1:])
assert len(a) == len(b) == 4, (len(a), len(b))
worst = max(abs(float(x[c]) - float(y[c])) / abs(float(y[c])) for x, y in zip(a, b) for c in ('loss', 'grad_norm'))
print('flash vs matmul, 4 steps: max relative difference of loss and grad_norm %.2e (tolerance 1e-6)' % worst)
mem = [int(re.search(r'GPU memory: about [0-9.]+ GiB \(([0-9]+) bytes\)', open(d + '.log').read()).group(1))
       for d in sys.argv[1:]]
print('memory estimate: flash %d bytes, matmul %d bytes (flash must be smaller)' % tuple(mem))
sys.exit(worst > 1e-6 or mem[0] >= mem[1])
PY
}
step "train_llama_emu: flash vs matmul, 4 steps (GQA fixture)" \
    attn_pair llama ./train_llama_emu "$FIX/gqa_lir_tvr/model.bin" "$FIX/shakespeare_bytes_*.bin"
step "train_gpt2_emu: flash vs matmul, 4 steps" \
    attn_pair gpt2 ./train_gpt2_emu test/fixtures/gpt2_tiny_model.bin test/fixtures/gpt2_tiny_train.bin
fused_same() { # train_gpt2_emu's fused classifier against its two kernels: the same model.bin and state.bin
    local d v
    for v in 1 0; do
        d=$R/fused_$v
        RESCALE_FUSED_CLASSIFIER=$v ./train_gpt2_emu --init-from test/fixtures/gpt2_tiny_model.bin \
            --train test/fixtures/gpt2_tiny_train.bin --val-every 0 --batch 2 --seq-len 16 --steps 3 --out "$d" \
            > "$d.log" || return 1
    done
    cmp "$R/fused_1/model.bin" "$R/fused_0/model.bin" && cmp "$R/fused_1/state.bin" "$R/fused_0/state.bin"
}
step "train_gpt2_emu: the fused classifier = its two kernels, 3 steps, bit for bit" fused_same
big_head() { # PROGRAM EXTRA...: head size 128 under flash is a usage error (exit 2) naming the way out
    "$@" --layers 1 --dim 256 --heads 2 --steps 1 --val-every 0 --out "$R/big_head" > "$R/big_head.log" 2>&1
    [ $? = 2 ] && grep -q 'head size 128 .* is over 64; use --attention matmul' "$R/big_head.log"
}
step "flash: a head size over 64 is a clear error (both trainers)" \
    eval 'big_head ./train_llama_emu --kv-heads 2 && big_head ./train_gpt2_emu --train test/fixtures/gpt2_tiny_train.bin'
no_cudnn() { # PROGRAM EXTRA...: --attention cudnn without a USE_CUDNN=1 build is a usage error naming the build
    "$@" --attention cudnn --steps 1 --val-every 0 --out "$R/no_cudnn" > "$R/no_cudnn.log" 2>&1
    [ $? = 2 ] && grep -q -- '--attention cudnn: this program was built without cuDNN; build it with `make cuda USE_CUDNN=1`' "$R/no_cudnn.log"
}
step "cudnn: --attention cudnn in a build without cuDNN is a clear error (both trainers)" \
    eval 'no_cudnn ./train_llama_emu && no_cudnn ./train_gpt2_emu --train test/fixtures/gpt2_tiny_train.bin'

echo "7. --recompute 1: the norm and MLP activations redone in the backward, the same bits"
recompute_same() { # NAME PROGRAM MODEL DATA EXTRA...: 3 steps each way with TVR, statistics and validation
    local name=$1 prog=$2 model=$3 data=$4 r f m0 m1
    shift 4
    for r in 0 1; do
        "$prog" --init-from "$model" --train "$data" --val "$data" --batch 2 --seq-len 16 --steps 3 --warmup 1 \
            --tvr-target 0.001 --tvr-every 2 --stats-every 1 --val-every 2 --val-batches 1 --recompute $r "$@" \
            --out "$R/recompute_${name}_$r" > "$R/recompute_${name}_$r.log" || return 1
    done
    for f in "$R/recompute_${name}_0"/*; do
        f=$(basename "$f")
        if [ "$f" = train.csv ]; then # its ms and tokens_per_s columns are times
            cmp <(cut -d, -f1-4 "$R/recompute_${name}_0/$f") <(cut -d, -f1-4 "$R/recompute_${name}_1/$f") || return 1
        else
            cmp "$R/recompute_${name}_0/$f" "$R/recompute_${name}_1/$f" || return 1
        fi
        echo "same: $f"
    done
    m0=$(grep -o 'GPU memory: about [0-9.]* GiB ([0-9]* bytes)' "$R/recompute_${name}_0.log" | grep -o '([0-9]*' | tr -d '(')
    m1=$(grep -o 'GPU memory: about [0-9.]* GiB ([0-9]* bytes)' "$R/recompute_${name}_1.log" | grep -o '([0-9]*' | tr -d '(')
    echo "memory estimate: $m0 bytes, with --recompute 1 $m1 (must be smaller)"
    [ -n "$m1" ] && [ "$m1" -lt "$m0" ]
}
step "train_llama_emu: --recompute 1 = 0, 3 steps: model.bin, state.bin, logs (GQA fixture)" \
    recompute_same llama ./train_llama_emu "$FIX/gqa_lir_tvr/model.bin" "$FIX/shakespeare_bytes_*.bin"
step "train_gpt2_emu: --recompute 1 = 0, 3 steps: model.bin, state.bin, logs (with hist)" \
    recompute_same gpt2 ./train_gpt2_emu test/fixtures/gpt2_tiny_model.bin test/fixtures/gpt2_tiny_train.bin \
    --hist-layer 1
bad_recompute() { # PROGRAM: --recompute 2 is a usage error (exit 2) that names the flag
    "$1" --recompute 2 --steps 1 --out "$R/bad_recompute" > "$R/bad_recompute.log" 2>&1
    [ $? = 2 ] && grep -q -- '--recompute must be in \[0, 1\], got 2' "$R/bad_recompute.log"
}
step "--recompute 2 is a clear error (both trainers)" eval 'bad_recompute ./train_llama_emu && bad_recompute ./train_gpt2_emu'

echo "8. --precision bf16"
step "--precision bf16: train_llama_emu against train_llama's bf16 and fp32, train_gpt2_emu against fp32" \
    env GPU_EMULATED=1 GPU_REPORT_DIR=$R/bf16 bash test/test_gpu_bf16.sh

echo
[ -n "$failures" ] && echo "failed:$failures"
echo "emulated GPU suite: $passed passed, $failed failed in $(( $(date +%s) - t0 ))s (reports in $R)"
[ "$failed" -eq 0 ]
