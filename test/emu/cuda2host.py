#!/usr/bin/env python3
"""test/emu/cuda2host.py: make a .cu file compilable by g++ for test/emu/cuda_emu.h.

CUDA's launch syntax is the one thing the C++ preprocessor cannot express, so it is
rewritten here, and nothing else:

    kernel<<<grid, block[, smem[, stream]]>>>(args)
        ->  ::emu::launch(kernel, "kernel", __FILE__, __LINE__, grid, block[, ...])(args)
    extern __shared__ T name[];
        ->  T *name = (T *)::emu::dynamic_shared();

Every line stays on its line (a launch that spans lines keeps its line breaks), and the
output starts with `#line 1 "<original path>"`, so compiler errors, __FILE__, gdb and the
sanitizers all name the original .cu file and line.

Usage: cuda2host.py ROOT OUTDIR FILE.cu...
Writes OUTDIR/<FILE relative to ROOT>. A rewritten file that includes another one by a
relative path ("../train_llama.cu") finds the rewritten copy, since the layout is kept.
"""
import os
import re
import sys

# a kernel name, maybe qualified (ns::k) or with template arguments (k<float>), then <<<...>>>
LAUNCH = re.compile(r'([A-Za-z_]\w*(?:::[A-Za-z_]\w*)*(?:\s*<[^<>;{}()]*>)?)\s*<<<(.*?)>>>', re.S)
EXTERN_SHARED = re.compile(r'extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?'
                           r'([A-Za-z_][\w:\s]*?)\s*([A-Za-z_]\w*)\s*\[\s*\]\s*;')


def rewrite(text):
    def launch(m):
        name = re.sub(r'\s+', '', m.group(1))
        return '::emu::launch(%s, "%s", __FILE__, __LINE__, %s)' % (m.group(1), name, m.group(2))

    def shared(m):
        return '%s *%s = (%s *)::emu::dynamic_shared();' % (m.group(1), m.group(2), m.group(1))

    return EXTERN_SHARED.sub(shared, LAUNCH.sub(launch, text))


def main():
    if len(sys.argv) < 4:
        sys.exit('usage: cuda2host.py ROOT OUTDIR FILE.cu...')
    root, outdir = sys.argv[1], sys.argv[2]
    for path in sys.argv[3:]:
        with open(path) as f:
            src = f.read()
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        dst = os.path.join(outdir, rel)
        out = rewrite(src)
        if out.count('\n') != src.count('\n'):
            sys.exit('cuda2host.py: %s: the rewrite moved lines (a bug here)' % path)
        os.makedirs(os.path.dirname(dst) or '.', exist_ok=True)
        text = '#line 1 "%s"\n%s' % (rel, out)
        # write only when changed, so make does not rebuild what did not change
        if not os.path.exists(dst) or open(dst).read() != text:
            with open(dst, 'w') as f:
                f.write(text)


if __name__ == '__main__':
    main()
