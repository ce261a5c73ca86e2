#!/usr/bin/env bash
# The main job: install what is missing, build, and run the end-to-end demo on its defaults.
#   scripts/demo.sh            (extra arguments are passed to the demo)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/deps.sh"
edgesplit_install_deps

build="$root/build/demo"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DEDGESPLIT_BUILD_TESTS=OFF -DEDGESPLIT_BUILD_BENCH=OFF
cmake --build "$build" -j"$(nproc)" --target quickstart
exec "$build/examples/quickstart" "$@"
