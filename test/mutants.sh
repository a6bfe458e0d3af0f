#!/usr/bin/env bash
# test/mutants.sh: a test of the emulated GPU tests. Each mutant plants one bug of a kind that
# the emulation exists to catch into a scratch copy of the project, builds the emulated test
# programs there, and runs them: the mutant must be caught (some check must fail). The
# unchanged tree must pass the same checks first, or a "caught" would mean nothing.
# `make test-mutants` runs it; .ci/run runs it on every landing. About 3 minutes on 2 cores.
#
#   classifier_barrier  the __syncthreads in train_llama.cu's fused classifier deleted
#   reduce_barrier      the first __syncthreads of block_sum_d (common/cuda_reduce.h) deleted:
#                       two reductions in a row then overwrite a slot another warp still reads
#   flash_causal_off_by_one  the flash forward (common/cuda_attention.h, the default attention)
#                       stops one key short of the diagonal
#   flash_dkv_diagonal  the flash backward's dk, dv kernel skips the diagonal query
#   gemm_transpose      gemm_batched()'s cuBLAS transpose flag for B flipped (common/cuda_common.h)
#   flash_bf16_dout     --precision bf16: the flash dq kernel reads dout unrounded (caught by the
#                       attention workbench's version 4, flash with bf16 inputs)
set -u
cd "$(dirname "$0")/.."
if ! command -v ${NVCC:-nvcc} >/dev/null 2>&1; then
    echo "skipped: no CUDA toolkit (nvcc), so no CUDA headers to build the emulated programs"
    exit 0
fi
W=${MUTANTS_DIR:-build/mutants}
rm -rf "$W"
mkdir -p "$W"
FIX=test/fixtures/llama
FIXTURES="$FIX/gqa_lir_tvr $FIX/mha_clip_constant $FIX/mqa_residual_tvrdepth"
BINS="build/emu/test_emu build/emu/test_llama_gpu build/emu/dev/cuda/attention"

# why LOG: the line that says what failed (a failed check, else the emulator's stop, else the last)
why() {
    { grep -m1 'FAIL' "$1" || grep -v 'invalid configuration' "$1" | grep -m1 'cuda_emu:' || tail -1 "$1"; } |
        sed 's/  */ /g' | cut -c1-200
}

# checks DIR: the detecting checks, run in DIR; prints which failed; status 0 when all pass
checks() {
    local dir=$1 bad=0 s
    for s in "inorder 1" "random 1" "random 2"; do
        set -- $s
        (cd "$dir" && EMU_SCHED=$1 EMU_SEED=$2 build/emu/test_emu) > "$dir/test_emu_$1$2.log" 2>&1 ||
            { echo "    caught by test_emu, EMU_SCHED=$1 EMU_SEED=$2: $(why "$dir/test_emu_$1$2.log")"; bad=1; }
    done
    (cd "$dir" && build/emu/test_llama_gpu $FIXTURES) > "$dir/fixtures.log" 2>&1 ||
        { echo "    caught by the fixture test: $(why "$dir/fixtures.log")"; bad=1; }
    (cd "$dir" && build/emu/dev/cuda/attention 4) > "$dir/attention_bf16.log" 2>&1 ||
        { echo "    caught by dev/cuda/attention 4 (flash, bf16): $(why "$dir/attention_bf16.log")"; bad=1; }
    return $bad
}

# copy_tree NAME: the tracked files into $W/NAME
copy_tree() {
    mkdir -p "$W/$1"
    git ls-files -z | xargs -0 cp --parents -t "$W/$1"
}

# mutate NAME FILE OLD NEW: in $W/NAME/FILE, OLD replaced by NEW (it must occur exactly once)
mutate() {
    python3 - "$W/$1/$2" "$3" "$4" <<'PY'
import sys
path, old, new = sys.argv[1:]
old, new = old.encode().decode('unicode_escape'), new.encode().decode('unicode_escape')
s = open(path).read()
if s.count(old) != 1:
    sys.exit('%s: the text to change occurs %d times, not once' % (path, s.count(old)))
open(path, 'w').write(s.replace(old, new))
PY
}

passed=0
failed=0
echo "control: the unchanged tree"
copy_tree control
make -s -C "$W/control" $BINS > "$W/control/build.log" 2>&1 || { echo "  FAIL: the control does not build"; exit 1; }
if checks "$W/control"; then
    echo "  ok   every check passes on the unchanged tree"
else
    echo "  FAIL: the unchanged tree fails the checks; no mutant can be judged"
    exit 1
fi

mutant() { # NAME FILE OLD NEW
    echo "mutant $1: $2"
    copy_tree "$1"
    mutate "$@" || { failed=$((failed + 1)); return; }
    # the control's build products are reused, less the two test programs and the rewritten
    # sources, so that the mutant is compiled whatever the copies' timestamps say
    cp -r "$W/control/build" "$W/$1/" 2>/dev/null
    rm -rf "$W/$1/build/emu/src" "$W/$1/build/emu/test_emu" "$W/$1/build/emu/test_llama_gpu" \
        "$W/$1/build/emu/dev/cuda/attention"
    if ! make -s -C "$W/$1" $BINS > "$W/$1/build.log" 2>&1; then
        echo "  ok   caught: it no longer builds"
        passed=$((passed + 1))
    elif checks "$W/$1"; then
        echo "  FAIL not caught: every check passed with the bug in place"
        failed=$((failed + 1))
    else
        echo "  ok   caught"
        passed=$((passed + 1))
    fi
}

mutant classifier_barrier train_llama.cu \
    '    __syncthreads(); // every thread has read l[target] before any thread overwrites it' \
    '    // (mutant: no barrier)'
mutant reduce_barrier common/cuda_reduce.h \
    '    v = warp_sum_d(v);\n    __syncthreads();\n' \
    '    v = warp_sum_d(v);\n    // (mutant: no barrier)\n'
mutant flash_causal_off_by_one common/cuda_attention.h \
    'continue; // (every thread still reaches both barriers)\n        int n = min(FA_TILE, t - j0 + 1);' \
    'continue; // (every thread still reaches both barriers)\n        int n = min(FA_TILE, t - j0);'
mutant flash_dkv_diagonal common/cuda_attention.h \
    'int first = j > i0 ? j - i0 : 0' \
    'int first = j >= i0 ? j - i0 + 1 : 0'
mutant gemm_transpose common/cuda_common.h \
    'transB ? CUBLAS_OP_T : CUBLAS_OP_N,' \
    'transB ? CUBLAS_OP_N : CUBLAS_OP_T,'
mutant flash_bf16_dout common/cuda_attention.h \
    'dy[d] = live && d < hs ? fa_in<R>((float)dyt[d]) : 0.0f;' \
    'dy[d] = live && d < hs ? (float)dyt[d] : 0.0f;'

echo "mutants: $passed passed, $failed failed (passed = caught)"
[ "$failed" -eq 0 ]
