#!/usr/bin/env bash
# train_gpt2.c: PyTorch fixtures, finite differences, TVR/init units, generation (decoder vs
# forward, KV cache vs recompute, samples leave training bitwise unchanged), determinism,
# resume bit for bit, and bad inputs (one-line errors, exit status != 0).
# Needs: make train_gpt2 build/test_gpt2 build/test_gpt2_f64 (make test builds them).
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
fail=0
ok() { echo "  ok   $1"; }
bad() { echo "  FAIL $1"; fail=1; }

./build/test_gpt2 fixtures test/fixtures || fail=1
./build/test_gpt2_f64 gradcheck || fail=1
./build/test_gpt2 units || fail=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
FX=test/fixtures
TINY="--train $FX/gpt2_tiny_train.bin --val-every 0 --layers 2 --dim 32 --heads 4 --vocab 250 --seq-len 16 --batch 2
      --lr 3e-3 --warmup 2 --schedule constant --init lir --tvr-target 0.015 --tvr-every 2 --stats-every 2
      --hist-layer 1 --hist-matrix k"

echo "determinism and resume:"
./train_gpt2 $TINY --steps 6 --out "$tmp/a" --threads 2 >/dev/null || bad "straight run failed"
./train_gpt2 $TINY --steps 6 --out "$tmp/b" --threads 1 >/dev/null || bad "second run failed"
if cmp -s "$tmp/a/model.bin" "$tmp/b/model.bin"; then ok "same seed, 2 threads vs 1: model.bin identical"; else bad "runs differ"; fi
./train_gpt2 $TINY --steps 3 --out "$tmp/c" >/dev/null || bad "3-step run failed"
./train_gpt2 $TINY --steps 6 --resume "$tmp/c" >/dev/null || bad "resume failed"
if cmp -s "$tmp/a/model.bin" "$tmp/c/model.bin" && cmp -s "$tmp/a/state.bin" "$tmp/c/state.bin"; then
  ok "3 steps + resume to 6 == 6 steps (model.bin and state.bin bitwise)"
else
  bad "resumed run differs from the straight one"
fi
if diff <(cut -d, -f1-4 "$tmp/a/train.csv") <(cut -d, -f1-4 "$tmp/c/train.csv") >/dev/null; then
  ok "train.csv losses identical"; else bad "train.csv differs after resume"; fi
./train_gpt2 $TINY --steps 6 --shuffle 1 --out "$tmp/h6" >/dev/null || bad "shuffled run failed"
./train_gpt2 $TINY --steps 3 --shuffle 1 --out "$tmp/h3" >/dev/null || bad "shuffled 3-step run failed"
./train_gpt2 $TINY --steps 6 --shuffle 1 --resume "$tmp/h3" >/dev/null || bad "shuffled resume failed"
if cmp -s "$tmp/h6/model.bin" "$tmp/h3/model.bin" && cmp -s "$tmp/h6/state.bin" "$tmp/h3/state.bin" &&
   ! cmp -s "$tmp/a/model.bin" "$tmp/h6/model.bin"; then
  ok "--shuffle 1: another model than the file order; 3 + resume to 6 == 6 steps (bitwise)"
else
  bad "--shuffle 1: resumed run differs from the straight one, or shuffling changed nothing"
fi
# the logs: weights.csv rows (7 matrices x 2 layers at steps 0, 2, 4, 6), hist.csv, a checkpoint llm.c can read
n=$(grep -c ',k,' "$tmp/a/weights.csv")
[ "$n" -eq 8 ] && ok "weights.csv has q/k/v rows per layer and stats step" || bad "weights.csv: $n k rows, want 8"
[ "$(wc -l < "$tmp/a/hist.csv")" -eq 401 ] && ok "hist.csv: 100 bins x 4 stats steps" || bad "hist.csv row count"
grep -q '^2,1,qkv,.*,1$' "$tmp/a/weights.csv" && ok "TVR step logged as rescaled" || bad "no rescaled row at the TVR step"
# step 0 under LIR (sigma 0.02): layer 1's q has std ~0.02, layer 2's ~0.0141
awk -F, '$1==0 && $2==1 && $3=="q" {a=$5} $1==0 && $2==2 && $3=="q" {b=$5}
  END {exit !(a > 0.018 && a < 0.022 && b > 0.0127 && b < 0.0156)}' "$tmp/a/weights.csv" \
  && ok "weights.csv step 0 std: LIR's 0.02 and 0.02/sqrt(2)" || bad "weights.csv step-0 std values"
./train_gpt2 --train $FX/gpt2_tiny_train.bin --val-every 0 --init-from $FX/gpt2_tiny_model.bin --steps 0 --seq-len 12 --batch 4 \
  --out "$tmp/d" >/dev/null || bad "--init-from failed"
cmp -s "$FX/gpt2_tiny_model.bin" "$tmp/d/model.bin" && ok "llm.c checkpoint round trip (--steps 0)" || bad "checkpoint round trip"

