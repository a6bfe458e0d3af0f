#!/usr/bin/env bash
# test/test_llama_gpu.sh: train_llama.cu (./train_llama_cu) checked on an NVIDIA GPU, with a
# report in out/gpu_report/report.md. `make test-gpu` runs it; `make test` runs it too, and on a
# machine without a GPU (CI, the development machines) it prints why it skipped and exits 0.
#
#  0. (no GPU needed) build/test_llama_gpu_host: token buckets; gemm_batched()'s mapping onto cuBLAS and attention's
#     grouped-query strides, with cuBLAS emulated on the host
#
#  1. fixtures: build/test_llama_gpu against the PyTorch oracle's fixtures (logits, loss, every
#     gradient, 10 steps of losses/lr/grad norms, TVR decisions, final parameters; TVR alone
#     against the CPU formula; bitwise rerun)
#  2. GPU vs CPU: ./train_llama_cu and ./train_llama from the same model.bin on the same data,
#     10 steps with TVR, validation and statistics; every CSV column, model.bin, state.bin
#  3. checkpoints: CPU -> GPU -> CPU and GPU -> CPU -> GPU round trips against straight runs;
#     GPU resume and GPU rerun bit for bit
#  4. compute-sanitizer memcheck, racecheck, synccheck on a tiny run
#  5. benchmark: ms/step and tokens/s, two sizes (docs/perf.md's "tiny" and "mid"), fp32 and TF32
#
# GPU_EMULATED=1 runs parts 1-3 with the CUDA program built for the CPU under test/emu/
# (./train_llama_emu and build/emu/test_llama_gpu; GPU_PROGRAM and GPU_FIXTURE_TEST name others,
# e.g. the ASan builds): the kernels' logic checked without a GPU, under the schedule EMU_SCHED
# names (test/test_gpu_emu.sh runs several). Parts 4-5 need a real GPU.
# GPU_TEST_DRY_RUN=1 runs parts 2-3 with ./train_llama standing in for the GPU program (the
# script's own test on a machine without a GPU; it proves nothing about the GPU).
set -u
cd "$(dirname "$0")/.."

# 0. without a GPU too: the matmuls' index arithmetic, cuBLAS emulated on the host
if [ -x build/test_llama_gpu_host ] && [ "${GPU_SKIP_HOST:-0}" != 1 ]; then
    build/test_llama_gpu_host || exit 1
fi

DRY=${GPU_TEST_DRY_RUN:-0}
EMU=${GPU_EMULATED:-0}
FIXTURE_TEST=${GPU_FIXTURE_TEST:-build/test_llama_gpu}
if [ "$DRY" = 1 ]; then
    GPU=./train_llama
elif [ "$EMU" = 1 ]; then
    GPU=${GPU_PROGRAM:-./train_llama_emu}
    FIXTURE_TEST=${GPU_FIXTURE_TEST:-build/emu/test_llama_gpu}
else
    GPU=${GPU_PROGRAM:-./train_llama_cu}
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "skipped: no CUDA GPU (nvidia-smi not found / no device)"
        exit 0
    fi
    if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        echo "skipped: no CUDA GPU (nvidia-smi not found / no device)"
        exit 0
    fi
