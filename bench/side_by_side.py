#!/usr/bin/env python3
"""zero's host AdamW beside what its users would pick instead, in one run, as one table.

  python3 bench/side_by_side.py build/bench/zero_bench_side_by_side \\
      [--capi build/bench/libzero_bench_capi.so] [--python PYTHON] [--sizes 16777216,67108864] \\
      [--threads 1,2] [--repeats 3] [--json out.json] [--markdown out.md] [--plot out.png]

1. Runs zero_bench_side_by_side (C++, one process): the limit kernel (the update's access
   pattern, 28 bytes per fp32 parameter, compiled for the best instruction set the CPU has),
   zero's fused AdamW update, and torch's fused CPU AdamW kernel (at::_fused_adamw_, the kernel
   of torch.optim.AdamW(fused=True)), each with its ratio to the limit measured just before it.
2. Where PYTHON (default: this interpreter) can import them, runs torch.optim.AdamW(fused=True)
   and DeepSpeed's DeepSpeedCPUAdam (adamw_mode) on the same sizes, one process per thread count
   (torch.set_num_threads and OMP_NUM_THREADS), fp32 parameters, gradients and moments. Their
   ratio is to the limit of step 1 for the same size and threads. Neither is a dependency of zero:
   what is not installed is reported as such.
3. With --capi (the zero_bench_capi library), the Python processes of step 2 also run the limit
   kernel and zero's update through ctypes on the same torch tensors, interleaved with torch's and
   DeepSpeed's steps: a second table where every row comes from one process, one set of pages.

`--capi-smoke LIB` only loads the library, runs three zero steps on 1,000 elements against the
textbook AdamW in double precision and one limit pass, and exits 0 when they agree (the test
bench.capi.smoke; it needs no torch).

Each figure is the best of --repeats measurements (each the mean of several steps after a
warm-up) in each of --rounds rounds (the C++ process, then the Python ones), because this 2-core
VM's bandwidth varies from run to run and from process to process: the same torch kernel on the
same sizes measured 9.0, 13.6 and 15.4 ms per step (16M parameters, 1 thread) in three processes.
"""
import argparse
import json
import os
import subprocess
import sys

