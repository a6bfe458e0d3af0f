#!/usr/bin/env bash
# common/tokenizer.h against tiktoken and sentencepiece (build/test_tokenizer, test/test_tokenizer.c):
#  1. decoding: the first 1000 tokens of each committed Tiny Shakespeare validation shard, byte for byte, and
#     100 random id sequences per vocabulary (Llama's mix <s>, </s>, <unk>, byte tokens and pieces);
#  2. encoding: every string of test/fixtures/tokenizer/strings.txt (hand-picked classes, Tiny Shakespeare
#     lines, random strings), token for token with tiktoken's encode_ordinary and sentencepiece's encode;
#  3. a missing, truncated or foreign vocabulary file is one error line naming it, exit status 1.
# The expectations are the committed fixtures (written by dev/data/tokenizers.py fixtures), so this runs on a
# fresh clone with no network. When .venv/bin/python has tiktoken and sentencepiece (make venv), the same
# comparisons also run against expectations the libraries write now, and the vocabulary files are rebuilt
# and compared with the committed ones. Exits non-zero on the first failure.
set -u
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL $*"; exit 1; }
T=./build/test_tokenizer
F=test/fixtures/tokenizer
declare -A VOCAB=([gpt2]=data/tokenizers/gpt2/gpt2_tokenizer.bin [llama2]=data/tokenizers/llama2/tokenizer.bin)
[ -x $T ] || fail "$T is missing: make build/test_tokenizer"

# compare: what the C gives against the expectations in folder $1 (named $2 in messages)
compare() {
  local dir=$1 what=$2 k n
  for k in gpt2 llama2; do
    $T decode-shard "${VOCAB[$k]}" "data/tinyshakespeare/${k}_val_000.bin" 1000 > "$tmp/${k}_val.txt" ||
      fail "$k: decoding the shard"
    cmp "$tmp/${k}_val.txt" "$dir/${k}_val.txt" ||
      fail "$k: the shard's first 1000 tokens decode differently from $what"
    $T decode "${VOCAB[$k]}" < "$dir/${k}_decode.txt" > "$tmp/${k}_decode.txt" || fail "$k: decoding random ids"
    if ! cmp -s "$tmp/${k}_decode.txt" "$dir/${k}_decode.txt"; then
      diff "$dir/${k}_decode.txt" "$tmp/${k}_decode.txt" | head -6
      fail "$k: random id sequences decode differently from $what (< expected, > C)"
    fi
    $T encode "${VOCAB[$k]}" < "$dir/strings.txt" > "$tmp/${k}_encode.txt" || fail "$k: encoding"
    if ! cmp -s "$tmp/${k}_encode.txt" "$dir/${k}_encode.txt"; then
      n=$(diff "$dir/${k}_encode.txt" "$tmp/${k}_encode.txt" | grep -c '^<')
      diff "$dir/${k}_encode.txt" "$tmp/${k}_encode.txt" | head -6
      fail "$k: $n of $(wc -l < "$dir/strings.txt") strings encode differently from $what (< expected, > C)"
    fi
    echo "ok   $k vs $what: 1000 shard tokens decode byte for byte, $(wc -l < "$dir/${k}_decode.txt") random" \
      "id sequences decode, $(wc -l < "$dir/strings.txt") strings encode token for token (and decode back)"
  done
}

compare "$F" "the committed fixtures ($(tr '\n' ' ' < $F/versions.txt | sed 's/ $//'))"

# ---- the vocabularies load with the ids the libraries use
[ "$($T load "${VOCAB[gpt2]}" 50257)" = "vocab 50257 bos 50256 eos 50256 unk -1" ] || fail "gpt2: vocab size / EOT id"
[ "$($T load "${VOCAB[llama2]}" 32000)" = "vocab 32000 bos 1 eos 2 unk 0" ] || fail "llama2: vocab size, special ids"
[ "$($T load "${VOCAB[llama2]}")" = "vocab 32000 bos 1 eos 2 unk 0" ] || fail "llama2: vocab size from the file"
echo "ok   loading: gpt2 50257 tokens, EOT 50256; llama2 32000 tokens (given, or counted from the file)," \
  "<s> 1, </s> 2, <unk> 0"

