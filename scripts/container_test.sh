#!/usr/bin/env bash
# Builds the container image of the repository's Dockerfile and runs it: cloud_node in a container
# on the host's loopback answers GET /v2/health/ready, and `edgesplit --help` runs in the image.
# Exits 0 when all of that worked, 1 when something failed that should have worked, and 77
# (skipped) with the reason when this machine cannot do it: no podman or buildah, no base image
# and no way to make one, or a container engine that cannot build or run here.
#
#   scripts/container_test.sh
#
# Base images, in this order:
#   1. EDGESPLIT_BUILD_IMAGE / EDGESPLIT_RUNTIME_IMAGE when set (both stages, see the Dockerfile);
#   2. debian:bookworm (and debian:bookworm-slim, else debian:bookworm, for the runtime stage)
#      when present in local storage (nothing is pulled);
#   3. edgesplit-base:bookworm when present (an earlier run's, kept with EDGESPLIT_KEEP_IMAGES=1);
#   4. otherwise one made here: debootstrap --variant=minbase bookworm from the first bookworm
#      mirror of this machine's apt sources, imported as edgesplit-base:bookworm.
#
# Environment: EDGESPLIT_KEEP_IMAGES=1 keeps the images it built or imported (default: removed at
# the end); EDGESPLIT_BUILD_TIMEOUT (seconds, default 3600) bounds the image build;
# EDGESPLIT_DEBOOTSTRAP_TIMEOUT (default 1800) bounds debootstrap. Heavy steps run under nice.
# Everything temporary lives in one mktemp directory, removed on exit with the test container.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
image=localhost/edgesplit-test:latest
base=localhost/edgesplit-base:bookworm
build_timeout="${EDGESPLIT_BUILD_TIMEOUT:-3600}"
debootstrap_timeout="${EDGESPLIT_DEBOOTSTRAP_TIMEOUT:-1800}"
keep="${EDGESPLIT_KEEP_IMAGES:-0}"

skip() { echo "container_test: SKIP: $*"; exit 77; }
say() { echo "container_test: $*"; }
elapsed() { echo "$(( $(date +%s) - t0 ))s"; }

if command -v podman >/dev/null; then
  engine=podman
elif command -v buildah >/dev/null; then
  engine=buildah
else
  skip "podman/buildah not installed"
fi
say "engine: $engine ($("$engine" --version 2>/dev/null | head -n 1))"

