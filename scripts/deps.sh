#!/usr/bin/env bash
# Installs the Debian packages edgesplit's builds, tests and demo need, if any is missing.
# Sourced by scripts/demo.sh and scripts/test.sh; runs apt-get as root, or through sudo.
set -euo pipefail

EDGESPLIT_PACKAGES=(
  cmake make g++ clang pkg-config
  libeigen3-dev libxsimd-dev
  catch2 libbenchmark-dev
  libzstd-dev nlohmann-json3-dev zlib1g-dev libzmq3-dev cppzmq-dev
  libssl-dev openssl
  libcpp-httplib-dev curl python3
  libgrpc++-dev
  libonnx-dev libprotobuf-dev libonnx-testdata
  dataset-fashion-mnist
  g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user
  doxygen
)

edgesplit_install_deps() {
  local missing=()
  for p in "${EDGESPLIT_PACKAGES[@]}" "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "edgesplit: installing missing packages: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo=(sudo); else
      echo "edgesplit: need root or sudo to install: ${missing[*]}" >&2; return 1
    fi
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
