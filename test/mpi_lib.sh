# test/mpi_lib.sh: what test/test_mpi.sh and test/test_mpi_gpu_emu.sh compare two runs with
# (sourced; the caller defines ok and bad).

trainlog() { cut -d, -f1-4 "$1/train.csv"; } # the columns that do not depend on timing
same() { # DIR1 DIR2 WHAT: every output bit for bit
  local f
  for f in model.bin state.bin val.csv weights.csv activations.csv; do
    cmp -s "$1/$f" "$2/$f" || { bad "$3: $f differs"; return; }
  done
  diff <(trainlog "$1") <(trainlog "$2") >/dev/null || { bad "$3: train.csv differs"; return; }
  ok "$3: model.bin, state.bin, train.csv (step,loss,lr,grad_norm), val/weights/activations.csv identical"
}
# the largest relative difference of the train.csv losses, and of the parameters (the floats
# after model.bin's 1024-byte header, both programs' format) relative to the largest |parameter|
drift() {
  python3 - "$1" "$2" <<'PY'
import sys, array
def floats(p):
    a = array.array('f'); a.frombytes(open(p, 'rb').read()[1024:]); return a
def losses(d):
    return [float(l.split(',')[1]) for l in open(d + '/train.csv').read().split('\n')[1:] if l]
la, lb = losses(sys.argv[1]), losses(sys.argv[2])
pa, pb = floats(sys.argv[1] + '/model.bin'), floats(sys.argv[2] + '/model.bin')
dl = max(abs(x - y) / abs(y) for x, y in zip(la, lb))
dp = max(abs(x - y) for x, y in zip(pa, pb)) / max(abs(y) for y in pb)
print('%.3g %.3g' % (dl, dp))
PY
}