WORKER = r"""
import ctypes, json, os, sys, time
sizes, threads, repeats, capi = json.loads(sys.argv[1])
import torch
torch.set_num_threads(threads)
out = {"torch_version": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "results": [],
       "same_process": []}
lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 1e-2

def same_process(n):
    # the limit, zero, torch's and DeepSpeed's steps on the same tensors, interleaved: the best of
    # `repeats` rounds each
    lib = ctypes.CDLL(capi)
    lib.zero_capi_create.restype = ctypes.c_void_p
    lib.zero_capi_create.argtypes = [ctypes.c_uint]
    lib.zero_capi_destroy.argtypes = [ctypes.c_void_p]
    lib.zero_capi_isa.restype = lib.zero_capi_limit_isa.restype = ctypes.c_char_p
    ptr = ctypes.c_void_p
    lib.zero_capi_limit.argtypes = [ptr, ptr, ptr, ptr, ptr, ctypes.c_size_t]
    lib.zero_capi_adamw.argtypes = [ptr, ptr, ptr, ptr, ptr, ctypes.c_size_t, ctypes.c_uint64] + [ctypes.c_double] * 5
    ctx = lib.zero_capi_create(threads)
    p, g, m, v = torch.ones(n), torch.full((n,), 1e-3), torch.zeros(n), torch.zeros(n)
    pp, gp, mp, vp = p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr()
    t = [0]
    def zero_step():
        t[0] += 1
        lib.zero_capi_adamw(ctx, pp, mp, vp, gp, n, t[0], lr, b1, b2, eps, wd)
    steps = [("limit (limit on " + lib.zero_capi_limit_isa().decode() + ")", lambda: lib.zero_capi_limit(ctx, pp, mp, vp, gp, n)),
             ("zero (update on " + lib.zero_capi_isa().decode() + ")", zero_step)]
    param = torch.nn.Parameter(p)  # the same memory
    param.grad = g
    steps.append(("torch.optim.AdamW(fused=True)", torch.optim.AdamW([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, fused=True).step))
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        import deepspeed
        ds = DeepSpeedCPUAdam([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, adamw_mode=True)
        steps.append((f"DeepSpeedCPUAdam {deepspeed.__version__}", ds.step))
    except Exception as e:
        out["deepspeed_missing"] = f"{type(e).__name__}: {e}"
    runs = max(3, int(2e9 / (28 * n)))
    best = {name: float("inf") for name, _ in steps}
    for name, step in steps:
        step()  # warm-up (and JIT builds)
    for _ in range(repeats):
        for name, step in steps:
            t0 = time.perf_counter()
            for _ in range(runs):
                step()
            best[name] = min(best[name], (time.perf_counter() - t0) / runs)
    lib.zero_capi_destroy(ctx)
    for name, _ in steps:
        out["same_process"].append({"name": name, "n": n, "threads": threads, "seconds": best[name]})

def measure(step, n):
    step()  # warm-up (and JIT builds)
    runs = max(3, int(2e9 / (28 * n)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(runs):
            step()
        best = min(best, (time.perf_counter() - t0) / runs)
    return best

for n in sizes:
    if capi:
        same_process(n)
    p = torch.nn.Parameter(torch.ones(n))
    p.grad = torch.full((n,), 1e-3)
    opt = torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, fused=True)
    out["results"].append({"name": "torch.optim.AdamW(fused=True)", "n": n, "threads": threads, "seconds": measure(opt.step, n)})
    del opt, p
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        import deepspeed
    except Exception as e:
        out["deepspeed_missing"] = f"{type(e).__name__}: {e}"
        continue
    p = torch.nn.Parameter(torch.ones(n))
    p.grad = torch.full((n,), 1e-3)
    opt = DeepSpeedCPUAdam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, adamw_mode=True)
    out["results"].append({"name": f"DeepSpeedCPUAdam {deepspeed.__version__}", "n": n, "threads": threads, "seconds": measure(opt.step, n)})
    del opt, p
print("RESULT " + json.dumps(out))
"""


def run_cpp(binary, sizes, threads, repeats):
    filt = "/(" + "|".join(str(n) for n in sizes) + ")/(" + "|".join(str(t) for t in threads) + ")/"
    cmd = [binary, f"--benchmark_filter={filt}", "--benchmark_format=json", f"--benchmark_repetitions={repeats}",
           "--benchmark_report_aggregates_only=false", "--benchmark_min_time=0.5"]
    data = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    best = {}  # (family, n, threads) -> the best repetition
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        family, n, t = b["name"].split("/")[:3]
        key = (family, int(n), int(t))
        seconds = b["real_time"] / 1e3  # ms
        if key not in best or seconds < best[key]["seconds"]:
            best[key] = {"seconds": seconds, "label": b.get("label", ""), "limit": b.get("limit_bytes_per_second"),
                         "bytes_per_second": b.get("bytes_per_second")}
    return best, data.get("context", {})


def run_python(python, sizes, threads, repeats, capi):
    results, same, notes = [], [], {}
    for t in threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(t), DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
        proc = subprocess.run([python, "-c", WORKER, json.dumps([sizes, t, repeats, capi])], capture_output=True, text=True, env=env)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            notes["python"] = f"{python} could not run torch: " + (proc.stderr.strip().splitlines() or ["no output"])[-1]
            break
        out = json.loads(line[len("RESULT "):])
        results += out["results"]
        same += out["same_process"]
        notes["torch"] = f"torch {out['torch_version']} ({out['cpu_capability']})"
        if "deepspeed_missing" in out:
            notes["deepspeed"] = "DeepSpeed not importable: " + out["deepspeed_missing"]
    return results, same, notes