echo "text samples and --generate:"
# a fresh tiny model on the real vocabulary (the fixture model's 250 fit no tokenizer)
SH="--train data/tinyshakespeare/gpt2_train_000.bin --val-every 0 --vocab 50257 --layers 2 --dim 32 --heads 4
    --seq-len 32 --batch 2 --steps 4 --lr 3e-3 --warmup 1 --stats-every 2"
./train_gpt2 $SH --out "$tmp/s0" >/dev/null || bad "run without samples failed"
./train_gpt2 $SH --out "$tmp/s1" --sample-every 2 --sample-tokens 8 >/dev/null || bad "run with samples failed"
./train_gpt2 $SH --out "$tmp/s2" --sample-every 2 --sample-tokens 8 --kv-cache 0 >/dev/null ||
  bad "kv-cache 0 run failed"
same_run() { # dir dir: checkpoint and logs bitwise, train.csv but for its two timing columns
  cmp -s "$1/model.bin" "$2/model.bin" && cmp -s "$1/state.bin" "$2/state.bin" &&
    cmp -s "$1/weights.csv" "$2/weights.csv" && cmp -s "$1/activations.csv" "$2/activations.csv" &&
    diff <(cut -d, -f1-4 "$1/train.csv") <(cut -d, -f1-4 "$2/train.csv") >/dev/null
}
n=$(grep -c '^step ' "$tmp/s1/samples.txt" 2>/dev/null)
if same_run "$tmp/s0" "$tmp/s1" && same_run "$tmp/s0" "$tmp/s2" && [ "$n" = 2 ]; then
  ok "samples at steps 2 and 4 (samples.txt) leave model.bin, state.bin and the CSVs bitwise unchanged"
else
  bad "samples changed the run, or samples.txt has ${n:-no} samples (want 2)"
fi
cmp -s "$tmp/s1/samples.txt" "$tmp/s2/samples.txt" && ok "samples with --kv-cache 1 and 0 identical" ||
  bad "samples differ between --kv-cache 1 and 0"
./train_gpt2 $TINY --steps 2 --out "$tmp/n0" >/dev/null
./train_gpt2 $TINY --steps 2 --out "$tmp/n1" --sample-tokens 8 >"$tmp/n1.log" ||
  bad "run with a misfit vocabulary failed"
if grep -q '^note: no text samples: --tokenizer .* has 50257 tokens, the model 250$' "$tmp/n1.log" &&
   cmp -s "$tmp/n0/model.bin" "$tmp/n1/model.bin"; then
  ok "vocabulary misfit during training: one note, no samples, the same run"
else
  bad "vocabulary misfit during training: $(grep note "$tmp/n1.log")"
fi
GEN="./train_gpt2 --init-from $tmp/s0/model.bin --temperature 0 --prompt ROMEO:"
$GEN --generate 20 --kv-cache 1 >"$tmp/g1" || bad "--generate (kv-cache 1) failed"
$GEN --generate 20 --kv-cache 0 >"$tmp/g0" || bad "--generate (kv-cache 0) failed"
if diff <(grep -v '^generate:' "$tmp/g1") <(grep -v '^generate:' "$tmp/g0") >/dev/null &&
   grep -q '^--- sample at step 0 (20 tokens after 4 of prompt):' "$tmp/g1"; then
  rate() { grep -o '[0-9.]* tokens/s' "$1"; }
  ok "greedy --generate 20: the same tokens with --kv-cache 1 and 0 ($(rate "$tmp/g1") vs $(rate "$tmp/g0"))"
else
  bad "greedy --generate differs between --kv-cache 1 and 0"
fi
$GEN --generate 100 >"$tmp/g2" || bad "--generate 100 failed"
grep -q '^note: 4 prompt + 100 new tokens exceed the model.s 32 positions: generating 28$' "$tmp/g2" &&
  grep -q '(28 tokens after 4 of prompt)' "$tmp/g2" &&
  ok "--generate past max T: said, and cut to 28 (EOT + ROMEO: as 3 tokens + 28 = 32)" ||
  bad "--generate past max T: $(head -c 300 "$tmp/g2")"

