#!/bin/sh
# cloud_worker --http-port: the worker's own CloudServer answers the health probes, the model
# metadata and /metrics over HTTP, with no broker running (the front ends are the same code as
# cloud_node's: examples/oip_front_ends.hpp). Loopback only; every wait is bounded; the worker is
# stopped with SIGTERM at the end.
#   worker_front_ends.sh <cloud_worker>      (exit 77: skipped, a build without HTTP)
set -eu
worker=$1
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
log=$(mktemp)
"$worker" --insecure yes --broker tcp://127.0.0.1:1 --http-port "$http_port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
i=0
until curl -sf "http://127.0.0.1:$http_port/v2/health/live" >/dev/null 2>&1; do
  if ! kill -0 "$pid" 2>/dev/null; then
    cat "$log"
    if grep -q "no HTTP front end" "$log"; then exit 77; fi
    exit 1
  fi
  i=$((i + 1))
  if [ "$i" -gt 200 ]; then echo "cloud_worker did not answer within 20 s"; cat "$log"; exit 1; fi
  sleep 0.1
done
curl -sf "http://127.0.0.1:$http_port/v2/health/ready" | grep -q '"ready":true'
echo "ok: GET /v2/health/ready"
curl -sf "http://127.0.0.1:$http_port/v2/models/fmnist-mlp" | grep -q '"versions":\["2"\]'
echo "ok: GET /v2/models/fmnist-mlp: version 2"
curl -sf "http://127.0.0.1:$http_port/metrics" | grep -q '^edgesplit_ready 1$'
echo "ok: GET /metrics: edgesplit_ready 1"
grep -q "Open Inference Protocol, health and /metrics over HTTP on 127.0.0.1 port $http_port" "$log"
echo "ok: the worker says where it serves HTTP"
