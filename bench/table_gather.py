#!/usr/bin/env python3
"""Turns zero_bench_mpi_gather's JSON output (one file per number of ranks) into a Markdown table.

  mpirun -np N zero_bench_mpi_gather --benchmark_repetitions=7 --benchmark_out=gather-npN.json \
      --benchmark_out_format=json
  python3 bench/table_gather.py gather-np2.json gather-np3.json ...

Per number of ranks, the median over the repetitions of each benchmark's step time (forward,
backward and step; the slowest rank's) and of the time rank 0 waited in gather(). The share of the
all-gather hidden is (step without prefetching, 2 buffers - this step) / the gathers' time alone,
from the medians.
"""
import json
import statistics
import sys
from collections import defaultdict

ROWS = [("compute_only", 0, 2, "compute alone (no engine)"), ("gathers_only", 0, 2, "gathers alone (no compute)"),
        ("train", 0, 2, "no prefetch, 2 buffers"), ("train", 0, 1, "no prefetch, 1 buffer"),
        ("train", 1, 1, "prefetch 1, 1 buffer"), ("train", 1, 2, "prefetch 1, 2 buffers"),
        ("train", 2, 3, "prefetch 2, 3 buffers")]


def main():
    runs = defaultdict(list)  # (ranks, name, prefetch, buffers) -> [(step_ms, wait_ms, prefetched)]
    for path in sys.argv[1:]:
        with open(path) as f:
            data = json.load(f)
        for b in data["benchmarks"]:
            if b.get("run_type") != "iteration":
                continue
            name = b["run_name"].split("/")[0]
            key = (int(b["ranks"]), name, int(b["prefetch_groups"]), int(b["gather_buffers"]))
            runs[key].append((b["step_ms"], b["wait_ms"], b["prefetched"]))
    ranks_list = sorted({k[0] for k in runs})
    med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in runs.items()}
    print("| ranks | run | step | waiting in gather() | gathers prefetched | all-gather hidden |")
    print("|---|---|---:|---:|---:|---:|")
    for n in ranks_list:
        alone = med[(n, "gathers_only", 0, 2)][1]
        blocking = med[(n, "train", 0, 2)][0]
        for name, p, b, label in ROWS:
            if (n, name, p, b) not in med:
                continue
            step, wait, pre = med[(n, name, p, b)]
            hidden = f"{(blocking - step) / alone:+.2f}" if name == "train" else ""
            print(f"| {n} | {label} | {step:.1f} ms | {wait:.1f} ms | {pre:.2f} | {hidden} |")


if __name__ == "__main__":
    main()
