#!/usr/bin/env python3
"""Markdown tables from dense_bench's JSON output (see docs/performance.md for the command).

  ratios.py run.json [more.json ...]      one set of tables per file
  ratios.py --pool run1.json run2.json    one set of tables over the repetitions of all files

For the `paired` benchmarks: the ratio edgesplit / raw Eigen (below 1: edgesplit is faster) as
the median over the repetitions, with the smallest and largest repetition beside it, and the median
per-call times. For the one-variant benchmarks: samples/s and GFLOP/s (medians over repetitions).
Run dense_bench with --benchmark_repetitions=N (and --benchmark_display_aggregates_only=true, so
the JSON keeps every repetition).
"""
import json
import statistics
import sys
from collections import defaultdict

VARIANTS = ("edgesplit", "eigen_rowmaj", "eigen_colmaj")


def parse_args(args):
    return dict(a.split(":") for a in args.split("/") if ":" in a and not a.startswith("min_time"))


def load(path):
    """{(kind, variant, args-tuple): [iteration records]} and the JSON context."""
    with open(path) as f:
        data = json.load(f)
    runs = defaultdict(list)
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        kind, variant, args = b["run_name"].split("/", 2)
        a = parse_args(args)
        key = tuple(int(a[k]) for k in ("in", "out", "batch") if k in a)
        runs[(kind, variant, key)].append(b)
    return data["context"], runs


def spread(values, fmt):
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def shape_cells(kind, key):
    return [f"{key[0]}→{key[1]}", str(key[2])] if kind == "Dense" else [str(key[0])]


def paired_table(runs, kind):
    head = ["in→out", "batch"] if kind == "Dense" else ["batch"]
    head += ["edgesplit µs", "raw Eigen row-major µs", "naive col-major µs",
             "**edgesplit / row-major**", "edgesplit / naive col-major"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for (k, variant, key), recs in sorted(runs.items()):
        if k != kind or variant != "paired":
            continue
        cells = shape_cells(kind, key)
        for v in VARIANTS:
            cells.append(f"{statistics.median(r['us_' + v] for r in recs):.1f}")
        cells.append("**" + spread([r["es_over_rowmaj"] for r in recs], "{:.3f}") + "**")
        cells.append(spread([r["es_over_colmaj"] for r in recs], "{:.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def throughput_table(runs, kind):
    head = ["in→out", "batch"] if kind == "Dense" else ["batch"]
    for v in VARIANTS:
        head += [f"{v} samples/s", f"{v} GFLOP/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    keys = sorted({key for (k, v, key) in runs if k == kind and v != "paired"})
    for key in keys:
        cells = shape_cells(kind, key)
        for v in VARIANTS:
            recs = runs.get((kind, v, key), [])
            if not recs:
                cells += ["", ""]
                continue
            cells.append(f"{statistics.median(r['items_per_second'] for r in recs):,.0f}")
            cells.append(f"{statistics.median(r['FLOP/s'] for r in recs) / 1e9:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    args = sys.argv[1:]
    pool = bool(args) and args[0] == "--pool"
    if pool:
        args = args[1:]
    if not args:
        sys.exit(__doc__)
    groups = [args] if pool else [[a] for a in args]
    for paths in groups:
        runs = defaultdict(list)
        loads = []
        for path in paths:
            ctx, r = load(path)
            loads.append(f"{ctx.get('date', '')} (load average {round(ctx.get('load_avg', [0])[0], 1)})")
            for k, v in r.items():
                runs[k].extend(v)
        reps = max((len(r) for r in runs.values()), default=0)
        print(f"### {', '.join(paths)}: {reps} repetitions; started {', '.join(loads)}\n")
        for kind in ("Dense", "MLP"):
            if any(k == kind and v == "paired" for (k, v, _) in runs):
                print(paired_table(runs, kind) + "\n")
            if any(k == kind and v != "paired" for (k, v, _) in runs):
                print(throughput_table(runs, kind) + "\n")


if __name__ == "__main__":
    main()
