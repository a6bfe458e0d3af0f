#!/usr/bin/env bash
# test/test_ptxas.sh: registers, spills and shared memory of every kernel of train_llama.cu and
# train_gpt2.cu, as nvcc's assembler reports them for sm_90 (build/ptxas_report.txt, made by
# `make build/ptxas_report.txt`; no GPU needed). Prints one line per kernel; fails when a kernel
# spills registers to local memory, keeps a stack frame, needs more than 48 KiB of static shared
# memory, or when the report has no kernels at all.
set -u
cd "$(dirname "$0")/.."
R=build/ptxas_report.txt
if ! command -v ${NVCC:-nvcc} >/dev/null 2>&1; then
    echo "skipped: no nvcc"
    exit 0
fi
[ -f "$R" ] || { echo "error: $R is missing (make build/ptxas_report.txt)"; exit 1; }
python3 - "$R" <<'PY'
import re, subprocess, sys
text = open(sys.argv[1]).read()
rows, file, cur = [], '?', None
for line in text.splitlines():
    if line.startswith('== '):
        file = line[3:]
    m = re.search(r"Compiling entry function '(\w+)'", line)
    if m:
        cur = {'file': file, 'name': m.group(1), 'stack': 0, 'spill': 0, 'regs': 0, 'smem': 0}
        rows.append(cur)
    m = re.search(r'(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads', line)
    if m and cur:
        cur['stack'], cur['spill'] = int(m.group(1)), int(m.group(2)) + int(m.group(3))
    m = re.search(r'Used (\d+) registers', line)
    if m and cur:
        cur['regs'] = int(m.group(1))
        s = re.search(r'(\d+) bytes smem', line)
        cur['smem'] = int(s.group(1)) if s else 0
if not rows:
    sys.exit('no kernels in the report: did nvcc run?')
names = subprocess.run(['c++filt'], input='\n'.join(r['name'] for r in rows), capture_output=True,
                       text=True).stdout.split('\n')
bad = 0
print('%-16s %-44s %5s %6s %6s %6s' % ('file', 'kernel (sm_90)', 'regs', 'smem', 'stack', 'spill'))
for r, n in zip(rows, names):
    n = n.split('(')[0] or r['name']
    why = []
    if r['spill']: why.append('spills')
    if r['stack']: why.append('stack frame')
    if r['smem'] > 48 << 10: why.append('static shared memory over 48 KiB')
    bad += bool(why)
    print('%-16s %-44s %5d %6d %6d %6d%s' % (r['file'], n, r['regs'], r['smem'], r['stack'], r['spill'],
                                           '   <-- FAIL: ' + ', '.join(why) if why else ''))
print('%d kernels, most registers %d, most static shared memory %d bytes; %d over a limit'
      % (len(rows), max(r['regs'] for r in rows), max(r['smem'] for r in rows), bad))
sys.exit(1 if bad else 0)
PY