fi
CPU=./train_llama
PY=${PYTHON:-python3}
CMP="$PY test/test_llama_gpu_compare.py"
# Tolerances (max |GPU - CPU| / max |CPU| per column or tensor), each from a measurement:
#  - per-step numbers (train.csv loss, lr, grad norm; val.csv): 1e-5. Two float32 programs that
#    sum in different orders measured <= 5e-7 apart here (the emulated kernels, 10-12 steps, all
#    fixtures); a wrong formula moves a loss by 1e-3 or more.
#  - statistics of trained weights and activations (weights.csv, activations.csv): 1e-4; worst
#    measured 5.4e-6, they follow the parameters' drift (next).
#  - parameters and Adam moments after training (model.bin, state.bin): 1e-3. AdamW divides each
#    gradient by its own running RMS, so an element whose gradient nearly cancels moves by about
#    lr whatever its rounding: test_reference's float64 build measures that growth as ~4000x in 10
#    steps (1e-16 -> 4e-13 on mqa_residual_tvrdepth's w2), i.e. ~2.4e-4 from float32's 6e-8.
#    Measured: train_llama.c vs PyTorch 3.2e-4 (test_reference.c, whose float32 tolerance for the
#    same quantity is this 1e-3), emulated train_llama.cu vs PyTorch 3.65e-4, emulated
#    train_gpt2.cu vs train_gpt2.c 2.3e-4. A wrong update is O(1) off.
TOL_STEP=1e-5
TOL_STATS=1e-4
TOL_PARAMS=1e-3
for bin in "$CPU" "$GPU"; do
    [ -x "$bin" ] || { echo "error: $bin is not built (make cuda train_llama)"; exit 1; }
done
if [ "$DRY" != 1 ] && [ ! -x "$FIXTURE_TEST" ]; then
    echo "error: $FIXTURE_TEST is not built (make cuda, or make emu)"; exit 1
fi

R=${GPU_REPORT_DIR:-out/gpu_report}
rm -rf "$R"
mkdir -p "$R"
REPORT=$R/report.md
FIX=test/fixtures/llama
BYTES="$FIX/shakespeare_bytes_*.bin"
passed=0
failed=0
failures=""

{
    echo "# make test-gpu report"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    if [ "$DRY" = 1 ]; then
        echo "- DRY RUN: ./train_llama stands in for the GPU program; nothing here ran on a GPU"
    elif [ "$EMU" = 1 ]; then
        echo "- EMULATED: $GPU, the CUDA program built for the CPU (test/emu/), EMU_SCHED=${EMU_SCHED:-inorder} EMU_SEED=${EMU_SEED:-1}; nothing here ran on a GPU"
    else
        echo "- device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
        echo "- nvcc: $(nvcc --version 2>/dev/null | grep release || echo 'not in PATH')"
    fi
    echo
} > "$REPORT"

# check NAME COMMAND...: run it, put its output in the report, count it
check() {
    local name=$1
    shift
    echo "=== $name"
    local log=$R/last.log
    local status
    if "$@" > "$log" 2>&1; then
        status=ok
        passed=$((passed + 1))
    else
        status=FAIL
        failed=$((failed + 1))
        failures="$failures
- $name"
    fi
    cat "$log"
    {
        echo "### $name: $status"
        echo '```'
        cat "$log"
        echo '```'
        echo
    } >> "$REPORT"
    echo "--- $status: $name"
}

section() {
    echo
    echo "## $1" >> "$REPORT"
    echo >> "$REPORT"
}

# quiet PROGRAM FLAGS...: a training run whose per-step lines go to a log beside its out dir
quiet() {
    local out="" prev="" arg
    for arg in "$@"; do
        [ "$prev" = "--out" ] && out=$arg
        prev=$arg
    done
    "$@" > "${out:-$R}.log" 2>&1 || { echo "run failed: $*"; tail -5 "${out:-$R}.log"; return 1; }
}

