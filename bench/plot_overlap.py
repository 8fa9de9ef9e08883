#!/usr/bin/env python3
"""Turns zero_bench_mpi_overlap's JSON output (one file per number of ranks) into a table and a plot.

  mpirun -np N zero_bench_mpi_overlap --benchmark_repetitions=7 --benchmark_out=overlap-npN.json \
      --benchmark_out_format=json
  python3 bench/plot_overlap.py bench/results/overlap.png overlap-np2.json overlap-np3.json ...

Per number of ranks and partitioner: the median over the repetitions of the step time (backward +
step, the slowest rank's) of each mode: the backward's arithmetic alone, everything reduced after
backward (at_step), and the reductions overlapped with backward through one and two staging
buffers. The share of the reduction hidden is (at_step - overlap) / at_step's reduction time, from
the medians. Prints a Markdown table; draws grouped bars into the PNG. Needs matplotlib.
"""
import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = [("compute_only", 1, "compute alone"), ("at_step", 1, "reduce at step()"),
         ("overlap", 1, "overlap, 1 buffer"), ("overlap", 2, "overlap, 2 buffers")]


def load(paths):
    runs = defaultdict(list)  # (ranks, partitioner, mode, buffers) -> [(step_ms, reduce_ms)]
    loads = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for b in data["benchmarks"]:
            if b.get("run_type") != "iteration":
                continue
            mode, partitioner, buffers = b["run_name"].split("/")[:3]
            ranks = int(b["ranks"])
            runs[(ranks, partitioner, mode, int(buffers))].append((b["step_ms"], b.get("reduce_ms", 0.0)))
            loads[ranks] = data["context"].get("load_avg")
    return runs, loads


def main():
    out, paths = sys.argv[1], sys.argv[2:]
    runs, loads = load(paths)
    ranks_list = sorted({k[0] for k in runs})
    partitioners = ["contiguous", "bucketed"]
    median = {k: statistics.median(s for s, _ in v) for k, v in runs.items()}
    reduce_ms = {k: statistics.median(r for _, r in v) for k, v in runs.items() if k[2] == "at_step"}

    print("| ranks | partitioner | compute alone | reduce at step() (reduction) | overlap, 1 buffer | overlap, 2 buffers |")
    print("|---|---|---:|---:|---:|---:|")
    for n in ranks_list:
        for p in partitioners:
            at = median[(n, p, "at_step", 1)]
            red = reduce_ms[(n, p, "at_step", 1)]
            cells = [f"{median[(n, p, 'compute_only', 1)]:.1f} ms", f"{at:.1f} ms ({red:.1f} ms)"]
            for b in (1, 2):
                o = median[(n, p, "overlap", b)]
                cells.append(f"{o:.1f} ms (hidden {(at - o) / red:+.2f})")
            print(f"| {n} | {p} | " + " | ".join(cells) + " |")
    print()
    print("load averages at the start of each run:", {n: loads[n] for n in ranks_list})

    fig, axes = plt.subplots(1, len(ranks_list), figsize=(4.2 * len(ranks_list), 4.2), sharey=False)
    if len(ranks_list) == 1:
        axes = [axes]
    width = 0.2
    for ax, n in zip(axes, ranks_list):
        for i, (mode, buffers, label) in enumerate(MODES):
            xs = [j + (i - 1.5) * width for j in range(len(partitioners))]
            ys = [median[(n, p, mode, buffers)] for p in partitioners]
            ax.bar(xs, ys, width, label=label)
            if mode == "overlap":
                for x, y, p in zip(xs, ys, partitioners):
                    share = (median[(n, p, "at_step", 1)] - y) / reduce_ms[(n, p, "at_step", 1)]
                    ax.text(x, y, f"{share:+.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(partitioners)))
        ax.set_xticklabels(partitioners)
        ax.set_title(f"{n} MPI ranks" + (" (2 cores: oversubscribed)" if n > 2 else ""), fontsize=9)
        ax.set_ylabel("backward + step, ms (median)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(MODES))
    fig.suptitle("Stage 2 over MPI: 12 layers of 512x512, Eigen backward; numbers: share of the reduction hidden",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
