#!/usr/bin/env bash
# The whole test suite: install what is missing, then
#   1. package consumers: install to a prefix (then moved, as packages are) and build a
#      find_package() consumer, a plain Makefile consumer through pkg-config, an add_subdirectory()
#      consumer and a FetchContent consumer of a source archive; run each; the vcpkg port's logic
#      with stand-ins for vcpkg's functions; then the docs check
#      (Doxygen over the public headers, every warning an error);
#   2. cross builds for aarch64 and 32-bit ARM (NEON kernels), the target-dependent tests run
#      under qemu-user;
#   3. clang builds (-Werror) with AddressSanitizer + UndefinedBehaviorSanitizer over the whole
#      suite -- this is also the clang warnings check -- and with ThreadSanitizer over the
#      transport, runtime and ZeroMQ tests (the code that owns threads);
#   4. g++ build (Release, -Werror) of everything (tests, examples, benchmarks) and its tests.
# Each build prints the SIMD instruction set its kernels were compiled for.
# Build trees go under build/. Exits non-zero on the first failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/deps.sh"
# Beyond the build's packages, the tests load the HTTP status page in headless Chromium and check
# the Open Inference Protocol over gRPC against real protobuf and a Python gRPC client
# (python3-grpc-tools, python3-grpcio), and run exported ONNX models through onnx.checker
# (python3-onnx).
edgesplit_install_deps chromium fonts-dejavu-core python3-grpc-tools python3-grpcio python3-onnx \
  python3-prometheus-client

jobs="$(nproc)"
out="$root/build"
common=(-DCMAKE_BUILD_TYPE=Release -DEDGESPLIT_WERROR=ON)
start=$SECONDS
step() { printf '\n=== %s (t=%ds)\n' "$*" $((SECONDS - start)); }

step "package: install, move the prefix, consume with find_package and with pkg-config + make"
cmake -S "$root" -B "$out/pkg-lib" -DCMAKE_BUILD_TYPE=Release -DEDGESPLIT_BUILD_TESTS=OFF \
  -DEDGESPLIT_BUILD_EXAMPLES=OFF -DEDGESPLIT_BUILD_BENCH=OFF >/dev/null
rm -rf "$out/pkg-stage" "$out/prefix"
cmake --install "$out/pkg-lib" --prefix "$out/pkg-stage" >/dev/null
mv "$out/pkg-stage" "$out/prefix"    # vcpkg and Conan relocate what they install
if grep -rl "$out/pkg-stage" "$out/prefix"; then echo "installed files name the install path" >&2; exit 1; fi
cmake -S "$root/tests/package/find_package" -B "$out/pkg-find" -DCMAKE_PREFIX_PATH="$out/prefix" >/dev/null
cmake --build "$out/pkg-find" -j"$jobs" >/dev/null
"$out/pkg-find/consumer"
mkdir -p "$out/pkg-make"
PKG_CONFIG_PATH="$out/prefix/share/pkgconfig" make -s --no-print-directory \
  -C "$root/tests/package/makefile" OUT="$out/pkg-make" check

step "package: consume with add_subdirectory, and with FetchContent from a source archive"
cmake -S "$root/tests/package/subdirectory" -B "$out/pkg-subdir" >/dev/null
cmake --build "$out/pkg-subdir" -j"$jobs" >/dev/null
"$out/pkg-subdir/consumer"
tar -C "$root" -czf "$out/edgesplit-src.tar.gz" --transform 's,^,edgesplit/,' \
  CMakeLists.txt LICENSE cmake include
rm -rf "$out/pkg-fetch"
cmake -S "$root/tests/package/fetchcontent" -B "$out/pkg-fetch" \
  -DEDGESPLIT_SOURCE="$out/edgesplit-src.tar.gz" >/dev/null
cmake --build "$out/pkg-fetch" -j"$jobs" >/dev/null
"$out/pkg-fetch/consumer"
rm -rf "$out/pkg-vcpkg"
cmake -DOUT="$out/pkg-vcpkg" -P "$root/tests/package/vcpkg/portfile_check.cmake"