# ---- bad files: one "error:" line naming the file, exit status 1
expect_error() { # expect_error WHAT FILE MODE [V]
  local what=$1 file=$2
  shift 2
  $T "$@" > "$tmp/out" 2> "$tmp/err"
  local rc=$?
  [ $rc -eq 1 ] || fail "$what: exit status $rc, want 1"
  [ "$(wc -l < "$tmp/err")" -eq 1 ] && grep -q "^error: .*$file" "$tmp/err" ||
    { cat "$tmp/err"; fail "$what: want one error line naming $file"; }
}
cp "${VOCAB[gpt2]}" "$tmp/gpt2.bin"
head -c 20000 "${VOCAB[gpt2]}" > "$tmp/gpt2_cut.bin"
printf '\x01\x02\x03\x04' | dd of="$tmp/gpt2.bin" conv=notrunc status=none
head -c 100001 "${VOCAB[llama2]}" > "$tmp/llama_cut.bin"     # inside token 7868
head -c 100000 "${VOCAB[llama2]}" > "$tmp/llama_between.bin" # just after token 7867: only V catches it
{ cat "${VOCAB[llama2]}"; printf 'x'; } > "$tmp/llama_long.bin"
expect_error "missing file" "$tmp/none.bin" load "$tmp/none.bin"
expect_error "gpt2 truncated" "$tmp/gpt2_cut.bin" load "$tmp/gpt2_cut.bin"
expect_error "gpt2 bad magic" "$tmp/gpt2.bin" load-gpt2 "$tmp/gpt2.bin"
expect_error "gpt2 bad magic (auto)" "$tmp/gpt2.bin" load "$tmp/gpt2.bin"
expect_error "gpt2 vocab size" "${VOCAB[gpt2]}" load "${VOCAB[gpt2]}" 50304
expect_error "llama2 truncated" "$tmp/llama_cut.bin" load "$tmp/llama_cut.bin"
expect_error "llama2 cut between tokens (V given)" "$tmp/llama_between.bin" load "$tmp/llama_between.bin" 32000
[ "$($T load "$tmp/llama_between.bin")" = "vocab 7868 bos 1 eos 2 unk 0" ] ||
  fail "llama2 cut between tokens, no V"
expect_error "llama2 trailing byte" "$tmp/llama_long.bin" load "$tmp/llama_long.bin" 32000
expect_error "llama2 more tokens than the model" "${VOCAB[llama2]}" load "${VOCAB[llama2]}" 31999
expect_error "llama2 loader on a gpt2 file" "${VOCAB[gpt2]}" load-llama2 "${VOCAB[gpt2]}"
echo "ok   bad vocabulary files (missing, truncated, bad magic, wrong size, trailing bytes, other format):" \
  "one error line naming the file, exit 1"

# ---- live: the libraries themselves, when the venv has them
PY=.venv/bin/python
if [ -x $PY ] && $PY -c "import tiktoken, sentencepiece" 2> /dev/null; then
  $PY dev/data/tokenizers.py fixtures --out "$tmp/live" > /dev/null || fail "dev/data/tokenizers.py fixtures"
  compare "$tmp/live" "the libraries now ($(tr '\n' ' ' < "$tmp/live/versions.txt" | sed 's/ $//'))"
  for f in strings.txt {gpt2,llama2}_encode.txt {gpt2,llama2}_decode.txt {gpt2,llama2}_val.txt; do
    cmp -s "$F/$f" "$tmp/live/$f" || echo "note: $F/$f differs from what the libraries write now (regenerate it)"
  done
  $PY dev/data/tokenizers.py vocab --out "$tmp/vocab" > /dev/null || fail "dev/data/tokenizers.py vocab"
  cmp "$tmp/vocab/gpt2_tokenizer.bin" "${VOCAB[gpt2]}" || fail "${VOCAB[gpt2]} is not what the script writes"
  cmp "$tmp/vocab/tokenizer.bin" "${VOCAB[llama2]}" || fail "${VOCAB[llama2]} is not what the script writes"
  echo "ok   live: C against tiktoken and sentencepiece as installed now;" \
    "the committed vocabulary files are what they write"
else
  echo "skip live comparison: $PY with tiktoken and sentencepiece not found (make venv); fixtures only"
fi
