#!/bin/sh
# Reproduces the planning figures of docs/planning.md: predicted latency against uplink bandwidth
# for every split point of the Fashion-MNIST MLP (lines), with end-to-end measurements over the
# simulated link (points), one SVG per edge slowdown.
#
#   scripts/plot_planning.sh [BUILD_DIR] [plan_split options...]
#
# Needs gnuplot (Debian package gnuplot-nox) and a build of examples/plan_split.
set -eu
build=${1:-build}
[ $# -gt 0 ] && shift
root=$(cd "$(dirname "$0")/.." && pwd)
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
rc=0
"$build/examples/plan_split" --sweep "$data/planning" "$@" || rc=$?
# 3: a claim did not hold on this run; the data are still worth plotting.
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then exit "$rc"; fi
[ "$rc" -eq 3 ] && echo "plot_planning.sh: plan_split reported a claim that did not hold (see above)" >&2
mkdir -p "$root/docs/figures"
for pred in "$data"/planning-x*.dat; do
  case $pred in *-measured.dat) continue ;; esac
  name=$(basename "$pred" .dat)           # planning-x8, or planning-x2000e for an emulated board
  factor=${name#planning-x}
  kind="scaled, measured x${factor}"
  case $factor in *e) factor=${factor%e}; kind="scaled x${factor}, emulated from the profile" ;; esac
  meas="$data/$name-measured.dat"
  svg="$root/docs/figures/$name.svg"
  gnuplot <<GP
set terminal svg size 760,480 dynamic font "sans,12"
set output "$svg"
set title "Fashion-MNIST MLP, edge = this machine ($kind), RTT 60 ms"
set logscale xy
set xlabel "uplink bandwidth (Mbit/s)"
set ylabel "end-to-end latency (ms)"
set key outside right
set grid
plot for [k=0:5] "$pred" using 1:(column(k+2)) with lines lw 2 lc k+1 title (k==5 ? "all-edge (k=5)" : sprintf("k=%d", k)), \
     for [k=0:5] "$meas" using 1:(\$2==k ? \$3 : 1/0) with points pt 7 ps 0.8 lc k+1 notitle
GP
  echo "wrote $svg"
done
