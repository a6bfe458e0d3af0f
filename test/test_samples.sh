#!/usr/bin/env bash
# Text samples and --generate (common/sample.h): samples leave training bitwise as it was,
# samples.txt gets one entry per sample step, greedy generation with the KV cache picks the
# same tokens as recomputing the whole prefix, and a vocabulary that does not fit is said
# clearly. train_llama on the committed Tiny Shakespeare shards with its committed vocabulary.
# Needs: make train_llama train_gpt2 build/test_llama train_llama_emu train_gpt2_emu (make test builds them).
set -u
cd "$(dirname "$0")/.."
fail=0
ok() { echo "  ok   $*"; }
bad() { echo "  FAIL $*"; fail=1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
RUN="./train_llama --layers 2 --dim 32 --heads 4 --kv-heads 2 --seq-len 32 --batch 2 --steps 6 --warmup 2
     --val-every 3 --val-batches 1 --stats-every 2 --tvr-target 0.02 --tvr-every 2 --threads 2"

$RUN --out "$tmp/a" > /dev/null || bad "run without samples failed"
$RUN --sample-every 2 --sample-tokens 8 --out "$tmp/b" > "$tmp/b.out" || bad "run with samples failed"
same=1
for f in model.bin state.bin weights.csv val.csv activations.csv; do cmp -s "$tmp/a/$f" "$tmp/b/$f" || same=0; done
diff <(cut -d, -f1-4 "$tmp/a/train.csv") <(cut -d, -f1-4 "$tmp/b/train.csv") > /dev/null || same=0
[ $same = 1 ] && ok "samples every 2 steps: model.bin, state.bin and the logs are those of the run without" ||
    bad "samples changed the training run"
n=$(grep -c '^step [0-9]*$' "$tmp/b/samples.txt" 2>/dev/null)
[ "$n" = 3 ] && [ "$(grep -c '^--- sample at step' "$tmp/b.out")" = 3 ] &&
    ok "samples.txt and the progress output: samples at steps 2, 4, 6" || bad "samples.txt has ${n:-no} samples, want 3"

# samples.txt after a crash: the samples past the checkpoint's step are dropped on --resume (then
# written again), and a fresh run into the same --out starts it empty
$RUN --steps 2 --sample-every 2 --sample-tokens 4 --out "$tmp/cr" > /dev/null &&
    printf 'step 4\nlost after the checkpoint\n\n' >> "$tmp/cr/samples.txt" &&
    $RUN --steps 4 --sample-every 2 --sample-tokens 4 --resume "$tmp/cr" > /dev/null &&
    [ "$(grep '^step [0-9]*$' "$tmp/cr/samples.txt" | tr '\n' ' ')" = "step 2 step 4 " ] &&
    ! grep -q 'lost after the checkpoint' "$tmp/cr/samples.txt" &&
    ok "--resume drops the samples past the checkpoint's step and writes them again" ||
    bad "samples.txt after a resume: $(grep -c . "$tmp/cr/samples.txt") lines"
$RUN --steps 2 --sample-every 2 --sample-tokens 4 --out "$tmp/cr" > /dev/null &&
    [ "$(grep -c '^step [0-9]*$' "$tmp/cr/samples.txt")" = 1 ] && ok "a fresh run into the same --out starts samples.txt empty" ||
    bad "a fresh run appended to the old samples.txt"

for kv in 1 0; do
    ./train_llama --init-from "$tmp/a/model.bin" --generate 24 --prompt "ROMEO:" --temperature 0 --kv-cache $kv \
        --threads 2 > "$tmp/g$kv.out" || bad "--generate --kv-cache $kv failed"
done
if [ -s "$tmp/g1.out" ] && diff <(grep -v '^generate:' "$tmp/g1.out") <(grep -v '^generate:' "$tmp/g0.out") > /dev/null &&
    grep -q '^ROMEO:' "$tmp/g1.out"; then
    ok "greedy --generate 24 after 'ROMEO:': KV cache and recomputed prefix write the same text"
else
    bad "greedy generation differs with and without the KV cache"
fi
./train_llama --init-from "$tmp/a/model.bin" --generate 8 --prompt "To be" --threads 2 | grep -q '^generate: 8 tokens' &&
    ok "--generate 8 (temperature 1, top-p 0.9) prints its speed" || bad "--generate 8 printed no speed line"

# the GPU program (its emulated build, or GPU_PROGRAM): greedy generation token for token as
# train_llama's KV cache, and samples during training
GPU=${GPU_PROGRAM:-./train_llama_emu}
if [ -x "$GPU" ]; then
    export EMU_SCHED=${EMU_SCHED:-inorder}
    "$GPU" --init-from "$tmp/a/model.bin" --generate 24 --prompt "ROMEO:" --temperature 0 > "$tmp/gpu.out" ||
        bad "$GPU --generate failed"
    if diff <(grep -v '^generate:' "$tmp/g1.out") <(grep -v '^generate:\|^note:' "$tmp/gpu.out") > /dev/null; then
        ok "$GPU greedy --generate 24: the same tokens as train_llama's KV cache"
    else
        bad "$GPU greedy generation differs from train_llama's"
    fi
    "$GPU" --layers 2 --dim 32 --heads 4 --kv-heads 2 --seq-len 32 --batch 2 --steps 2 --val-every 0 --stats-every 0 \
        --sample-every 1 --sample-tokens 6 --out "$tmp/gpu_run" > /dev/null &&
        [ "$(grep -c '^step [0-9]*$' "$tmp/gpu_run/samples.txt")" = 2 ] &&
        ok "$GPU: a sample after each of 2 steps in samples.txt" || bad "$GPU: samples during training"
    # (not about samples, but the GPU program's other up-front check lives here with it)
    "$GPU" --dim 16384 --vocab 65536 --heads 256 --kv-heads 128 --steps 1 --out "$tmp/big" > /dev/null 2> "$tmp/big.err"
    [ $? = 2 ] && grep -q 'needs about .* GiB of GPU memory, more than the device' "$tmp/big.err" &&
        ok "$GPU refuses a model bigger than the device: $(cat "$tmp/big.err")" || bad "$GPU: no memory check"
else
    echo "  skip $GPU: not built (make train_llama_emu)"
fi

# the same for GPT-2: train_gpt2's KV cache against the GPU program's full-window forward
GPU2=${GPU2_PROGRAM:-./train_gpt2_emu}
if [ -x "$GPU2" ]; then
    ./train_gpt2 --layers 2 --dim 32 --heads 4 --seq-len 32 --batch 2 --steps 4 --warmup 1 --val-every 0 \
        --stats-every 0 --threads 2 --out "$tmp/g2" > /dev/null || bad "train_gpt2 run failed"
    ./train_gpt2 --init-from "$tmp/g2/model.bin" --generate 20 --prompt "ROMEO:" --temperature 0 --threads 2 \
        > "$tmp/g2c.out" || bad "train_gpt2 --generate failed"
    "$GPU2" --init-from "$tmp/g2/model.bin" --generate 20 --prompt "ROMEO:" --temperature 0 > "$tmp/g2g.out" ||
        bad "$GPU2 --generate failed"
    if [ -s "$tmp/g2c.out" ] &&
        diff <(grep -v '^generate:\|^note:' "$tmp/g2c.out") <(grep -v '^generate:\|^note:' "$tmp/g2g.out") > /dev/null; then
        ok "$GPU2 greedy --generate 20: the same tokens as train_gpt2's KV cache"
    else
        bad "$GPU2 greedy generation differs from train_gpt2's"
    fi
    "$GPU2" --init-from "$tmp/g2/model.bin" --steps 2 --val-every 0 --stats-every 0 --sample-every 1 --sample-tokens 6 \
        --out "$tmp/g2run" > /dev/null && [ "$(grep -c '^step [0-9]*$' "$tmp/g2run/samples.txt")" = 2 ] &&
        ok "$GPU2: a sample after each of 2 steps in samples.txt" || bad "$GPU2: samples during training"
else
    echo "  skip $GPU2: not built (make train_gpt2_emu)"
fi

./build/test_llama write-shard "$tmp/v64.bin" 2000 64 > /dev/null
./train_llama --layers 1 --dim 16 --heads 2 --kv-heads 1 --vocab 64 --seq-len 16 --steps 0 --train "$tmp/v64.bin" \
    --val "" --out "$tmp/v64" > /dev/null || bad "could not make a model of 64 tokens"
./train_llama --layers 1 --dim 16 --heads 2 --kv-heads 1 --vocab 32000 --seq-len 16 --steps 1 --val-every 0 \
    --train "data/tinyshakespeare/llama2_val_000.bin" --sample-tokens 4 --tokenizer "$tmp/missing.bin" \
    --out "$tmp/m" > "$tmp/m.out" && grep -q '^note: no text samples: --tokenizer .*missing.bin' "$tmp/m.out" &&
    ok "a missing --tokenizer: one note, training goes on" || bad "a missing --tokenizer during training"
expect_error() { # status what command...
    local want=$1 what=$2; shift 2
    "$@" > /dev/null 2> "$tmp/err"; local rc=$?
    if [ $rc = "$want" ] && [ "$(wc -l < "$tmp/err")" = 1 ] && grep -q '^error: ' "$tmp/err"; then
        ok "$what: $(cat "$tmp/err")"
    else
        bad "$what: exit $rc, $(head -c 300 "$tmp/err")"
    fi
}
expect_error 1 "--generate, a model of 64 tokens with the 32000 vocabulary" \
    ./train_llama --init-from "$tmp/v64/model.bin" --generate 4
grep -q 'has 32000 tokens, the model 64' "$tmp/err" || bad "the vocabulary misfit is not what the message says"
expect_error 2 "--generate without a model" ./train_llama --generate 4
[ $fail = 0 ] && echo "all sample and generation checks passed"
exit $fail
