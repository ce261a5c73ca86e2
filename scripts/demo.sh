#!/usr/bin/env bash
# The main job: install what is missing, build, and run the end-to-end split-inference demo
# (examples/split_demo.cpp) on its defaults: a Fashion-MNIST MLP trained (or loaded from its
# cache), cut in two, its tail served by a CloudServer, its head run by an EdgeClient, over
# simulated Wi-Fi, LTE and 3G links.
#   scripts/demo.sh            (extra arguments are passed to split_demo, e.g. --bits 4)
# A model from PyTorch, through ONNX and the `edgesplit` tool, is the second demo:
# scripts/onnx_demo.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf '\n== edgesplit demo, step %s\n' "$*"; }
source "$root/scripts/deps.sh"
say "1 of 3: the Debian packages it needs (installed only if missing)"
edgesplit_install_deps

build="$root/build/demo"
say "2 of 3: building split_demo in $build (Release; the first build takes a few minutes, [n%] is its progress)"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DEDGESPLIT_BUILD_TESTS=OFF -DEDGESPLIT_BUILD_BENCH=OFF \
  -DEDGESPLIT_BUILD_STUDIES=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target split_demo
say "3 of 3: split_demo: train the Fashion-MNIST MLP (or load it from its cache), cut it in two, serve the tail, run the head over simulated Wi-Fi, LTE and 3G links"
exec "$build/examples/split_demo" "$@"
