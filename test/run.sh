#!/usr/bin/env bash
# Runs every test/test_*.sh (each exits non-zero on failure), then prints one
# summary line "N passed, N failed". Exit status is non-zero if any failed.
# Usage: test/run.sh [pattern]   (e.g. test/run.sh llama to run only test_*llama*.sh)
set -u
cd "$(dirname "$0")/.."
pattern="${1:-}"
passed=0; failed=0; failures=""
for t in test/test_*"$pattern"*.sh; do
  [ -e "$t" ] || continue
  echo "=== $t"
  start=$(date +%s)
  if bash "$t"; then
    passed=$((passed + 1)); echo "--- ok $t ($(( $(date +%s) - start ))s)"
  else
    failed=$((failed + 1)); failures="$failures $t"; echo "--- FAIL $t ($(( $(date +%s) - start ))s)"
  fi
done
echo
[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