def capi_smoke(path):
    """Three zero steps on 1,000 elements against the textbook AdamW in double; one limit pass."""
    import ctypes
    import math

    lib = ctypes.CDLL(os.path.abspath(path))
    lib.zero_capi_create.restype = ctypes.c_void_p
    lib.zero_capi_create.argtypes = [ctypes.c_uint]
    lib.zero_capi_destroy.argtypes = [ctypes.c_void_p]
    lib.zero_capi_isa.restype = ctypes.c_char_p
    ptr = ctypes.c_void_p
    lib.zero_capi_limit.argtypes = [ptr, ptr, ptr, ptr, ptr, ctypes.c_size_t]
    lib.zero_capi_adamw.argtypes = [ptr, ptr, ptr, ptr, ptr, ctypes.c_size_t, ctypes.c_uint64] + [ctypes.c_double] * 5
    n, lr, b1, b2, eps, wd = 1000, 1e-2, 0.9, 0.999, 1e-8, 1e-2
    arr = ctypes.c_float * n
    p = arr(*[0.5 + 0.001 * i for i in range(n)])
    g = arr(*[math.sin(i) * 0.1 for i in range(n)])
    m, v = arr(), arr()
    ref_p, ref_m, ref_v = [float(x) for x in p], [0.0] * n, [0.0] * n
    ctx = lib.zero_capi_create(2)
    for t in range(1, 4):
        lib.zero_capi_adamw(ctx, p, m, v, g, n, t, lr, b1, b2, eps, wd)
        for i in range(n):
            ref_p[i] *= 1 - lr * wd
            ref_m[i] = b1 * ref_m[i] + (1 - b1) * g[i]
            ref_v[i] = b2 * ref_v[i] + (1 - b2) * g[i] * g[i]
            ref_p[i] -= lr * (ref_m[i] / (1 - b1**t)) / (math.sqrt(ref_v[i] / (1 - b2**t)) + eps)
    worst = max(abs(p[i] - ref_p[i]) / max(abs(ref_p[i]), 1e-6) for i in range(n))
    before = list(p)
    lib.zero_capi_limit(ctx, p, m, v, g, n)
    moved = all(p[i] == before[i] - g[i] or abs(p[i] - (before[i] - g[i])) <= 1e-6 for i in range(n))
    lib.zero_capi_destroy(ctx)
    print(f"zero_bench_capi: update on {lib.zero_capi_isa().decode()}, max relative difference from double AdamW {worst:.2e}, "
          f"limit pass {'ok' if moved else 'wrong'}")
    return 0 if worst < 1e-5 and moved else 1


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--capi-smoke":
        sys.exit(capi_smoke(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--capi", help="the zero_bench_capi library: also run zero and the limit in the Python processes")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--sizes", default="16777216,67108864")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="runs of the whole sequence, C++ then Python; the best of each is kept")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    ap.add_argument("--plot")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    capi = os.path.abspath(args.capi) if args.capi else None
    cpp, py, same, notes, context = {}, {}, {}, {}, {}
    for _ in range(args.rounds):
        c, context = run_cpp(args.binary, sizes, threads, args.repeats)
        for key, value in c.items():
            if key not in cpp or value["seconds"] < cpp[key]["seconds"]:
                cpp[key] = value
        results, same_results, notes = run_python(args.python, sizes, threads, args.repeats, capi)
        for r in results:
            key = (r["name"], r["n"], r["threads"])
            if key not in py or r["seconds"] < py[key]["seconds"]:
                py[key] = r
        for r in same_results:
            key = (r["name"], r["n"], r["threads"])
            if key not in same or r["seconds"] < same[key]["seconds"]:
                same[key] = r
    py = list(py.values())

    rows = []  # name, n, threads, ms, GB/s, ratio to the limit, ratio to torch fused (time)
    for n in sizes:
        for t in threads:
            limit = cpp[("limit_fp32", n, t)]["bytes_per_second"]
            entries = [("limit (" + cpp[("limit_fp32", n, t)]["label"] + ")", cpp[("limit_fp32", n, t)]["seconds"]),
                       ("zero (" + cpp[("zero_adamw_fp32", n, t)]["label"].split(",")[0] + ")", cpp[("zero_adamw_fp32", n, t)]["seconds"]),
                       ("at::_fused_adamw_ (C++)", cpp[("torch_fused_adamw_fp32", n, t)]["seconds"])]
            entries += [(r["name"], r["seconds"]) for r in py if r["n"] == n and r["threads"] == t]
            torch_seconds = cpp[("torch_fused_adamw_fp32", n, t)]["seconds"]
            zero_seconds = cpp[("zero_adamw_fp32", n, t)]["seconds"]
            for name, seconds in entries:
                bandwidth = 28 * n / seconds
                rows.append({"name": name, "n": n, "threads": t, "ms": seconds * 1e3, "GBps": bandwidth / 1e9,
                             "limit_ratio": bandwidth / limit, "zero_speedup": seconds / zero_seconds,
                             "vs_torch_fused": torch_seconds / seconds})

    lines = ["| size | threads | what | ms per step | GB/s | of the limit | zero's speed-up over it |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n'] >> 20}M | {r['threads']} | {r['name']} | {r['ms']:.2f} | {r['GBps']:.1f} | {r['limit_ratio']:.2f} | "
                     f"{r['zero_speedup']:.2f}x |")
    same_rows = []  # the same-process table: each row against that process's limit and zero
    for n in sizes:
        for t in threads:
            entries = [r for r in same.values() if r["n"] == n and r["threads"] == t]
            limit = next((r for r in entries if r["name"].startswith("limit")), None)
            zero = next((r for r in entries if r["name"].startswith("zero")), None)
            if limit is None or zero is None:
                continue
            for r in entries:
                same_rows.append({"name": r["name"], "n": n, "threads": t, "ms": r["seconds"] * 1e3, "GBps": 28 * n / r["seconds"] / 1e9,
                                  "limit_ratio": limit["seconds"] / r["seconds"], "zero_speedup": r["seconds"] / zero["seconds"]})
    if same_rows:
        lines += ["", "Same Python process (limit and zero through ctypes, on the same tensors, interleaved):", "",
                  "| size | threads | what | ms per step | GB/s | of the limit | zero's speed-up over it |", "|---|---|---|---|---|---|---|"]
        for r in same_rows:
            lines.append(f"| {r['n'] >> 20}M | {r['threads']} | {r['name']} | {r['ms']:.2f} | {r['GBps']:.1f} | {r['limit_ratio']:.2f} | "
                         f"{r['zero_speedup']:.2f}x |")
    lines.append("")
    lines.append(f"machine: {context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs at {context.get('mhz_per_cpu', '?')} MHz; "
                 + "; ".join(notes.values()))
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "same_process_rows": same_rows, "notes": notes, "context": context}, f, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        groups = [(n, t) for n in sizes for t in threads]
        names = []
        for r in rows:
            if r["name"] not in names:
                names.append(r["name"])
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            xs, ys = [], []
            for g, (n, t) in enumerate(groups):
                for r in rows:
                    if r["name"] == name and r["n"] == n and r["threads"] == t:
                        xs.append(g + k * width)
                        ys.append(r["GBps"])
            ax.bar(xs, ys, width, label=name)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
        ax.set_xticklabels([f"{n >> 20}M params, {t} thread{'s' if t > 1 else ''}" for n, t in groups])
        ax.set_ylabel("GB/s (28 bytes per parameter)")
        ax.set_title("fp32 AdamW step on the CPU: zero, PyTorch, DeepSpeed and the memory limit (same run)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
