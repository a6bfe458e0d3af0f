#!/usr/bin/env bash
# dev/gpu_check.sh: everything a lent GPU machine should tell us, in one command that cannot
# waste its minutes. `make gpu-check GPU_OUT=DIR` runs it; docs/gpu.md says how to read DIR.
#
# The machine has no network and ~10 minutes a command: this script needs only the working
# tree, make, nvcc and python3's standard library. Each step runs under its own timeout and
# writes into DIR as it goes, so a step that hangs or a session that ends early still leaves
# every earlier result. DIR ends with report.md (read it first) and small CSVs; checkpoints
# and logs of long runs stay in the scratch folder build/gpu_check/ (not copied back).
#
#   1. build: every GPU program, test and workbench (make -j)
#   2. the LLaMA GPU tests: fixtures against PyTorch, GPU vs CPU, checkpoint round trips,
#      compute-sanitizer memcheck/racecheck/synccheck, tokens/s (test/test_llama_gpu.sh), and
#      --precision bf16 of both trainers (test/test_gpu_bf16.sh)
#   3. the GPT-2 GPU tests, with compute-sanitizer memcheck (test/test_gpt2_gpu.sh)
#   4. the dev/cuda kernel workbenches: correctness of each version, and their timings
#   5. benchmarks: ms/step, tokens/s and MFU of the LLaMA sizes (tiny, mid) and GPT-2 124M,
#      fp32, TF32 and --precision bf16; and when LLMC_DIR names a checkout of
#      karpathy/llm.c, its train_gpt2cu on the same shards and shapes in the same run, and the ratio
#   6. cuDNN attention (docs/gpu.md, "cuDNN attention"): the USE_CUDNN=1 trainers built beside
#      the others; test/test_cudnn_att (cuDNN against the flash kernels on random tensors: out,
#      log-sum-exp, dq, dk, dv, GQA, both layouts); then --attention cudnn against --attention
#      flash on the three shapes of 5: the losses must agree to a bf16-level tolerance, and both
#      are timed; a rerun bit for bit
#
# Paths to carry to the machine beside the working tree (ignored, so a plain copy lacks them;
# `make gpu-check-prepare` fetches them on a machine with network and lists them):
# build/cudnn-frontend (cudnn-frontend's headers, for 6; without it 6 is skipped with a line saying
# so) and LLMC_DIR if set. cuDNN itself: the toolkit's, else python3's nvidia.cudnn (pip's
# nvidia-cudnn-cu13, which PyTorch brings).
#
# GPU_CHECK_EMULATE=1: the same steps with the CUDA programs built for the CPU (test/emu/), small
# shapes, no compute-sanitizer and no llm.c: the script's own end-to-end test, which .ci/run
# runs on every landing. Its timings are the emulator's and are labelled so.
# Estimated on one H200 (16 cores): build 2 min, LLaMA tests 2 min, GPT-2 tests 1 min,
# workbenches 0.5 min, benchmarks 1.5 min (+1.5 min with llm.c), cuDNN 2 min: about 10 minutes.
set -u
cd "$(dirname "$0")/.."
OUT=${GPU_OUT:-out/gpu_check}
EMU=${GPU_CHECK_EMULATE:-0}
JOBS=${JOBS:-$(nproc)}
W=build/gpu_check
rm -rf "$OUT" "$W"
mkdir -p "$OUT" "$W"
REPORT=$OUT/report.md
STEPS=$OUT/steps.csv
BENCH=$OUT/bench.csv
echo "step,status,seconds,limit_s" > "$STEPS"
echo "program,model,precision,batch,seq_len,ms_per_step,tokens_per_s,tflops,mfu_percent,note" > "$BENCH"
t_start=$(date +%s)
passed=0
failed=0

if [ "$EMU" = 1 ]; then
    LLAMA_GPU=./train_llama_emu GPT2_GPU=./train_gpt2_emu
    device="cuda_emu: the CUDA programs built for the CPU (test/emu/), EMU_SCHED=${EMU_SCHED:-inorder}"
else
    LLAMA_GPU=./train_llama_cu GPT2_GPU=./train_gpt2_cu
    device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
    [ -n "$device" ] || { echo "gpu-check: no GPU found (nvidia-smi lists none); GPU_CHECK_EMULATE=1 runs it emulated" >&2; exit 1; }