# ---------------------------------------------------------------------------
# 1. the PyTorch fixtures
if [ "$DRY" != 1 ]; then
    section "1. train_llama_cu against the PyTorch fixtures (fp32, TF32 off)"
    fixtures=$(for d in "$FIX"/*/; do [ -f "$d/debug_state.bin" ] && echo "${d%/}"; done)
    check "fixtures: logits, loss, gradients, 10 steps, final parameters, TVR" "$FIXTURE_TEST" $fixtures
fi

# ---------------------------------------------------------------------------
# 2. GPU against CPU, same model.bin, same data, same flags
section "2. train_llama_cu against train_llama: 10 steps from the same model.bin"

# compare_runs NAME DIR_GPU DIR_CPU: every log column and both checkpoint files
compare_runs() {
    local g=$2 c=$3
    $CMP csv "$g/train.csv" "$c/train.csv" step loss,lr,grad_norm $TOL_STEP &&
        $CMP csv "$g/val.csv" "$c/val.csv" step val_loss $TOL_STEP &&
        $CMP csv "$g/weights.csv" "$c/weights.csv" step,layer,matrix std,rescaled=exact $TOL_STATS &&
        $CMP csv "$g/activations.csv" "$c/activations.csv" step,layer max_abs,rms $TOL_STATS &&
        $CMP model "$g/model.bin" "$c/model.bin" $TOL_PARAMS &&
        $CMP state "$g/state.bin" "$c/state.bin" "$c/model.bin" $TOL_PARAMS $TOL_PARAMS
}

# gpu_vs_cpu NAME MODEL.BIN FLAGS...: train both from MODEL.BIN with FLAGS, compare
gpu_vs_cpu() {
    local name=$1 model=$2
    shift 2
    quiet "$GPU" --init-from "$model" "$@" --out "$R/$name.gpu" &&
        quiet "$CPU" --init-from "$model" "$@" --out "$R/$name.cpu" &&
        compare_runs "$name" "$R/$name.gpu" "$R/$name.cpu"
}

SMALL_FLAGS=(--train "$BYTES" --val "$BYTES" --val-every 5 --val-batches 2 --stats-every 1 --steps 10 --lr 3e-3
             --warmup 3 --tvr-every 5 --checkpoint-every 5)
check "GQA (NH 4, NKV 2), LIR model, TVR target 0.01" \
    gpu_vs_cpu gqa "$FIX/gqa_lir_tvr/model.bin" "${SMALL_FLAGS[@]}" --batch 4 --seq-len 16 --tvr-target 0.01
check "MQA (NKV 1), 3 layers, depth-scaled TVR, no clipping" \
    gpu_vs_cpu mqa "$FIX/mqa_residual_tvrdepth/model.bin" "${SMALL_FLAGS[@]}" --batch 2 --seq-len 32 \
    --tvr-target 0.01 --tvr-depth-scaled 1 --grad-clip 0
check "MHA, constant schedule, hard clipping" \
    gpu_vs_cpu mha "$FIX/mha_clip_constant/model.bin" "${SMALL_FLAGS[@]}" --batch 2 --seq-len 24 \
    --schedule constant --grad-clip 0.1 --tvr-target 0.02
check "GQA, --grad-accum 2 x batch 2: two micro-steps a step (docs/parallel.md)" \
    gpu_vs_cpu gqa_k2 "$FIX/gqa_lir_tvr/model.bin" "${SMALL_FLAGS[@]}" --batch 2 --grad-accum 2 --seq-len 16 \
    --tvr-target 0.01

# a fresh model of Tiny Shakespeare's real shape (V 32000, T 64 > one warp, hs 32), made by
# both programs from the same seed: the initial model.bin must be the same bits
SHK=(--train 'data/tinyshakespeare/llama2_train_*.bin' --val 'data/tinyshakespeare/llama2_val_*.bin'
     --layers 2 --dim 128 --heads 4 --kv-heads 2 --seq-len 64 --vocab 32000 --init lir --init-std 0.02 --seed 7)
fresh_init() {
    quiet "$GPU" "${SHK[@]}" --steps 0 --out "$R/shk_init.gpu" &&
        quiet "$CPU" "${SHK[@]}" --steps 0 --out "$R/shk_init.cpu" &&
        cmp "$R/shk_init.gpu/model.bin" "$R/shk_init.cpu/model.bin" &&
        echo "  fresh LIR init: model.bin identical, bit for bit"
}
check "fresh init (LIR, seed 7): identical model.bin" fresh_init
# GPU_SKIP_LARGE=1 leaves this one out (the emulated suite's shuffled schedules: it is ~40% of
# the emulated time; the in-order schedule runs it)
[ "${GPU_SKIP_LARGE:-0}" = 1 ] || check "Tiny Shakespeare shape (V 32000, C 128, T 64), TVR" \
    gpu_vs_cpu shk "$R/shk_init.cpu/model.bin" "${SHK[@]:0:4}" --batch 4 --seq-len 64 --steps 10 --lr 1e-3 \
    --warmup 3 --val-every 5 --val-batches 2 --stats-every 1 --tvr-target 0.01 --tvr-every 5

# ---------------------------------------------------------------------------
# 3. checkpoints move between the programs
section "3. checkpoints: round trips and resume"
RT=(--train "$BYTES" --val '' --batch 4 --seq-len 16 --lr 3e-3 --warmup 2 --schedule constant --tvr-target 0.01
    --tvr-every 3 --stats-every 1)
RT_MODEL="$FIX/gqa_lir_tvr/model.bin"

# leg PROGRAM FROM_DIR TO_DIR STEPS: copy FROM_DIR to TO_DIR and resume there up to STEPS
leg() {
    rm -rf "$3" && cp -r "$2" "$3" && quiet "$1" --resume "$3" "${RT[@]}" --steps "$4" --out "$3"
}
# round_trip A B: A 4 steps -> B to 8 -> A to 12, against A straight to 12
round_trip() {
    local a=$1 b=$2 tag=$3
    quiet "$a" --init-from "$RT_MODEL" "${RT[@]}" --steps 4 --out "$R/rt_$tag.1" &&
        leg "$b" "$R/rt_$tag.1" "$R/rt_$tag.2" 8 &&
        leg "$a" "$R/rt_$tag.2" "$R/rt_$tag.3" 12 &&
        quiet "$a" --init-from "$RT_MODEL" "${RT[@]}" --steps 12 --out "$R/rt_$tag.straight" &&
        $CMP csv "$R/rt_$tag.3/train.csv" "$R/rt_$tag.straight/train.csv" step loss,grad_norm $TOL_STEP &&
        $CMP csv "$R/rt_$tag.3/weights.csv" "$R/rt_$tag.straight/weights.csv" step,layer,matrix std,rescaled=exact $TOL_STATS &&
        $CMP model "$R/rt_$tag.3/model.bin" "$R/rt_$tag.straight/model.bin" $TOL_PARAMS &&
        $CMP state "$R/rt_$tag.3/state.bin" "$R/rt_$tag.straight/state.bin" "$RT_MODEL" $TOL_PARAMS $TOL_PARAMS
}
check "CPU 4 steps -> GPU to 8 -> CPU to 12 vs CPU straight 12" round_trip "$CPU" "$GPU" cgc
check "GPU 4 steps -> CPU to 8 -> GPU to 12 vs GPU straight 12" round_trip "$GPU" "$CPU" gcg

gpu_bitwise() {
    quiet "$GPU" --init-from "$RT_MODEL" "${RT[@]}" --steps 8 --out "$R/bit.a" &&
        quiet "$GPU" --init-from "$RT_MODEL" "${RT[@]}" --steps 8 --out "$R/bit.b" &&
        quiet "$GPU" --init-from "$RT_MODEL" "${RT[@]}" --steps 4 --out "$R/bit.c" &&
        quiet "$GPU" --resume "$R/bit.c" "${RT[@]}" --steps 8 &&
        cmp "$R/bit.a/model.bin" "$R/bit.b/model.bin" && echo "  rerun: model.bin identical" &&
        cmp "$R/bit.a/state.bin" "$R/bit.b/state.bin" && echo "  rerun: state.bin identical" &&
        cmp "$R/bit.a/model.bin" "$R/bit.c/model.bin" && echo "  4 steps + resume to 8 = straight 8: model.bin identical" &&
        cmp "$R/bit.a/state.bin" "$R/bit.c/state.bin" && echo "  4 steps + resume to 8 = straight 8: state.bin identical"
}
check "GPU rerun and GPU resume: bit for bit" gpu_bitwise

# ---------------------------------------------------------------------------
# 4. compute-sanitizer
if [ "$DRY" != 1 ] && [ "$EMU" != 1 ]; then
    section "4. compute-sanitizer on a tiny run (2 steps, every kernel: TVR, stats, validation, checkpoint)"
    SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    TINY=(--init-from "$RT_MODEL" --train "$BYTES" --val "$BYTES" --batch 2 --seq-len 16 --steps 2 --warmup 1
          --tvr-target 0.001 --tvr-every 1 --stats-every 1 --val-every 1 --val-batches 1)
    sanitize() {
        [ -x "$SAN" ] || { echo "compute-sanitizer not found"; return 1; }
        timeout "${SANITIZER_TIMEOUT:-120}" "$SAN" --tool "$1" --error-exitcode 1 ${2:+$2} "$GPU" "${TINY[@]}" --out "$R/san_$1" > "$R/san_$1.log" 2>&1
        local rc=$?
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|error" "$R/san_$1.log" | tail -5
        return $rc
    }
    check "memcheck (with leak check)" sanitize memcheck "--leak-check full"
    check "racecheck" sanitize racecheck
    check "synccheck" sanitize synccheck
fi

# ---------------------------------------------------------------------------
# 5. benchmark
if [ "$DRY" != 1 ] && [ "$EMU" != 1 ]; then
    section "5. benchmark: Tiny Shakespeare shards, 30 steps, mean of steps 6-30"
    BENCH_COMMON=(--train 'data/tinyshakespeare/llama2_train_*.bin' --val '' --vocab 32000 --steps 30 --warmup 40
                  --stats-every 0 --val-every 0 --init lir --init-std 0.006)
    TINY_SIZE=(--layers 4 --dim 128 --heads 4 --kv-heads 2 --ffn 352 --batch 8 --seq-len 128)
    MID_SIZE=(--layers 8 --dim 512 --heads 8 --kv-heads 4 --ffn 1408 --batch 8 --seq-len 256)
    bench() {
        echo "| model | precision | ms/step | tokens/s | TFLOP/s (6N + 6LCT per token) |"
        echo "|---|---|---|---|---|"
        local size flags prec
        for size in tiny mid; do
            if [ $size = tiny ]; then flags=("${TINY_SIZE[@]}"); else flags=("${MID_SIZE[@]}"); fi
            for prec in 0 1; do
                quiet "$GPU" "${BENCH_COMMON[@]}" "${flags[@]}" --tf32 $prec --out "$R/bench_${size}_$prec" || return 1
                read -r ms tok n < <($CMP bench "$R/bench_${size}_$prec/train.csv" 5) || return 1
                local flops
                flops=$($PY -c "
import sys
L,C,NH,NKV,F,T=[int(x) for x in sys.argv[1:7]]; V=32000; kvd=NKV*C//NH
N=L*(2*C*C+2*kvd*C+3*F*C)+V*C
print('%.2f' % ((6*N+6*L*C*T)*float(sys.argv[7])/1e12))" "${flags[1]}" "${flags[3]}" "${flags[5]}" "${flags[7]}" \
                    "${flags[9]}" "${flags[13]}" "$tok")
                echo "| $size (${flags[*]}) | $([ $prec = 1 ] && echo TF32 || echo fp32) | $ms | $tok | $flops |"
            done
        done
        echo
        echo "CPU (./train_llama, all cores of this machine, 3 steps) for the ratio:"
        for size in tiny mid; do
            if [ $size = tiny ]; then flags=("${TINY_SIZE[@]}"); else flags=("${MID_SIZE[@]}"); fi
            quiet "$CPU" "${BENCH_COMMON[@]}" "${flags[@]}" --steps 3 --out "$R/bench_${size}_cpu" || return 1
            read -r ms tok n < <($CMP bench "$R/bench_${size}_cpu/train.csv" 1) || return 1
            echo "  $size: $ms ms/step, $tok tokens/s"
        done
    }
    check "tokens/s and ms/step" bench
fi

# ---------------------------------------------------------------------------
{
    echo "## Summary"
    echo
    echo "$passed passed, $failed failed$([ -n "$failures" ] && echo ":")$failures"
} >> "$REPORT"
echo
echo "report: $REPORT"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