echo "bad inputs (one line on stderr, exit status != 0):"
expect_error() { # expected status, what, command...
  local want=$1 what=$2; shift 2
  "$@" >/dev/null 2>"$tmp/err"; local rc=$?
  if [ "$rc" -eq "$want" ] && [ "$(wc -l < "$tmp/err")" -eq 1 ] && grep -q '^error: ' "$tmp/err"; then
    ok "$what: $(cat "$tmp/err")"
  else
    bad "$what: exit $rc, stderr: $(head -c 300 "$tmp/err")"
  fi
}
head -c 2000 $FX/gpt2_tiny_train.bin > "$tmp/short.bin"
head -c 100000 $FX/gpt2_tiny_model.bin > "$tmp/trunc_model.bin"
python3 - "$tmp/bigtok.bin" <<'EOF'
import struct, sys
h = [20240520, 1, 200, 0] + [0] * 252
open(sys.argv[1], "wb").write(struct.pack("256i", *h) + struct.pack("200H", *([5] * 199 + [260])))
h[0] = 12345  # not the shard magic
open(sys.argv[1].replace("bigtok", "bad"), "wb").write(struct.pack("256i", *h) + struct.pack("200H", *([5] * 200)))
EOF
expect_error 2 "unknown flag" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --bogus 1
expect_error 2 "missing value" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --lr
expect_error 2 "negative lr" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --lr -1
expect_error 2 "heads not dividing dim" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --dim 30 --heads 4
expect_error 2 "kv-heads on GPT-2" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --heads 4 --kv-heads 2
expect_error 2 "seq-len above checkpoint" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --init-from $FX/gpt2_tiny_model.bin --seq-len 32 --out "$tmp/e"
expect_error 1 "missing shard" ./train_gpt2 --train "$tmp/nothing_*.bin" --vocab 250 --dim 32 --layers 1 --out "$tmp/e"
expect_error 1 "bad shard magic" ./train_gpt2 --train "$tmp/bad.bin" --vocab 250 --dim 32 --layers 1 --out "$tmp/e"
expect_error 1 "truncated shard" ./train_gpt2 --train "$tmp/short.bin" --vocab 250 --dim 32 --layers 1 --out "$tmp/e"
expect_error 1 "token id >= vocab" ./train_gpt2 --train "$tmp/bigtok.bin" --vocab 250 --dim 32 --layers 1 --seq-len 8 --batch 2 --out "$tmp/e"
expect_error 1 "checkpoint bad magic" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --init-from $FX/gpt2_tiny_train.bin --out "$tmp/e"
expect_error 1 "truncated checkpoint" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --init-from "$tmp/trunc_model.bin" --out "$tmp/e"
expect_error 2 "resume a shuffled run unshuffled" ./train_gpt2 $TINY --steps 8 --resume "$tmp/h3"
expect_error 1 "--generate, model vocab 250 vs the tokenizer's" ./train_gpt2 --init-from $FX/gpt2_tiny_model.bin \
  --generate 4
expect_error 2 "--generate without --init-from" ./train_gpt2 --generate 4
expect_error 2 "--prompt filling the model" ./train_gpt2 --init-from "$tmp/s0/model.bin" --generate 4 \
  --prompt "$(printf 'a %.0s' {1..40})"
expect_error 1 "resume without state" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --resume "$tmp/d/nonexistent" --out "$tmp/e"

echo "checkpoints and state.bin: payloads finite, numbers in range, the run the same:"
poke() { python3 -c "import struct, sys; f = open(sys.argv[1], 'r+b'); f.seek(int(sys.argv[2])); f.write(struct.pack(sys.argv[3], float(sys.argv[4]) if sys.argv[3] == 'f' else int(sys.argv[4])))" "$@"; }
cp $FX/gpt2_tiny_model.bin "$tmp/nanm.bin" && poke "$tmp/nanm.bin" 1100 f nan
expect_error 1 "a NaN in model.bin" ./train_gpt2 --train $FX/gpt2_tiny_train.bin --init-from "$tmp/nanm.bin" --out "$tmp/e"
grep -q "nanm.bin: 1 of its .* parameters are not finite" "$tmp/err" || bad "the NaN message names neither file nor payload"
rm -rf "$tmp/st" && cp -r "$tmp/c" "$tmp/st" && poke "$tmp/st/state.bin" 8 i 2147483647
expect_error 1 "state.bin step INT_MAX" ./train_gpt2 $TINY --steps 8 --resume "$tmp/st"
rm -rf "$tmp/lr" && cp -r "$tmp/c" "$tmp/lr"
expect_error 2 "--resume with another --lr" ./train_gpt2 $TINY --steps 8 --lr 0.5 --resume "$tmp/lr"

echo "non-finite numbers (one error line, exit 1, the last checkpoint kept):"
# --eps 0: AdamW divides 0 by 0 where a gradient is exactly 0 (wte's padded rows, every step),
# so step 1's update leaves non-finite parameters that the checkpoint check refuses
BLOW="$TINY --eps 0 --steps 4"
./train_gpt2 $TINY --steps 2 --out "$tmp/nan" > /dev/null && cp "$tmp/nan/model.bin" "$tmp/nan_good.bin"
./train_gpt2 $BLOW --checkpoint-every 1 --out "$tmp/nan" > /dev/null 2> "$tmp/err"; rc=$?
if [ $rc = 1 ] && [ "$(wc -l < "$tmp/err")" = 1 ] && grep -q 'parameters are not finite.*was not overwritten' "$tmp/err" &&
   cmp -s "$tmp/nan/model.bin" "$tmp/nan_good.bin"; then
  ok "a run whose update goes non-finite stops, the earlier model.bin kept: $(cat "$tmp/err")"
else
  bad "divergence: exit $rc, $(head -c 300 "$tmp/err")"
fi
python3 -c "
import array, math, sys
a = array.array('f'); a.frombytes(open(sys.argv[1], 'rb').read()[1024:])
sys.exit(0 if all(math.isfinite(x) for x in a) else 1)" "$tmp/nan/model.bin" &&
  ok "the checkpoint left in --out has only finite parameters" || bad "a non-finite checkpoint was written"

exit $fail