fi
# step 6's needs: empty cudnn_skip when it can run; CUDNN_MAKE names a cuDNN outside the toolkit
cudnn_skip="" CUDNN_MAKE="" CUDNN_LIB=""
if [ "$EMU" = 1 ]; then
    cudnn_skip="cuDNN cannot run under the emulator (.ci/run compiles the USE_CUDNN=1 build instead)"
elif ! ls build/cudnn-frontend/.done-* > /dev/null 2>&1; then
    cudnn_skip="build/cudnn-frontend is missing (this machine cannot download it: run make gpu-check-prepare where there is network and carry build/cudnn-frontend)"
elif [ ! -f "$(dirname "$(command -v nvcc)")/../include/cudnn.h" ]; then
    CUDNN_LIB=$(python3 -c 'import nvidia.cudnn as c; print(list(c.__path__)[0])' 2>/dev/null)
    if [ -n "$CUDNN_LIB" ] && [ -f "$CUDNN_LIB/include/cudnn.h" ]; then
        CUDNN_MAKE="CUDNN_DIR=$CUDNN_LIB"
    else
        cudnn_skip="no cuDNN found (neither the toolkit's include/cudnn.h nor python3's nvidia.cudnn package)"
    fi
fi
echo "gpu-check: carried paths (make gpu-check-prepare lists them): build/cudnn-frontend $(ls build/cudnn-frontend/.done-* > /dev/null 2>&1 && echo present || echo absent)${LLMC_DIR:+, $LLMC_DIR}"
{
    echo "# gpu-check report"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "- device: $device"
    echo "- nvcc: $(nvcc --version 2>/dev/null | grep release || echo 'not found')"
    echo "- host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    [ "$EMU" = 1 ] && echo "- EMULATED: nothing here ran on a GPU; every time below is the emulator's, not a speed"
    echo "- carried paths: build/cudnn-frontend $(ls build/cudnn-frontend/.done-* > /dev/null 2>&1 && echo present || echo absent)${LLMC_DIR:+, $LLMC_DIR}"
    echo "- cuDNN attention: ${cudnn_skip:+skipped: }${cudnn_skip:-step 6, cuDNN ${CUDNN_MAKE:-of the toolkit}}"
    echo
    echo "| step | status | seconds (limit) |"
    echo "|---|---|---|"
} > "$REPORT"

# step NAME LIMIT_S COMMAND...: run it under a timeout, log to DIR/NAME.log, one row in the report
# GPU_CHECK_STEPS="NAME ...": only those steps run (a session with minutes for one part, e.g.
# GPU_CHECK_STEPS="cudnn_build cudnn_test cudnn_attention", about 3 minutes); the rest say so
step() {
    local name=$1 limit=$2 start status rc
    shift 2
    if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then
        echo "=== $name: not in GPU_CHECK_STEPS"
        echo "| $name | not run (GPU_CHECK_STEPS) | - |" >> "$REPORT"
        return 0
    fi
    echo "=== $name (limit ${limit}s)"
    start=$(date +%s)
    if declare -F "$1" > /dev/null; then # a function of this script: timeout needs a program
        timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" > "$OUT/$name.log" 2>&1
    else
        timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    fi
    rc=$?
    if [ $rc -eq 0 ]; then
        status=ok
        passed=$((passed + 1))
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        status="TIMEOUT"
        failed=$((failed + 1))
    else
        status="FAIL (exit $rc)"
        failed=$((failed + 1))
    fi
    local secs=$(( $(date +%s) - start ))
    echo "$name,$status,$secs,$limit" >> "$STEPS"
    echo "| $name | $status | $secs ($limit) |" >> "$REPORT"
    tail -3 "$OUT/$name.log"
    echo "--- $status: $name (${secs}s)"
}

# ---------------------------------------------------------------------------
# 1. build
if [ "$EMU" = 1 ]; then
    step build 900 make -j"$JOBS" train_llama train_gpt2 build/test_llama emu build/test_llama_gpu_host build/test_gpt2_gpu_host
else
    step build 300 make -j"$JOBS" train_llama train_gpt2 build/test_llama cuda
