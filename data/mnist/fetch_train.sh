#!/usr/bin/env bash
# Download MNIST's 60k training files into a folder, check their md5 sums, and copy this
# folder's t10k files beside them, so that `mlp_sweep e1 --mnist FOLDER` trains on 60k
# images and tests on the 10k test set.
# Usage: data/mnist/fetch_train.sh BASE_URL [FOLDER]
#   BASE_URL: any MNIST mirror that serves train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz
set -eu
base=${1:?usage: $0 BASE_URL [FOLDER]}
dir=${2:-data/mnist-full}
here=$(dirname "$0")
mkdir -p "$dir"
for f in train-images-idx3-ubyte.gz:f68b3c2dcbeaaa9fbdd348bbdeb94873 train-labels-idx1-ubyte.gz:d53e105ee54ea40749a09fcbcd1e9432; do
  name=${f%%:*}; sum=${f##*:}
  curl -fL --retry 3 -o "$dir/$name" "$base/$name"
  got=$(md5sum "$dir/$name" | cut -d' ' -f1)
  [ "$got" = "$sum" ] || { echo "error: $dir/$name has md5 $got, expected $sum" >&2; exit 1; }
done
cp "$here"/t10k-*.gz "$dir"/
echo "ok: $dir holds the full MNIST; run: ./mlp_sweep e1 --mnist $dir"
