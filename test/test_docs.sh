#!/usr/bin/env bash
# The tree refers only to files it has, so a fresh clone's docs work:
#  1. every relative markdown link [text](path) in a tracked .md file names a tracked file or
#     folder (path relative to that .md file's folder); a #anchor must be one of the target's
#     headings (or the same file's, for a bare #anchor);
#  2. every *.md file name mentioned in a tracked .md, .c, .cu, .h, .py, .sh file or Makefile names a
#     tracked file: by its path (from the repository root or from the mentioning file's folder)
#     or, when written without a folder, by its file name. The files that programs write at run
#     time are allowed by name when the script that writes them mentions them (GENERATED below).
# "Tracked" is `git ls-files`: what a clone (or the next commit) has. Exits 1 on any broken one.
set -u
cd "$(dirname "$0")/.."
fail=0
ok() { echo "  ok   $*"; }
bad() { echo "  FAIL $*"; fail=1; }

# name written at run time -> a tracked file that writes it
declare -A GENERATED=(
  [summary.md]=dev/paper_a.py
  [quant.md]=dev/paper_a.py
  [compare.md]=dev/paper_a.py
  [seeds.md]=dev/paper_a.py
  [e3_summary.md]=dev/plot_e3.py
  [e3_sparsity.md]=dev/e3_sparsity.py
  [report.md]=test/test_llama_gpu.sh
  [llama_report.md]=dev/gpu_check.sh
  [gpt2_report.md]=dev/gpu_check.sh
)

files=$(git ls-files 2>/dev/null) || { bad "git ls-files failed: run this in a git checkout"; exit 1; }
declare -A have base
while IFS= read -r f; do
  [ -n "$f" ] || continue
  have[$f]=1
  base[${f##*/}]=1
  d=$f
  while [[ $d == */* ]]; do d=${d%/*}; have[$d]=1; done # the folders above it
done <<< "$files"

# normalise a relative path (a/./b, a/x/../b); prints nothing if it climbs out of the tree
norm() {
  local IFS=/ part out=()
  for part in $1; do
    case $part in
      "" | .) ;;
      ..) [ ${#out[@]} -gt 0 ] || return 0; unset 'out[${#out[@]}-1]' ;;
      *) out+=("$part") ;;
    esac
  done
  printf '%s' "${out[*]}"
}

# the file with fenced code blocks and `inline code` blanked out (line numbers kept)
prose() {
  awk '/^[[:space:]]*```/ { fence = !fence; print ""; next } fence { print ""; next }
       { gsub(/`[^`]*`/, ""); print }' "$1"
}

# GitHub's anchors of a .md file's headings, and a normaliser for both sides: lower case,
# ASCII punctuation but - and _ dropped, spaces to -, non-ASCII dropped (GitHub keeps letters
# such as σ and drops symbols such as §: dropping both on both sides compares the rest)
slug() { LC_ALL=C tr 'A-Z' 'a-z' | LC_ALL=C tr -d '\000-\011\013-\037\041-\054\056\057\072-\100\133-\136\140\173-\377' | tr ' ' '-'; }
anchors() {
  awk '/^[[:space:]]*```/ { fence = !fence; next } !fence && /^#+ / { sub(/^#+ +/, ""); sub(/ +#* *$/, ""); print }' "$1" |
    while IFS= read -r h; do printf '%s\n' "$h" | slug; done
}

echo "markdown links:"
nlinks=0; nmd=0; broken=0
while IFS= read -r md; do
  [ -n "$md" ] || continue
  nmd=$((nmd + 1))
  dir=$(dirname "$md")
  while IFS=: read -r line target; do
    [ -n "$target" ] || continue
    target=${target#](}
    case $target in [a-zA-Z]*:*) continue ;; esac # http:, https:, mailto:
    nlinks=$((nlinks + 1))
    path=${target%%#*} anchor=
    [[ $target == *"#"* ]] && anchor=${target#*#}
    if [ -z "$path" ]; then
      file=$md
    else
      [ "$dir" = . ] && rel=$path || rel=$dir/$path
      file=$(norm "$rel")
      if [ -z "$file" ] || [ -z "${have[$file]:-}" ]; then
        bad "$md:$line: link ($target): no such file in the tree"; broken=$((broken + 1)); continue
      fi
    fi
    if [ -n "$anchor" ] && [[ $file == *.md ]]; then
      want=$(printf '%s' "$anchor" | slug)
      if ! anchors "$file" | grep -qxF -- "$want"; then
        bad "$md:$line: link ($target): $file has no heading #$anchor"; broken=$((broken + 1))
      fi
    fi
  done < <(prose "$md" | grep -noE '\]\([^)[:space:]]+')
done < <(grep -E '\.md$' <<< "$files")
[ $broken -eq 0 ] && ok "$nlinks relative links in $nmd .md files resolve (with their anchors)"

echo "names of .md files mentioned in docs and code:"
nment=0; nsrc=0; broken=0
while IFS= read -r src; do
  [ -n "$src" ] || continue
  nsrc=$((nsrc + 1))
  dir=$(dirname "$src")
  while IFS=: read -r line name; do
    case $name in http*) continue ;; esac # inside a URL
    nment=$((nment + 1))
    name=${name#./}
    found=
    if [[ $name == */* ]]; then
      for cand in "$(norm "$name")" "$(norm "$dir/$name")"; do
        [ -n "$cand" ] && [ -n "${have[$cand]:-}" ] && found=1
      done
    elif [ -n "${base[$name]:-}" ]; then
      found=1
    fi
    if [ -z "$found" ]; then
      b=${name##*/} writer=${GENERATED[${name##*/}]:-}
      [ -n "$writer" ] && [ -n "${have[$writer]:-}" ] && grep -qF -- "$b" "$writer" && found=1
    fi
    [ -n "$found" ] || { bad "$src:$line: mentions $name: no such file in the tree"; broken=$((broken + 1)); }
  done < <(grep -noE 'https?://[^[:space:])>"]*|[A-Za-z0-9_][A-Za-z0-9_./-]*\.md\b' "$src")
done < <(grep -E '\.(md|c|cu|h|py|sh)$|(^|/)Makefile$' <<< "$files")
[ $broken -eq 0 ] && ok "$nment mentions of .md files in $nsrc tracked files name files in the tree"

[ $fail -eq 0 ] && echo "all documentation references resolve"
exit $fail