fi

# ---------------------------------------------------------------------------
# 2-3. the GPU test scripts (their own reports come back; their checkpoints stay in $W)
if [ "$EMU" = 1 ]; then
    step llama_tests 600 env GPU_EMULATED=1 GPU_SKIP_LARGE=1 GPU_REPORT_DIR=$W/llama bash test/test_llama_gpu.sh
    step llama_bf16 300 env GPU_EMULATED=1 GPU_REPORT_DIR=$W/bf16 bash test/test_gpu_bf16.sh
    step gpt2_tests 300 env GPU_EMULATED=1 GPU_REPORT_DIR=$W/gpt2 bash test/test_gpt2_gpu.sh
else
    step llama_tests 420 env GPU_REPORT_DIR=$W/llama bash test/test_llama_gpu.sh
    # --precision bf16 against train_llama's bf16 and against fp32 (docs/gpu.md, "bf16")
    step llama_bf16 120 env GPU_REPORT_DIR=$W/bf16 bash test/test_gpu_bf16.sh
    step gpt2_tests 240 env GPU_REPORT_DIR=$W/gpt2 bash test/test_gpt2_gpu.sh
    # data parallelism on real GPUs over NCCL (docs/parallel.md): 2 ranks, one GPU each
    if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] && [ -x train_llama_cu_mpi ] && command -v mpirun >/dev/null; then
        step mpi_2gpu 300 env GPU_MPI_REAL=1 bash test/test_mpi_gpu_emu.sh
    fi
fi
# text samples and greedy generation on the GPU against train_llama's KV cache, token for token
step samples 120 env GPU_PROGRAM=$([ "$EMU" = 1 ] && echo ./train_llama_emu || echo ./train_llama_cu) \
    GPU2_PROGRAM=$([ "$EMU" = 1 ] && echo ./train_gpt2_emu || echo ./train_gpt2_cu) \
    bash test/test_samples.sh
cp "$W/llama/report.md" "$OUT"/llama_report.md 2>/dev/null
cp "$W/gpt2/report.md" "$OUT"/gpt2_report.md 2>/dev/null

