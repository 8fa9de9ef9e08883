#!/usr/bin/env python3
"""Turns zero_bench_update's JSON output into PNG plots.

  zero_bench_update --benchmark_format=json --benchmark_out=update.json
  python3 bench/plot_results.py update.json bench/results/

Writes update_throughput.png (parameters/s against shard size for the fused AdamW update, with
the limit measured in the same run drawn in) and step_breakdown.png (the stage-2 step's time
split into reduction, update and all-gather per number of ranks). Needs matplotlib
(`pip install matplotlib` or Debian's python3-matplotlib).
"""
import json
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        data = json.load(f)
    return [b for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration"], data.get("context", {})


def parse(name):
    parts = name.split("/")
    return parts[0], [int(p) for p in parts[1:] if p.isdigit()]


def throughput(benchmarks, context, out):
    series = defaultdict(list)  # (kind, threads) -> [(size, params/s, limit params/s)]
    for b in benchmarks:
        kind, args = parse(b["name"])
        if not kind.startswith("fused_adamw") or len(args) < 2:
            continue
        size, threads = args[0], args[1]
        per_element = b["bytes_per_element"]
        series[(kind, threads)].append((size, b["params_per_second"], b["limit_bytes_per_second"] / per_element))
    if not series:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for (kind, threads), points in sorted(series.items()):
        points.sort()
        sizes = [p[0] for p in points]
        line = ax.plot(sizes, [p[1] / 1e6 for p in points], marker="o", label=f"{kind}, {threads} thread(s)")[0]
        ax.plot(sizes, [p[2] / 1e6 for p in points], linestyle="--", color=line.get_color(),
                label=f"limit for {kind}, {threads} thread(s)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("parameters in the shard")
    ax.set_ylabel("million parameters per second")
    ax.set_title(f"Fused AdamW update vs the memory limit ({context.get('num_cpus', '?')} CPUs)")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "update_throughput.png"), dpi=120)


def breakdown(benchmarks, out):
    rows = []
    for b in benchmarks:
        kind, args = parse(b["name"])
        if kind != "stage2_step" or len(args) < 2:
            continue
        read = args[2] if len(args) > 2 else 0  # layout.read_gradients_in_update
        rows.append((args[0], args[1], b["reduce_seconds"], b["update_seconds"], b["gather_seconds"], b["step_seconds"], read))
    if not rows:
        return
    rows.sort(key=lambda r: (r[0], r[6], r[1]))
    labels = [f"{r[0] >> 20}M, {r[1]} rank(s)" + ("\nread in update" if r[6] else "") for r in rows]
    fig, ax = plt.subplots(figsize=(10, 5))
    bottom = [0.0] * len(rows)
    for index, (name, color) in enumerate([("reduce", "#4c72b0"), ("update", "#dd8452"), ("all-gather", "#55a868")]):
        values = [r[2 + index] * 1e3 for r in rows]
        ax.bar(labels, values, bottom=bottom, label=name, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.plot(labels, [r[5] * 1e3 for r in rows], "k_", markersize=30, label="whole step (wall)")
    ax.set_ylabel("milliseconds per step (rank 0)")
    ax.set_title("Stage-2 step with thread ranks: where the time goes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "step_breakdown.png"), dpi=120)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    benchmarks, context = load(sys.argv[1])
    os.makedirs(sys.argv[2], exist_ok=True)
    throughput(benchmarks, context, sys.argv[2])
    breakdown(benchmarks, sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