step "docs: API reference (Doxygen, undocumented public API is an error)"
mkdir -p "$out/docs"
if ! (cd "$root" && { cat docs/Doxyfile; echo "OUTPUT_DIRECTORY = $out/docs"; } | doxygen -); then
  echo "docs check failed: give each name above a /// comment saying what it is for (docs/Doxyfile)" >&2
  exit 1
fi

# The target's tests (EDGESPLIT_TEST_SET=target, tests/CMakeLists.txt: the kernels and what is
# computed with them, the codec, the decoders, the transports and the runtime's protocol) and the
# guides' code, each run as one process under qemu. The examples, the training loop, the planner
# and the serving policies are the same code on every target and run in the builds below.
for target in aarch64-linux-gnu:qemu-aarch64 arm-linux-gnueabihf:qemu-arm; do
  triple="${target%%:*}"
  emu="${target##*:}"
  step "cross $triple: build, test under $emu"
  cmake -S "$root" -B "$out/$triple" "${common[@]}" -DEDGESPLIT_BUILD_BENCH=OFF -DEDGESPLIT_BUILD_EXAMPLES=OFF \
    -DEDGESPLIT_TEST_SET=target -DCMAKE_TOOLCHAIN_FILE="$root/cmake/toolchains/$triple.cmake" >/dev/null
  cmake --build "$out/$triple" -j"$jobs" --target edgesplit_tests docs_snippets
  "$emu" -L "/usr/$triple" "$out/$triple/tests/docs_snippets" | grep "SIMD kernels"
  "$emu" -L "/usr/$triple" "$out/$triple/tests/edgesplit_tests"
done

step "clang + AddressSanitizer + UndefinedBehaviorSanitizer: build and test"
# -O1 with line tables only: reports keep file and line, and the build takes a fifth less time
# than RelWithDebInfo's -O2 -g (measured on the heaviest test file: 83 s against 103 s).
cmake -S "$root" -B "$out/asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEDGESPLIT_WERROR=ON \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG" \
  -DCMAKE_CXX_COMPILER=clang++ -DEDGESPLIT_BUILD_BENCH=OFF -DEDGESPLIT_SANITIZE=address,undefined \
  -DEDGESPLIT_BUILD_STUDIES=OFF -DEDGESPLIT_ONNX_TESTDATA=OFF >/dev/null
cmake --build "$out/asan" -j"$jobs"
"$out/asan/examples/quickstart" | grep "SIMD kernels"
# The studies (examples that train and measure: library code the unit tests cover) and ONNX's
# conformance data (a thousand well-formed models) are built and run once, in the g++ stage
# below, as is the container image's test; the nodes, the tools and the ONNX importer's
# bad-input tests (test_onnx) run here.
ctest --test-dir "$out/asan" --output-on-failure -j"$jobs" -LE "study|container"

step "clang + ThreadSanitizer: build, run transport, runtime and ZeroMQ tests"
# (A ThreadSanitizer build's edgesplit_tests holds only those tests' files: tests/CMakeLists.txt.)
cmake -S "$root" -B "$out/tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEDGESPLIT_WERROR=ON \
  -DCMAKE_CXX_COMPILER=clang++ -DEDGESPLIT_BUILD_BENCH=OFF -DEDGESPLIT_BUILD_EXAMPLES=OFF \
  -DEDGESPLIT_SANITIZE=thread -DEDGESPLIT_WITH_GRPC=OFF >/dev/null
cmake --build "$out/tsan" -j"$jobs" --target edgesplit_tests test_zmq
"$out/tsan/tests/edgesplit_tests" "[transport],[runtime]"
"$out/tsan/tests/test_zmq" "[zmq]"

step "g++: build everything and test"
cmake -S "$root" -B "$out/gcc" "${common[@]}" -DCMAKE_CXX_COMPILER=g++ >/dev/null
cmake --build "$out/gcc" -j"$jobs"
"$out/gcc/examples/quickstart" | grep "SIMD kernels"
ctest --test-dir "$out/gcc" --output-on-failure -j"$jobs"