# ---------------------------------------------------------------------------
# 4. the kernel workbenches
workbenches() {
    local dir=dev/cuda rc=0 w
    [ "$EMU" = 1 ] && dir=build/emu/dev/cuda
    for w in "$dir"/*; do
        [ -x "$w" ] && [ -f "$w" ] || continue
        echo "== $(basename "$w")"
        timeout 120 "$w" || { echo "   <-- FAIL: $(basename "$w")"; rc=1; }
    done
    return $rc
}
export -f workbenches
export EMU
step workbenches 600 workbenches

# ---------------------------------------------------------------------------
# 5. benchmarks
# peak dense FLOP/s of the device for MFU (H100 SXM and H200 share them): fp32 on CUDA cores,
# TF32 and bf16 on tensor cores, from NVIDIA's data sheets
peak() { # PRECISION
    case "$device:$1" in
    *H100*:fp32 | *H200*:fp32) echo 66.9e12 ;;
    *H100*:tf32 | *H200*:tf32) echo 494.7e12 ;;
    *H100*:bf16 | *H200*:bf16) echo 989.4e12 ;;
    *) echo 0 ;;
    esac
}
# bench_row PROGRAM MODEL PRECISION B T MS TOK FLOPS_PER_TOKEN NOTE: one line of bench.csv
bench_row() {
    python3 - "$@" "$(peak "$3")" >> "$BENCH" <<'PY'
import sys
prog, model, prec, B, T, ms, tok, fpt, note, peak = sys.argv[1:]
tflops = float(tok) * float(fpt) / 1e12
mfu = 100 * tflops * 1e12 / float(peak) if float(peak) > 0 else float('nan')
print('%s,%s,%s,%s,%s,%.2f,%.0f,%.2f,%.1f,%s' % (prog, model, prec, B, T, float(ms), float(tok), tflops, mfu, note))
PY
}
# mean ms/step and tokens/s of a run's train.csv after its first SKIP steps
run_speed() { python3 test/test_llama_gpu_compare.py bench "$1/train.csv" "$2"; }

benchmarks() {
    local note=""
    [ "$EMU" = 1 ] && note="EMULATED (not a speed)"
    local steps=30 skip=5 sizes="tiny mid" gpt_steps=20
    [ "$EMU" = 1 ] && steps=3 skip=1 sizes="tiny" gpt_steps=2
    # flops per token: 6 per matmul parameter (forward + backward; the LLaMA's token embedding
    # is a lookup, its untied lm_head a matmul), plus attention's two T x T products, 12 L C T
    # (forward 4 L C T, backward twice that), as llm.c counts them. GPT-2 below counts every
    # parameter (tied wte, wpe), as llm.c does, so that the two MFUs compare.
    local size prec flags ms tok n fpt
    for size in $sizes; do
        if [ $size = tiny ]; then flags=(--layers 4 --dim 128 --heads 4 --kv-heads 2 --ffn 352 --batch 8 --seq-len 128)
        else flags=(--layers 8 --dim 512 --heads 8 --kv-heads 4 --ffn 1408 --batch 8 --seq-len 256); fi
        [ "$EMU" = 1 ] && flags=(--layers 2 --dim 64 --heads 4 --kv-heads 2 --ffn 176 --batch 2 --seq-len 64)
        for prec in fp32 tf32 bf16; do # bf16: --precision bf16 (cuBLAS on bf16 inputs), TF32 off
            "$LLAMA_GPU" --train 'data/tinyshakespeare/llama2_train_*.bin' --val '' --vocab 32000 --steps $steps \
                --warmup 40 --init lir --init-std 0.006 "${flags[@]}" --tf32 $([ $prec = tf32 ] && echo 1 || echo 0) \
                --precision $([ $prec = bf16 ] && echo bf16 || echo fp32) \
                --out "$W/bench_llama_${size}_$prec" > "$W/bench_llama_${size}_$prec.log" 2>&1 || return 1
            read -r ms tok n < <(run_speed "$W/bench_llama_${size}_$prec" $skip) || return 1
            fpt=$(python3 -c "
import sys
L, C, NH, NKV, F, B, T = [int(x) for x in sys.argv[1:]]
V = 32000; kvd = NKV * C // NH
N = L * (2 * C * C + 2 * kvd * C + 3 * F * C) + V * C
print(6 * N + 12 * L * C * T)" "${flags[1]}" "${flags[3]}" "${flags[5]}" "${flags[7]}" "${flags[9]}" "${flags[11]}" "${flags[13]}")
            bench_row "$(basename "$LLAMA_GPU")" "llama_$size" $prec "${flags[11]}" "${flags[13]}" "$ms" "$tok" "$fpt" "$note"
        done
    done
    # GPT-2 124M (12 x 768, V 50257, T 1024) on the Tiny Shakespeare GPT-2 shards
    local g=(--layers 12 --dim 768 --heads 12 --vocab 50257 --seq-len 1024 --batch 8) gfpt
    [ "$EMU" = 1 ] && g=(--layers 2 --dim 64 --heads 4 --vocab 50257 --seq-len 64 --batch 2)
    gfpt=$(python3 -c "
import sys
L, C, T = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]); V = 50304
N = L * 12 * C * C + V * C + T * C
print(6 * N + 12 * L * C * T)" "${g[1]}" "${g[3]}" "${g[9]}")
    for prec in fp32 tf32 bf16; do
        "$GPT2_GPU" --train 'data/tinyshakespeare/gpt2_train_*.bin' --val '' --steps $gpt_steps --warmup 10 "${g[@]}" \
            --tf32 $([ $prec = tf32 ] && echo 1 || echo 0) --precision $([ $prec = bf16 ] && echo bf16 || echo fp32) \
            --out "$W/bench_gpt2_$prec" > "$W/bench_gpt2_$prec.log" 2>&1 || return 1
        read -r ms tok n < <(run_speed "$W/bench_gpt2_$prec" $skip) || return 1
        bench_row "$(basename "$GPT2_GPU")" gpt2_124M $prec "${g[11]}" "${g[9]}" "$ms" "$tok" "$gfpt" "$note${note:+ }$( [ "$EMU" = 1 ] && echo '2 x 64 shape')"
    done
    # llm.c on the same shards and shape, when a checkout is named
    if [ "$EMU" != 1 ] && [ -n "${LLMC_DIR:-}" ]; then
        dev/llmc_bench.sh "$LLMC_DIR" "$W/llmc" "$gpt_steps" > "$W/llmc.log" 2>&1 || { tail -20 "$W/llmc.log"; return 1; }
        local line
        while read -r line; do # "PRECISION MS TOK" per build
            set -- $line
            bench_row "llm.c train_gpt2cu" gpt2_124M "$1" 8 1024 "$2" "$3" "$gfpt" "llm.c $(git -C "$LLMC_DIR" rev-parse --short HEAD 2>/dev/null)"
        done < "$W/llmc/speeds.txt"
    elif [ "$EMU" != 1 ]; then
        echo "llm.c: LLMC_DIR not set; no comparison (see docs/gpu.md)"
    fi
    column -s, -t < "$BENCH"
}
export -f peak bench_row run_speed benchmarks
export EMU W OUT BENCH device LLAMA_GPU GPT2_GPU
step benchmarks $([ "$EMU" = 1 ] && echo 600 || echo 300) benchmarks

# ---------------------------------------------------------------------------
# 6. cuDNN attention: build/train_*_cu_cudnn (make cuda-cudnn) run --attention flash and
# --attention cudnn from the same fresh model; bench.csv gets a row for each (precision fp32,
# the matmuls' and the rest of the program's; the note names the attention).
# Tolerance, from cuDNN taking q, k, v, out and dout in bf16 (relative rounding 2^-9 each):
# the first step's loss (the forward alone) to 2e-3 relative and its gradient norm (the
# backward) to 2e-2; every later step's loss to 2e-2 (the runs' paths drift apart through
# AdamW). Measured: nothing yet (no GPU session has run this).
cudnn_attention() {
    local size flags a d n=20 skip=5 rc=0 ms tok m fpt
    for size in llama_tiny llama_mid gpt2_124M; do
        case $size in
        llama_tiny) flags=(build/train_llama_cu_cudnn --layers 4 --dim 128 --heads 4 --kv-heads 2 --ffn 352 --batch 8 --seq-len 128) ;;
        llama_mid) flags=(build/train_llama_cu_cudnn --layers 8 --dim 512 --heads 8 --kv-heads 4 --ffn 1408 --batch 8 --seq-len 256) ;;
        gpt2_124M) flags=(build/train_gpt2_cu_cudnn --layers 12 --dim 768 --heads 12 --vocab 50257 --batch 8 --seq-len 1024) ;;
        esac
        local data='data/tinyshakespeare/llama2_train_*.bin' extra=(--vocab 32000 --init lir --init-std 0.006)
        [ $size = gpt2_124M ] && data='data/tinyshakespeare/gpt2_train_*.bin' extra=()
        for a in flash cudnn cudnn_rerun; do
            d=$W/cudnn_${size}_$a
            "${flags[@]}" --train "$data" --val '' --steps $n --warmup 10 "${extra[@]}" --tf32 0 \
                --attention ${a%_rerun} --out "$d" > "$d.log" 2>&1 || { echo "$size --attention $a failed:"; tail -5 "$d.log"; return 1; }
            [ $a = cudnn_rerun ] && [ $size != llama_tiny ] && break
        done
        fpt=$(python3 -c "
import sys
size, L, C, NH, NKV, F, T = sys.argv[1], *[int(x) for x in sys.argv[2:]]
kvd = NKV * C // NH  # flops per token as in 5: 6 per matmul parameter, 12 L C T for attention
N = L * (2 * C * C + 2 * kvd * C + 3 * F * C) + 32000 * C if size != 'gpt2_124M' else L * 12 * C * C + 50304 * C + T * C
print(6 * N + 12 * L * C * T)" $size "${flags[2]}" "${flags[4]}" "${flags[6]}" \
            "$([ $size = gpt2_124M ] && echo 12 || echo "${flags[8]}")" "$([ $size = gpt2_124M ] && echo 0 || echo "${flags[10]}")" "${flags[-1]}")
        for a in flash cudnn; do
            read -r ms tok m < <(run_speed "$W/cudnn_${size}_$a" $skip) || return 1
            bench_row "$(basename "${flags[0]}")" "$size" fp32 "${flags[-3]}" "${flags[-1]}" "$ms" "$tok" "$fpt" "--attention $a"
            echo "$size --attention $a: $ms ms/step, $tok tokens/s"
        done
        python3 - "$W/cudnn_${size}_flash" "$W/cudnn_${size}_cudnn" "$size" <<'PY' || rc=1
import csv, sys
a, b = ([r for r in csv.DictReader(open(d + '/train.csv'))] for d in sys.argv[1:3])
assert len(a) == len(b) > 1, (len(a), len(b))
rel = lambda x, y, c: abs(float(x[c]) - float(y[c])) / abs(float(x[c]))
first_loss, first_norm = rel(a[0], b[0], 'loss'), rel(a[0], b[0], 'grad_norm')
later = max(rel(x, y, 'loss') for x, y in zip(a[1:], b[1:]))
ok = first_loss <= 2e-3 and first_norm <= 2e-2 and later <= 2e-2
print('%s cudnn vs flash: step 1 loss %.2e (tol 2e-3), grad_norm %.2e (tol 2e-2); steps 2-%d loss max %.2e (tol 2e-2): %s'
      % (sys.argv[3], first_loss, first_norm, len(a), later, 'ok' if ok else 'FAIL'))
sys.exit(0 if ok else 1)
PY
    done
    # the backward asks cuDNN for its deterministic algorithm: a rerun gives the same weights
    if cmp "$W/cudnn_llama_tiny_cudnn/model.bin" "$W/cudnn_llama_tiny_cudnn_rerun/model.bin"; then
        echo "llama_tiny --attention cudnn: a rerun gives the same model.bin, bit for bit"
    else
        echo "llama_tiny --attention cudnn: a rerun differs (cuDNN's backward is not deterministic here)"; rc=1
    fi
    return $rc
}
if [ -z "$cudnn_skip" ]; then
    step cudnn_build 300 make -j"$JOBS" cuda-cudnn $CUDNN_MAKE
    if [ -x build/train_llama_cu_cudnn ] && [ -x build/train_gpt2_cu_cudnn ]; then
        export -f cudnn_attention
        [ -n "$CUDNN_LIB" ] && export LD_LIBRARY_PATH="$CUDNN_LIB/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        step cudnn_test 120 build/test_cudnn_att
        step cudnn_attention 240 cudnn_attention
    fi
else
    echo "=== cudnn_attention: skipped: $cudnn_skip"
    echo "cudnn_attention,skipped,0,0" >> "$STEPS"
    echo "| cudnn_attention | skipped: $cudnn_skip | - |" >> "$REPORT"
fi

# ---------------------------------------------------------------------------
{
    echo
    echo "## Benchmarks"
    echo
    python3 - "$BENCH" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print('| program | model | precision | B x T | ms/step | tokens/s | TFLOP/s | MFU % | note |')
print('|---|---|---|---|---:|---:|---:|---:|---|')
for r in rows:
    print('| %s | %s | %s | %s x %s | %s | %s | %s | %s | %s |' % (r['program'], r['model'], r['precision'], r['batch'],
          r['seq_len'], r['ms_per_step'], r['tokens_per_s'], r['tflops'], r['mfu_percent'], r['note']))
ours = {(r['model'], r['precision']): r for r in rows if r['program'] in ('train_gpt2_cu', 'train_gpt2_emu')}
for r in rows:
    o = ours.get((r['model'], r['precision'])) or ours.get((r['model'], 'tf32')) # llm.c's bf16: ours, else TF32
    if r['program'].startswith('llm.c') and o:
        print('\nGPT-2 124M: train_gpt2_cu %s / llm.c %s tokens/s = %.2f'
              % (o['precision'], r['precision'], float(o['tokens_per_s']) / float(r['tokens_per_s'])))
PY
    echo
    echo "## Summary"
    echo
    echo "$passed steps passed, $failed failed, $(( $(date +%s) - t_start ))s in all."
    echo "Logs: the *.log files beside this report; the GPU test scripts' own reports: llama_report.md, gpt2_report.md."
} >> "$REPORT"
du -sh "$OUT" | sed 's/^/report size: /'
echo "report: $REPORT"
echo "gpu-check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
