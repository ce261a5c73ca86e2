#!/usr/bin/env bash
# A ZeroMQ cluster as separate processes on loopback, under load from zmq_loadgen
# (docs/deployment.md, "Measured"):
#
#   bench/zmq_cluster.sh BUILD_DIR WORKERS [SECONDS] [CLIENTS] [KILL_AT RESTART_AT] [-- loadgen options]
#
# Generates keys in a temporary directory, starts cloud_broker and WORKERS cloud_worker processes
# with CURVE, runs zmq_loadgen with CLIENTS clients for SECONDS. With KILL_AT and RESTART_AT
# (seconds after the load starts), worker 1 is killed with SIGKILL at KILL_AT (a crash: no
# goodbye) and a new worker process is started at RESTART_AT; the load generator's timeline
# then shows the p99 of every second. EDGESPLIT_KILL_SIGNAL=STOP freezes worker 1 instead (a hung
# process: its connection stays open and only the missing heartbeats tell). Everything stops by
# itself.
set -euo pipefail
build="${1:?build directory}"; workers="${2:?number of workers}"
seconds="${3:-10}"; clients="${4:-64}"; kill_at="${5:-0}"; restart_at="${6:-0}"
shift $(( $# < 6 ? $# : 6 )); [ "${1:-}" = "--" ] && shift
bin="$build/examples"
dir="$(mktemp -d)"
# Every process started here leaves its pid in $dir/*.pid, so that all of them stop at the end.
cleanup() {
  for f in "$dir"/*.pid; do [ -f "$f" ] && kill -CONT "$(cat "$f")" 2>/dev/null && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true; rm -rf "$dir"
}
trap cleanup EXIT

names=(broker edge); for i in $(seq 1 $((workers + 1))); do names+=("worker-$i"); done
"$bin/edgesplit_keygen" --out "$dir" "${names[@]}" >/dev/null
cat "$dir"/edge.pub > "$dir/clients.allow"; cat "$dir"/worker-*.pub > "$dir/workers.allow"
front="ipc://$dir/front"; back="ipc://$dir/back"
[ -n "${EDGESPLIT_TCP:-}" ] && { front="tcp://127.0.0.1:${EDGESPLIT_TCP}"; back="tcp://127.0.0.1:$((EDGESPLIT_TCP + 1))"; }

"$bin/cloud_broker" --key "$dir/broker.key" --clients "$dir/clients.allow" --workers "$dir/workers.allow" \
  --front "$front" --back "$back" > "$dir/broker.log" & echo $! > "$dir/broker.pid"
start_worker() {
  "$bin/cloud_worker" --key "$dir/worker-$1.key" --broker-key "$dir/broker.pub" --broker "$back" \
    > "$dir/worker-$1.log" & echo $! > "$dir/worker-$1.pid"
}
for i in $(seq 1 "$workers"); do start_worker "$i"; done
sleep 0.5

extra=()
if [ "$kill_at" != 0 ]; then  # whole seconds
  signal="${EDGESPLIT_KILL_SIGNAL:-KILL}"
  ( sleep "$kill_at"; kill -"$signal" "$(cat "$dir/worker-1.pid")"; echo "zmq_cluster: t=${kill_at}s worker 1 sent SIG$signal"
    sleep $((restart_at - kill_at)); start_worker $((workers + 1))
    echo "zmq_cluster: t=${restart_at}s worker $((workers + 1)) started" ) &
  extra=(--timeline yes)
fi
"$bin/zmq_loadgen" --front "$front" --key "$dir/edge.key" --broker-key "$dir/broker.pub" \
  --clients "$clients" --seconds "$seconds" "${extra[@]}" "$@"
kill -TERM "$(cat "$dir/broker.pid")"; sleep 0.5; cat "$dir/broker.log"
