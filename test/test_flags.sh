#!/usr/bin/env bash
# One set of flags: the twins (train_llama.c / .cu, train_gpt2.c / .cu) print the same --help
# but for the usage line and the GPU's own --tf32, --attention and --recompute, and the two
# models' training flags (from --batch to --threads, common/train.h) are the same lines,
# defaults and ranges included (--init lists each model's schemes); the GPU programs take
# --precision fp32|bf16 (train_gpt2.cu as a flag of its own). The GPU programs print their help
# without a GPU; the emulated builds (make train_llama_emu train_gpt2_emu) stand in where nvcc
# did not build them.
# Needs: make train_llama train_gpt2 train_llama_emu train_gpt2_emu (make test builds them).
set -u
cd "$(dirname "$0")/.."
fail=0
ok() { echo "  ok   $1"; }
bad() { echo "  FAIL $1"; fail=1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

help_of() { # PROGRAM OUT: its --help, minus the usage line(s) before "flags"
    "$1" --help > "$tmp/raw" 2>&1 || return 1
    sed -n '/^flags (default in brackets):/,$p' "$tmp/raw" > "$2"
}

for m in llama gpt2; do
    help_of ./train_$m "$tmp/$m.c" || { bad "./train_$m --help failed"; continue; }
    for gpu in ./train_${m}_emu ./train_${m}_cu; do
        [ -x "$gpu" ] || continue
        if ! help_of "$gpu" "$tmp/$m.gpu"; then
            [ "$gpu" = ./train_${m}_cu ] && { echo "  skip $gpu --help (it does not start here)"; continue; }
            bad "$gpu --help failed"; continue
        fi
        # the GPU's own flags: --tf32, --attention, --recompute, and for GPT-2 --precision (train_llama
        # has it too)
        own='^  --tf32 \|^  --attention \|^  --recompute '
        [ $m = gpt2 ] && own="$own\\|^  --precision "
        if diff <(cat "$tmp/$m.c") <(grep -v "$own" "$tmp/$m.gpu") > "$tmp/diff"; then
            [ "$(grep -c "$own" "$tmp/$m.gpu")" = $([ $m = gpt2 ] && echo 4 || echo 3) ] &&
                ok "$gpu --help = ./train_$m --help, plus --tf32, --attention, --recompute$([ $m = gpt2 ] && echo ' and --precision')" ||
                bad "$gpu --help lacks one of its own flags ($own)"
        else
            bad "$gpu --help differs from ./train_$m --help: $(head -c 400 "$tmp/diff")"
        fi
    done
done
# --precision: the GPU programs take both values (exit 2 would be a usage error; a run that
# starts and finds no GPU is fine), and refuse others as train_llama does
for gpu in ./train_llama_emu ./train_llama_cu ./train_gpt2_emu ./train_gpt2_cu; do
    [ -x "$gpu" ] || continue
    for p in fp32 bf16; do
        case $gpu in
        *llama*) shape="--kv-heads 1 --vocab 128 --train test/fixtures/llama/shakespeare_bytes_000.bin" ;;
        *) shape="--vocab 256 --train test/fixtures/gpt2_tiny_train.bin" ;;
        esac
        "$gpu" --precision $p --layers 1 --dim 16 --heads 2 --seq-len 8 --batch 1 --steps 0 $shape --val '' \
            --out "$tmp/prec_$p" > "$tmp/prec.log" 2>&1
        rc=$?
        [ $rc != 2 ] && { [ $rc = 0 ] || [ "${gpu%_cu}" != "$gpu" ]; } && ok "$gpu --precision $p accepted (exit $rc)" ||
            bad "$gpu --precision $p: exit $rc: $(tail -1 "$tmp/prec.log")"
    done
    "$gpu" --precision fp16 --steps 0 > "$tmp/prec.log" 2>&1
    rc=$?
    [ $rc = 2 ] && grep -q -- --precision "$tmp/prec.log" && ok "$gpu --precision fp16: exit 2, names the flag" ||
        bad "$gpu --precision fp16: exit $rc: $(tail -1 "$tmp/prec.log")"
done
training() { sed -n '/^  --batch /,/^  --threads /p' "$1" | grep -v '^  --init '; }
n=$(training "$tmp/llama.c" | wc -l)
if [ "$n" -ge 20 ] && diff <(training "$tmp/llama.c") <(training "$tmp/gpt2.c") > "$tmp/diff"; then
    ok "train_llama and train_gpt2: the same $n training flags, defaults and ranges"
else
    bad "training flags differ between the models ($n lines): $(head -c 400 "$tmp/diff")"
fi
exit $fail
