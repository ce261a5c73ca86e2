#!/usr/bin/env bash
# A model from PyTorch, split by edgesplit: installs what is missing (PyTorch too: Debian's
# python3-torch), trains a small Fashion-MNIST CNN in PyTorch and exports it to ONNX
# (scripts/onnx_demo_model.py), then runs the `edgesplit` tool on it:
#   1. inspect: nodes, shapes, FLOPs and the bytes of every candidate cut;
#   2. plan, for Wi-Fi, LTE and 3G with an edge 1000x slower than this machine (a small board): the cut and codec
#      of lowest predicted latency among those losing at most 0.5 points of top-1 accuracy;
#   3. run that split: head, codec, tail on 1000 test images (accuracy, bytes), and the samples
#      one by one through the runtime over the simulated link (measured latency).
#   scripts/onnx_demo.sh [WORK_DIR]     (default /tmp/edgesplit-onnx-demo; the model is kept there)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/deps.sh"
edgesplit_install_deps python3-torch python3-numpy

build="$root/build/demo"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DEDGESPLIT_BUILD_TESTS=OFF -DEDGESPLIT_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target edgesplit_cli
tool="$build/tools/edgesplit"
work="${1:-/tmp/edgesplit-onnx-demo}"

step() { printf '\n== %s\n' "$*"; }
step "PyTorch: train and export $work/cnn.onnx"
/usr/bin/python3 "$root/scripts/onnx_demo_model.py" --out "$work"

step "edgesplit inspect"
"$tool" inspect "$work/cnn.onnx"

step "edgesplit run: the whole model"
"$tool" run "$work/cnn.onnx" --input "$work/x.npy" --output "$work/y.npy" --labels "$work/labels.npy"

for link in wifi lte 3g; do
  step "edgesplit plan on $link, edge 1000x slower, at most 0.5 points of accuracy lost"
  "$tool" plan "$work/cnn.onnx" --link "$link" --edge-slowdown 1000 \
    --accuracy-data "$work/x.npy" "$work/labels.npy" --max-loss 0.5 | tee "$work/plan-$link.txt"
  pick=$(grep '^pick:' "$work/plan-$link.txt")
  if [[ "$pick" == *"--cut"* ]]; then
    cut=$(sed -E 's/.*--cut ([^ ]+) .*/\1/' <<<"$pick")
    codec=$(sed -E 's/.*--codec ([^ ]+) .*/\1/' <<<"$pick")
    step "edgesplit run the pick on $link: --cut $cut --codec $codec"
    "$tool" run "$work/cnn.onnx" --input "$work/x.npy" --output "$work/y-$link.npy" --labels "$work/labels.npy" \
      --cut "$cut" --codec "$codec" --link "$link" --edge-slowdown 1000
  fi
done
