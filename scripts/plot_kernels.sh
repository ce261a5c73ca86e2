#!/bin/sh
# Kernel throughput against its baselines (docs/performance.md): GFLOP/s of edgesplit's Dense and
# MLP forward beside raw Eigen (row-major, the same products written directly) and the naive
# column-major Eigen layout, for every case of bench/dense_bench.cpp, from one run.
#
#   scripts/plot_kernels.sh BUILD_DIR [dense_bench options...]   run the benchmark, then plot
#   scripts/plot_kernels.sh FILE.json                             plot a saved --benchmark_out run
#   scripts/plot_kernels.sh FILE.csv                              plot a saved CSV
#
# The run is short (3 repetitions of 0.2 s per case, about a minute); its medians go to
# docs/figures/kernels.csv and the plot to docs/figures/kernels.svg. Needs gnuplot (Debian
# package gnuplot-nox), python3 and a build of bench/dense_bench (Google Benchmark).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
csv="$root/docs/figures/kernels.csv"
svg="$root/docs/figures/kernels.svg"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$root/docs/figures"
case ${1:-build} in
  *.csv) csv=$1 ;;
  *.json) json=$1 ;;
  *)
    build=${1:-build}
    [ $# -gt 0 ] && shift
    json="$tmp/dense_bench.json"
    "$build/bench/dense_bench" --benchmark_filter='^(Dense|MLP)/(edgesplit|eigen_rowmaj|eigen_colmaj)/' \
      --benchmark_repetitions=3 --benchmark_min_time=0.2 --benchmark_display_aggregates_only=true \
      --benchmark_out="$json" --benchmark_out_format=json "$@"
    ;;
esac
if [ -n "${json:-}" ]; then
  # One row per case: the median GFLOP/s and samples/s (CPU time) of each variant.
  python3 - "$json" "$csv" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
ctx = data["context"]
rows = {}
for b in data["benchmarks"]:
    if b.get("aggregate_name") != "median":
        continue
    kind, variant, args = b["run_name"].split("/", 2)
    a = dict(p.split(":") for p in args.split("/") if ":" in p)
    case = f"{a['in']}-{a['out']}" if kind == "Dense" else "784-512-256-10"
    key = (kind, case, int(a["batch"]))
    rows.setdefault(key, {})[variant] = (b["FLOP/s"] / 1e9, b["items_per_second"])
variants = ("edgesplit", "eigen_rowmaj", "eigen_colmaj")
with open(sys.argv[2], "w") as f:
    f.write(f"# dense_bench medians ({data['benchmarks'][0].get('repetitions', 1)} repetitions), {ctx['date']}, "
            f"{ctx['num_cpus']} CPUs, load average {ctx['load_avg'][0]:.2f}\n")
    f.write("kind,case,batch," + ",".join(f"{v}_gflops" for v in variants) + ","
            + ",".join(f"{v}_samples_per_s" for v in variants) + "\n")
    for (kind, case, batch) in sorted(rows, key=lambda k: (k[0] != "Dense", int(k[1].split("-")[0]), k[1], k[2])):
        r = rows[(kind, case, batch)]
        f.write(f"{kind},{case},{batch}," + ",".join(f"{r[v][0]:.2f}" for v in variants) + ","
                + ",".join(f"{r[v][1]:.0f}" for v in variants) + "\n")
PY
  echo "wrote $csv"
fi
gnuplot <<GP
set terminal svg size 980,460 dynamic font "sans,11"
set output "$svg"
set datafile separator ","
set title "Dense forward on one core: edgesplit beside raw Eigen, one run of dense_bench (higher is better)" noenhanced
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "GFLOP/s (median)"
set yrange [0:*]
set grid ytics
set key outside top center horizontal
set xtics rotate by -40 font ",9" nomirror
plot "$csv" using 4:xtic(stringcolumn(1) eq "MLP" ? sprintf("MLP b%d", column(3)) : sprintf("%s b%d", stringcolumn(2), column(3))) every ::1 title "edgesplit" lc rgb "#1f77b4", \
     "" using 5 every ::1 title "raw Eigen, row-major" lc rgb "#7f7f7f", \
     "" using 6 every ::1 title "naive Eigen, column-major" lc rgb "#d9d9d9"
GP
echo "wrote $svg"
