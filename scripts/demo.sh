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
source "$root/scripts/deps.sh"
edgesplit_install_deps

build="$root/build/demo"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DEDGESPLIT_BUILD_TESTS=OFF -DEDGESPLIT_BUILD_BENCH=OFF
cmake --build "$build" -j"$(nproc)" --target split_demo
exec "$build/examples/split_demo" "$@"
