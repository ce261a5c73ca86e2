#!/usr/bin/env bash
# Runs cloud_node and edge_node as two processes over TCP on 127.0.0.1 and checks that the edge
# got its answers from the cloud. Usage: two_nodes.sh <examples build dir> <model file>
# Bounded: every step has a timeout; the cloud node is stopped by SIGTERM at the end.
set -euo pipefail
bin="$1"
model="$2"
work="$(mktemp -d)"
trap 'kill "$cloud" 2>/dev/null || true; rm -rf "$work"' EXIT
if [ ! -f "$model" ]; then
  timeout 300 "$bin/split_demo" --epochs 1 --limit 500 --requests 1 --cache "$model" >/dev/null 2>&1 || exit 77
fi
timeout 120 "$bin/cloud_node" --model "$model" --port 0 --port-file "$work/port" &
cloud=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { echo "cloud_node did not start"; exit 1; }
out="$(timeout 120 "$bin/edge_node" --model "$model" --port "$(cat "$work/port")" --limit 300 --timeout-ms 5000)"
echo "$out"
kill -TERM "$cloud"
wait "$cloud"
grep -q "300 answered by the cloud" <<<"$out"
