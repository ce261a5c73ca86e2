# Container image for edgesplit's nodes: cloud_node (the tail, over TCP/TLS and the Open Inference
# Protocol over HTTP), edge_node (the head) and the edgesplit command-line tool.
#
#   podman build -t edgesplit:0.1.0 .            # or: docker build -t edgesplit:0.1.0 .
#   podman run --rm -p 7000:7000 -p 8000:8000 -v ./models:/models:ro edgesplit:0.1.0
#
# Build arguments (docs/deployment.md, "Containers"):
#   BUILD_IMAGE    base of the build stage     (default debian:bookworm)
#   RUNTIME_IMAGE  base of the runtime stage   (default debian:bookworm-slim)
#                  Both must be Debian 12 (bookworm) or an image made from it: the runtime stage
#                  installs the bookworm names of the shared libraries the build linked.
#   EDGESPLIT_ISA  -DEDGESPLIT_ISA for the binaries: x86-64-v3 (CMake's default on x86-64: AVX2 and
#                  FMA, any Haswell-or-later CPU), native, or none (any CPU of the architecture)
#   JOBS           parallel compile jobs (default: the number of CPUs)

ARG BUILD_IMAGE=debian:bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- build ---------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
ARG EDGESPLIT_ISA=
ARG JOBS=

# The compiler and CMake, and the -dev packages of what cloud_node, edge_node and edgesplit link:
# Eigen and xsimd (required), nlohmann-json (model files, HTTP), zlib, zstd (feature codec),
# OpenSSL (TLS), cpp-httplib (Open Inference Protocol over HTTP; found through pkg-config), gRPC
# (the protocol over gRPC), ONNX and protobuf (the edgesplit tool). ZeroMQ is left out: none of these three programs uses it.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake make g++ pkg-config \
      libeigen3-dev libxsimd-dev \
      nlohmann-json3-dev zlib1g-dev libzstd-dev libssl-dev libcpp-httplib-dev libgrpc++-dev \
      libonnx-dev libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release \
      -DEDGESPLIT_BUILD_TESTS=OFF -DEDGESPLIT_BUILD_BENCH=OFF -DEDGESPLIT_BUILD_STUDIES=OFF \
      -DEDGESPLIT_BUILD_EXAMPLES=ON -DEDGESPLIT_INSTALL=OFF -DEDGESPLIT_WITH_ZMQ=OFF \
      -DEDGESPLIT_WITH_JSON=ON -DEDGESPLIT_WITH_ZLIB=ON -DEDGESPLIT_WITH_ZSTD=ON \
      -DEDGESPLIT_WITH_TLS=ON -DEDGESPLIT_WITH_HTTP=ON -DEDGESPLIT_WITH_GRPC=ON -DEDGESPLIT_WITH_ONNX=ON \
      ${EDGESPLIT_ISA:+-DEDGESPLIT_ISA=${EDGESPLIT_ISA}} \
 && cmake --build /build --parallel "${JOBS:-$(nproc)}" --target cloud_node edge_node edgesplit_cli \
 && mkdir -p /out/bin \
 && install -m 0755 -s /build/examples/cloud_node /build/examples/edge_node /build/tools/edgesplit /out/bin/

# ---- runtime -------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

# The runtime halves of the -dev packages above (libstdc++, libgcc and libc are in the base image;
# Eigen, xsimd and nlohmann-json are header-only).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libcpp-httplib0.11 libgrpc++1.51 libonnx1 libprotobuf32 libssl3 libzstd1 zlib1g \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

COPY --from=build /out/bin/ /usr/local/bin/

# Fail the build here, not at start, if a shared library is missing; then a user without a shell
# or a home: the nodes need neither, and write nothing but what they are told to.
RUN ! ldd /usr/local/bin/cloud_node /usr/local/bin/edge_node /usr/local/bin/edgesplit | grep 'not found' \
 && groupadd --gid 10001 edgesplit \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin edgesplit \
 && mkdir -p /models

USER 10001:10001
WORKDIR /tmp

# 7000: the native protocol (TCP, or TLS with --tls-cert/--tls-key). 8000: HTTP, the Open Inference
# Protocol, /v2/health/live, /v2/health/ready and /metrics. 8001: the Open Inference Protocol over
# gRPC. They are cloud_node's --port, --http-port and --grpc-port below; keep 8000 and 8001 on the
# cluster network (no TLS, no authentication).
EXPOSE 7000 8000 8001

# The model is mounted at /models/model.safetensors; override the command for another file, split
# or model id, for TLS, or to run edge_node or edgesplit instead.
CMD ["cloud_node", "--model", "/models/model.safetensors", "--split", "2", "--model-id", "fmnist-mlp", \
     "--host", "0.0.0.0", "--port", "7000", "--http-port", "8000", "--grpc-port", "8001"]

# Readiness without curl: bash's /dev/tcp, HTTP/1.0, the status line of /v2/health/ready. Docker
# uses it; podman keeps it only with --format docker. Assumes the default command's --http-port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /v2/health/ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