work="$(mktemp -d "${TMPDIR:-/tmp}/edgesplit-container-test.XXXXXX")"
container="edgesplit-test-$$"
made_base=0
built=0
cleanup() {
  set +e
  if [ "$engine" = podman ]; then
    timeout 60 podman rm -f -t 5 "$container" >/dev/null 2>&1
  else
    timeout 60 buildah rm "$container" >/dev/null 2>&1
  fi
  if [ "$keep" != 1 ]; then
    [ "$built" = 1 ] && timeout 120 "$engine" rmi -f "$image" >/dev/null 2>&1
    [ "$made_base" = 1 ] && timeout 120 "$engine" rmi -f "$base" >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Runs a step under a timeout; on failure prints its output and skips, as a machine that cannot
# do the step (no user namespaces, no privileges, no overlay, no network) is not a failure of the
# code. The image build is the exception, handled below.
run_or_skip() {
  local what="$1" secs="$2"
  shift 2
  local log="$work/step.log" rc=0
  timeout "$secs" "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log"
    [ "$rc" -eq 124 ] && skip "$what: timed out after ${secs}s: $*"
    skip "$what failed (exit $rc): $*"
  fi
}

image_exists() {
  if [ "$engine" = podman ]; then timeout 60 podman image exists "$1"; else timeout 60 buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

# The first mirror of this machine's apt sources that serves bookworm (one-line and deb822 formats).
apt_mirror() {
  local f
  if [ -r /etc/apt/sources.list ]; then
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                       if ($(i + 1) == "bookworm") { print $i; exit } }' /etc/apt/sources.list
  fi
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
         { types = ""; uris = ""; suites = ""
           for (i = 1; i <= NF; i++) {
             if ($i ~ /^Types:/) types = $i; if ($i ~ /^URIs:/) uris = $i; if ($i ~ /^Suites:/) suites = $i }
           if (types ~ /(^|[ \t])deb([ \t]|$)/ && (" " suites " ") ~ /[ \t]bookworm[ \t]/) {
             sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit } }' "$f"
  done
}

t0=$(date +%s)
if [ -n "${EDGESPLIT_BUILD_IMAGE:-}" ] || [ -n "${EDGESPLIT_RUNTIME_IMAGE:-}" ]; then
  build_image="${EDGESPLIT_BUILD_IMAGE:-debian:bookworm}"
  runtime_image="${EDGESPLIT_RUNTIME_IMAGE:-$build_image}"
elif image_exists debian:bookworm; then
  build_image=debian:bookworm
  if image_exists debian:bookworm-slim; then runtime_image=debian:bookworm-slim; else runtime_image=debian:bookworm; fi
elif image_exists "$base"; then
  build_image="$base" runtime_image="$base"
else
  command -v debootstrap >/dev/null || skip "no debian:bookworm image in local storage and debootstrap not installed to make one"
  [ "$(id -u)" -eq 0 ] || skip "no debian:bookworm image in local storage, and debootstrap needs root to make one"
  mirror="$(apt_mirror | head -n 1)"
  [ -n "$mirror" ] || skip "no debian:bookworm image, and no bookworm mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources"
  say "no debian:bookworm image: debootstrap --variant=minbase bookworm from $mirror (this machine's apt sources)"
  run_or_skip debootstrap "$debootstrap_timeout" nice -n 10 debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror"
  say "debootstrap done ($(elapsed)); rootfs $(du -sh "$work/rootfs" | cut -f1)"
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/lib/apt/lists/"*_Packages
  if [ "$engine" = podman ]; then
    run_or_skip "podman import" 600 sh -c "tar -C '$work/rootfs' -c . | podman import - '$base'"
  else
    # buildah has no import: a scratch container with the tree copied in, committed.
    run_or_skip "buildah import" 600 sh -c "c=\$(buildah from scratch) && buildah copy \"\$c\" '$work/rootfs' / && buildah commit --rm \"\$c\" '$base'"
  fi
  made_base=1
  rm -rf "$work/rootfs"
  build_image="$base" runtime_image="$base"
  say "imported $base ($(elapsed))"
fi

# Can a container start here at all? Some machines refuse the engine's defaults: a hard
# RLIMIT_NOFILE/RLIMIT_NPROC above what the caller may set (no CAP_SYS_RESOURCE), or crun on a
# hybrid cgroup v1/v2 layout. Then lower limits, and runc when installed, are tried in turn; the
# first that starts `true` in the base image is used for the build and the run.
runtime_opts=() limit_opts=()
if [ "$engine" = podman ]; then
  hard_nofile="$(ulimit -Hn)"
  [ "$hard_nofile" = unlimited ] || [ "$hard_nofile" -gt 65536 ] && hard_nofile=65536
  limits=(--ulimit "nofile=$hard_nofile:$hard_nofile" --ulimit nproc=4096:4096)
  candidates=("" "limits")
  command -v runc >/dev/null && candidates+=("runc limits")
  : >"$work/probe.log"
  ok=
  for c in "${candidates[@]}"; do
    runtime_opts=() limit_opts=()
    case "$c" in *runc*) runtime_opts=(--runtime runc) ;; esac
    case "$c" in *limits*) limit_opts=("${limits[@]}") ;; esac
    echo "--- podman ${runtime_opts[*]} run ${limit_opts[*]} --rm --network host $runtime_image true" >>"$work/probe.log"
    if timeout 120 podman "${runtime_opts[@]}" run "${limit_opts[@]}" --rm --network host "$runtime_image" true >>"$work/probe.log" 2>&1; then
      ok=1
      break
    fi
  done
  if [ -z "$ok" ]; then
    cat "$work/probe.log"
    skip "podman cannot start a container on this machine (tried its defaults, lower ulimits$(command -v runc >/dev/null && echo ', runc'); errors above)"
  fi
  [ -n "$c" ] && say "the engine's defaults cannot start a container here; using ${runtime_opts[*]} ${limit_opts[*]}"
fi

say "building $image from $build_image (build) and $runtime_image (runtime)"
build_cmd=(build "${runtime_opts[@]}" "${limit_opts[@]}" --network host --layers=false -t "$image" -f "$root/Dockerfile"
           --build-arg "BUILD_IMAGE=$build_image" --build-arg "RUNTIME_IMAGE=$runtime_image" "$root")
