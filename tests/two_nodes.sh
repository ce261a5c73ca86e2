#!/usr/bin/env bash
# Runs cloud_node and edge_node as two processes on 127.0.0.1 and checks that the edge got its
# answers from the cloud: over plain TCP, and, with "tls" as third argument, over mutual TLS with
# certificates from scripts/make_certs.sh (an edge without a certificate is refused and says why).
# Usage: two_nodes.sh <examples build dir> <model file> [tls]
# Bounded: every step has a timeout; the cloud node is stopped by SIGTERM at the end.
set -euo pipefail
bin="$1"
model="$2"
mode="${3:-tcp}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
cloud=
trap '[ -n "$cloud" ] && kill "$cloud" 2>/dev/null; rm -rf "$work"' EXIT
if [ ! -f "$model" ]; then
  timeout 300 "$bin/split_demo" --epochs 1 --limit 500 --requests 1 --cache "$model" >/dev/null 2>&1 || exit 77
fi
cloud_tls=() edge_tls=() stranger_tls=()
if [ "$mode" = tls ]; then
  command -v openssl >/dev/null || exit 77
  "$here/../scripts/make_certs.sh" --out "$work/certs" --client edge-1 >/dev/null
  c="$work/certs"
  cloud_tls=(--tls-cert "$c/server.pem" --tls-key "$c/server.key" --tls-client-ca "$c/ca.pem")
  edge_tls=(--tls-ca "$c/ca.pem" --tls-cert "$c/edge-1.pem" --tls-key "$c/edge-1.key")
  stranger_tls=(--tls-ca "$c/ca.pem")
fi
timeout 120 "$bin/cloud_node" --model "$model" --port 0 --port-file "$work/port" "${cloud_tls[@]}" >"$work/cloud.log" 2>&1 &
cloud=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { cat "$work/cloud.log"; echo "cloud_node did not start"; exit 1; }
port="$(cat "$work/port")"
out="$(timeout 120 "$bin/edge_node" --model "$model" --port "$port" --limit 300 --timeout-ms 5000 "${edge_tls[@]}" \
  --metrics-file "$work/edge.prom")"
echo "$out"
if [ "$mode" = tls ]; then
  # Without a client certificate: every image answered by the local fallback.
  stranger="$(timeout 120 "$bin/edge_node" --model "$model" --port "$port" --limit 20 --timeout-ms 2000 "${stranger_tls[@]}")"
  echo "$stranger"
  grep -q "0 answered by the cloud, 20 by the local fallback" <<<"$stranger"
fi
kill -TERM "$cloud"
wait "$cloud"
cloud=
cat "$work/cloud.log"
grep -q "300 answered by the cloud" <<<"$out"
# The edge's metrics file (Prometheus text): the same 300 answers, by path.
grep -qx 'edgesplit_edge_requests_total{model="fmnist-mlp",path="cloud"} 300' "$work/edge.prom"
grep -qx 'edgesplit_edge_submitted_total{model="fmnist-mlp"} 300' "$work/edge.prom"
if [ "$mode" = tls ]; then grep -q "TLS 1.3, clients need a certificate" "$work/cloud.log"; else grep -q "plain TCP" "$work/cloud.log"; fi