[ "$engine" = buildah ] && build_cmd=(bud "${build_cmd[@]:1}")
# An image of an earlier run kept under the same name would be left untagged: removed first.
image_exists "$image" && { timeout 120 "$engine" rmi -f "$image" >/dev/null 2>&1 || true; }
rc=0
timeout "$build_timeout" nice -n 10 "$engine" "${build_cmd[@]}" >"$work/build.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  tail -n 60 "$work/build.log"
  [ "$rc" -eq 124 ] && skip "image build timed out after ${build_timeout}s"
  # A RUN step that could not start (namespaces, privileges, overlay mounts) is this machine; a
  # step that ran and failed (apt, the compiler) is a real failure.
  if grep -qiE 'operation not permitted|permission denied|cannot (set up|setup|create) namespace|newuidmap|unshare|mount.*(denied|not permitted)|error running container|oci runtime error' "$work/build.log" \
     && ! grep -qE 'error: |CMake Error|E: Unable to locate package' "$work/build.log"; then
    skip "$engine cannot run build steps on this machine (see the output above)"
  fi
  echo "container_test: FAIL: image build failed (exit $rc)"
  exit 1
fi
built=1
say "image built ($(elapsed)): $(timeout 60 "$engine" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image" 2>/dev/null | head -n 1)"

if [ "$engine" != podman ]; then
  timeout 120 buildah from --name "$container" "$image" >/dev/null
  timeout 120 buildah run "$container" -- edgesplit --help >"$work/help.txt" 2>&1 || { cat "$work/help.txt"; echo "container_test: FAIL: edgesplit --help"; exit 1; }
  say "edgesplit --help runs in the image"
  skip "podman not installed: built with buildah, cloud_node not started (buildah runs no services)"
fi

# A model for cloud_node: a small MLP with weights from a fixed seed, as a safetensors file
# readable by the image's user.
command -v python3 >/dev/null || skip "python3 not installed (writes the test model)"
command -v curl >/dev/null || skip "curl not installed (asks the health route)"
mkdir -p "$work/models"
# The foreign-client test's model writer (tests/oip_interop.py): one writer for both.
python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import oip_interop; oip_interop.make_model(sys.argv[2])' \
  "$root/tests" "$work/models/model.safetensors"
chmod 0755 "$work" "$work/models"
chmod 0644 "$work/models/model.safetensors"
ports="$(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')"
read -r port http_port <<<"$ports"

say "starting cloud_node in a container on 127.0.0.1 ports $port (native) and $http_port (HTTP), host network"
run_or_skip "podman run" 120 podman "${runtime_opts[@]}" run "${limit_opts[@]}" -d --name "$container" --network host \
  -v "$work/models:/models:ro" "$image" \
  cloud_node --model /models/model.safetensors --split 2 --model-id test-mlp \
             --host 127.0.0.1 --port "$port" --http-port "$http_port"
ready=
for _ in $(seq 60); do
  if ready="$(curl -fsS --max-time 2 "http://127.0.0.1:$http_port/v2/health/ready" 2>/dev/null)"; then break; fi
  ready=
  [ "$(timeout 30 podman inspect -f '{{.State.Running}}' "$container" 2>/dev/null)" = true ] || break
  sleep 0.5
done
if [ "$ready" != '{"ready":true}' ]; then
  timeout 30 podman logs "$container" 2>&1 | tail -n 20
  echo "container_test: FAIL: GET /v2/health/ready answered '${ready}'"
  exit 1
fi
say "GET /v2/health/ready: $ready ($(elapsed))"
meta="$(curl -fsS --max-time 5 "http://127.0.0.1:$http_port/v2/models/test-mlp")"
grep -q '"name":"test-mlp"' <<<"$meta" || { echo "container_test: FAIL: model metadata: $meta"; exit 1; }
say "GET /v2/models/test-mlp: $meta"

timeout 60 podman stop -t 10 "$container" >/dev/null
timeout 30 podman logs "$container" 2>&1 | sed 's/^/  cloud_node: /'
timeout 60 podman rm "$container" >/dev/null

timeout 120 podman "${runtime_opts[@]}" run "${limit_opts[@]}" --rm --network none "$image" edgesplit --help >"$work/help.txt" 2>&1 \
  || { cat "$work/help.txt"; echo "container_test: FAIL: edgesplit --help in the image"; exit 1; }
say "edgesplit --help runs in the image ($(head -n 1 "$work/help.txt"))"
timeout 60 podman "${runtime_opts[@]}" run "${limit_opts[@]}" --rm --network none "$image" id >"$work/id.txt" 2>&1
say "runs as: $(cat "$work/id.txt")"
say "PASS ($(elapsed))"
