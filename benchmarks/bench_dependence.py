"""Benchmark of the distance-covariance family: value+grad time and peak memory, one setup factory.

    python benchmarks/bench_dependence.py [--quick] [--device cpu|cuda] [--part A|A-rounds|B|both] [--ns N ...]
                                          [--dtypes float32 float64] [--background-load [only|also]] [--rounds R]

Part A (1-D predictions against a 1-D and against a categorical attribute, n = 1e3..1e6): the ``sorted``
backend's value+grad against dcor's fastest value-only method (the better of AVL and MERGESORT, 1-D only). At
n = 10^6 it also runs ``sorted`` and dcor's two methods alternately, each in a fresh process, ``--rounds`` times
(``dependence_A_alternating``), and prints each round's speed-up over dcor's faster method.
Part B (1-D predictions against 8-D attributes, n = 4,096 / 16,384 / 65,536, and 262,144 on a GPU): ``tiled``
against ``dense`` (where it fits in memory), and with ``--device cuda`` the ``cuda`` kernels, value+grad. On CPU it
also times ``tiled`` right after a ``dense`` step in the same process (provider ``tiled-after-dense``).
Every measurement runs in a fresh subprocess, so its peak resident memory above the process's baseline (after
imports and data) is the extra memory of the computation. Rows are appended to ``benchmarks/results.csv`` as
they are measured, each with the load average at its measurement (``load``). On CUDA: extra memory is the peak
GPU memory allocated during the step above what was allocated before it; ``tiled`` and ``dense`` stop at 65,536
rows (``dense`` records its out-of-memory error there); ``cuda`` rows also give the kernels' throughput
(``tflops``, from :func:`fairret.ops.cuda.kernel_flops`) and its fraction of the GPU's FP32 peak
(``--fp32-peak-tflops``, else a datasheet figure for H100/H200/A100; part of that arithmetic is FP64, so the
fraction is an indicator).

``--background-load`` measures on a busy machine: a second process runs a matrix-product loop on every core
(``_results.LOAD``) for the whole measurement, and the rows are recorded as ``dependence_A_loaded`` /
``dependence_B_loaded``. ``--background-load also`` runs the measurement without the added load first, then with
it, and prints for ``tiled`` the slowest repetition against the unloaded median and against ``dense``'s fastest.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import WORKER_PRELUDE, append_rows, background_load, load_average  # noqa: E402

WORKER = WORKER_PRELUDE + r'''
import json, resource, sys
from _results import time_steps
import numpy as np, torch
torch.set_num_threads(int(sys.argv[6]))
provider, n, attr, reps, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
dtype = getattr(torch, sys.argv[7]) if len(sys.argv) > 7 else torch.float32
rng = np.random.default_rng(0)
x = rng.normal(size=n)
if attr == "1d":
    y = x + rng.normal(size=n)
elif attr == "categorical":
    y = np.eye(4)[rng.integers(0, 4, n)]
else:
    y = rng.normal(size=(n, int(attr[:-1])))
    y[:, 0] += x
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # MiB
if provider.startswith("dcor"):
    import dcor
    method = provider.split("-")[1]
    def step():
        dcor.distance_covariance_sqr(x, y, method=method)
else:
    from fairret.functional import distance_covariance_sqr
    if provider.endswith("-after-dense"):  # what ran before in the process: one dense step (n <= 4,096)
        provider = provider[:-len("-after-dense")]
        m = min(n, 4096)
        xd = torch.tensor(x[:m], dtype=dtype, device=device).unsqueeze(1).requires_grad_(True)
        yd = torch.tensor(y[:m], dtype=dtype, device=device)
        distance_covariance_sqr(xd, yd.unsqueeze(1) if yd.ndim == 1 else yd, backend="dense").backward()
        del xd, yd
    tx = torch.tensor(x, dtype=dtype, device=device).unsqueeze(1)
    ty = torch.tensor(y, dtype=dtype, device=device)
    ty = ty.unsqueeze(1) if ty.ndim == 1 else ty
    def step():
        xx = tx.clone().requires_grad_(True)
        val = distance_covariance_sqr(xx, ty, backend=provider, validate_args=False)
        val.backward()
        if device == "cuda":
            torch.cuda.synchronize()
base = rss()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20
step()
res = time_steps(step, reps)
res["extra_mem_mib"] = (torch.cuda.max_memory_allocated() / 2**20 - base) if device == "cuda" else rss() - base
print(json.dumps(res))
'''


#: FP32 peak (TFLOP/s, datasheet) by a part of the GPU's name, for the ``fp32_peak_fraction`` column.
FP32_PEAK_TFLOPS = {"H100 PCIe": 51.2, "H100": 66.9, "H200": 66.9, "A100": 19.5}


def run(provider, n, attr, reps, device, threads, env, timeout, dtype="float32"):
    try:
        out = subprocess.run([sys.executable, "-c", WORKER, provider, str(n), attr, str(reps), device, str(threads),
                              dtype],
                             capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if out.returncode != 0:
        lines = (out.stderr or "failed").strip().splitlines()
        return {"error": lines[-1][:200] if lines else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--part", choices=["A", "A-rounds", "B", "both"], default="both",
                    help="A-rounds: only part A's alternating rounds at n = 10^6")
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    ap.add_argument("--background-load", nargs="?", const="only", choices=["only", "also"], default=None,
                    help="measure with a competing CPU load in a second process (only), or quiet first and then "
                         "loaded (also)")
    ap.add_argument("--load-threads", type=int, default=os.cpu_count() or 1, help="threads of the competing load")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds at n = 10^6 (Part A)")
    ap.add_argument("--dense-max-n", type=int, default=16384,
                    help="largest n at which part B runs dense on CPU (16,384 takes ~20 GB and a minute a step)")
    ap.add_argument("--ns", type=int, nargs="*", default=None,
                    help="sample sizes of the parts run (default: A 1e3..1e6, B 4,096 16,384 65,536)")
    ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "float64"],
                    help="dtypes of part B (part A: float32)")
    ap.add_argument("--fp32-peak-tflops", type=float, default=None,
                    help="the GPU's FP32 peak for the fp32_peak_fraction column (default: FP32_PEAK_TFLOPS by name)")
    args = ap.parse_args()
    if args.background_load is None:
        phases = [False]
    else:
        phases = [True] if args.background_load == "only" else [False, True]
    rows: list = []
    for loaded in phases:
        if loaded:
            print(f"\n--- with a background load ({args.load_threads} threads); load average before: "
                  f"{load_average()}", flush=True)
            with background_load(args.load_threads):
                rows += measure(args, loaded)
            print(f"--- load stopped; load average {load_average()}", flush=True)
        else:
            print(f"--- no added load; load average {load_average()}", flush=True)
            rows += measure(args, loaded)
    summary(rows)


def measure(args, loaded: bool) -> list:
    """One pass over the parts asked for; returns the rows (also printed as JSON lines)."""
    import torch

    import fairret

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    machine = f"{platform.machine()} {os.cpu_count()} cores"
    peak = args.fp32_peak_tflops
    if args.device == "cuda":
        machine = torch.cuda.get_device_name(0)
        peak = peak or next((v for k, v in FP32_PEAK_TFLOPS.items() if k in machine), None)
    rows = []

    def record(part, provider, n, attr, reps, res, dtype="float32"):
        row = {"date": datetime.date.today().isoformat(), "machine": machine, "torch": torch.__version__,
               "version": fairret.__version__, "benchmark": f"dependence_{part}" + ("_loaded" if loaded else ""),
               "provider": provider,
               "loss": "dCov2 value+grad" if not provider.startswith("dcor") else "dCov2 value only", "n": n,
               "s": attr, "dtype": dtype if not provider.startswith("dcor") else "float64",
               "device": args.device, **res, "load": load_average()}
        if provider == "cuda" and res.get("median_ms"):
            from fairret.ops.cuda import kernel_flops

            tflops = kernel_flops(n, (1, int(attr[:-1])), (0,)) / (res["median_ms"] * 1e-3) / 1e12
            row["tflops"] = tflops
            row["fp32_peak_fraction"] = tflops / peak if peak else ""
        rows.append(row)
        print(json.dumps(row), flush=True)
        # each row as soon as measured: a run stopped part-way keeps what it measured
        extra = ["tflops", "fp32_peak_fraction"] if args.device == "cuda" else ()
        append_rows(Path(args.csv), [row], extra_fields=extra)

    if args.part in ("A", "both"):
        ns = args.ns or ([1000, 10000] if args.quick else [1000, 10000, 100000, 1000000])
        for n in ns:
            reps = 5 if n >= 1000000 else 10
            for attr in ("1d", "categorical"):
                record("A", "sorted", n, attr, reps, run("sorted", n, attr, reps, args.device, args.threads, env,
                                                          args.timeout))
            for method in ("AVL", "MERGESORT"):
                record("A", f"dcor-{method}", n, "1d", reps,
                       run(f"dcor-{method}", n, "1d", reps, "cpu", args.threads, env, args.timeout))
        if not args.quick and args.rounds > 0 and 1000000 in ns:
            alternating(args, env, 1000000, record)
    if args.part == "A-rounds":
        alternating(args, env, 1000000, record)
    if args.part in ("B", "both"):
        ns = list(args.ns or ([4096] if args.quick else [4096, 16384, 65536]))
        if args.device == "cuda" and not args.quick and not args.ns:
            ns.append(262144)
        for n, dtype in [(n, dt) for n in ns for dt in args.dtypes]:
            providers = ["tiled"] + (["dense"] if n <= min(16384, args.dense_max_n) else [])
            if args.device == "cuda":  # the kernels; dense also at 65,536 (records the out-of-memory error if any)
                providers = ["cuda"] + providers + (["dense"] if n == 65536 else [])
                providers = providers if n <= 65536 else ["cuda"]  # tiled: ~16x its 65,536 time
            if args.device == "cpu":  # whatever ran before in the process must not matter
                providers.append("tiled-after-dense")
            for provider in providers:
                reps = 1 if n >= 65536 else (3 if n >= 16384 else 5)
                if provider.startswith("tiled") and n <= 16384:
                    reps = 5  # "within 3x of quiet" and "faster than dense" are checked per repetition
                elif loaded and provider == "dense" and n >= 16384:
                    reps = 1  # minutes per step under load
                if args.device == "cuda" and provider == "cuda":
                    reps = 5 if n <= 65536 else 3  # milliseconds, not seconds
                record("B", provider, n, "8d", reps, run(provider, n, "8d", reps, args.device, args.threads, env,
                                                         args.timeout, dtype), dtype)
    return rows


def alternating(args, env, n, record) -> None:
    """``sorted`` value+grad and dcor's value-only methods at ``n`` in turn, each in a fresh process (one warm-up,
    one timed call), ``args.rounds`` times: one row per process (so a stopped run keeps its finished rounds) and
    each round's speed-up over dcor's faster method."""
    providers = ["sorted", "dcor-AVL", "dcor-MERGESORT"]
    for k in range(args.rounds):
        got = []
        for p in providers:
            res = run(p, n, "1d", 1, "cpu" if p.startswith("dcor") else args.device, args.threads, env, args.timeout)
            record("A_alternating", p, n, "1d", 1, res)
            got.append(res.get("median_ms"))
        if None not in got:
            print(f"  round {k + 1}: sorted {got[0]:.0f} ms, dcor AVL {got[1]:.0f} ms, MERGESORT {got[2]:.0f} ms: "
                  f"{min(got[1:]) / got[0]:.2f}x", flush=True)


def summary(rows: list) -> None:
    """Medians of every row, then the comparisons the loaded rows are for."""
    by = {(r["benchmark"], r["provider"], int(r["n"]), str(r["s"]), r["dtype"]): r for r in rows}
    print("\nsummary (median; slowest repetition):")
    for (bench, prov, n, attr, dtype), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        t, worst = r.get("median_ms"), r.get("max_ms")
        shown = "-" if t in (None, "") else f"{float(t):.2f} ms" + ("" if worst is None else f"; {worst:.2f}")
        mem = r.get("extra_mem_mib")
        extra = f"  {r['tflops']:.1f} TFLOP/s" if r.get("tflops") else ""
        print(f"  {bench:24s} {prov:18s} n={n:>8d} {attr:12s} {dtype:8s} {shown}{extra}"
              + ("" if mem in (None, "") else f"  (+{float(mem):.0f} MiB)")
              + (f"  {r['error']}" if "error" in r else ""))
    for bench in ("dependence_B", "dependence_B_loaded"):
        for n, dtype in sorted({(k[2], k[4]) for k in by if k[0] == bench}):
            dense = by.get((bench, "dense", n, "8d", dtype), {}).get("min_ms")  # dense's fastest repetition
            for prov in ("tiled", "tiled-after-dense"):
                worst = by.get((bench, prov, n, "8d", dtype), {}).get("max_ms")
                quiet = by.get(("dependence_B", "tiled", n, "8d", dtype), {}).get("median_ms")
                if worst is None:
                    continue
                line = f"  {bench} n={n} {dtype}: {prov} slowest repetition {worst:.0f} ms"
                if quiet and bench.endswith("loaded"):
                    line += f" = {worst / quiet:.2f}x the quiet median"
                if dense:
                    line += f"; dense's fastest {dense:.0f} ms ({dense / worst:.1f}x slower)"
                print(line)
    alt = [r for r in rows if r["benchmark"].startswith("dependence_A_alternating") and r.get("median_ms")]
    for bench in sorted({r["benchmark"] for r in alt}):
        t = {p: [r["median_ms"] for r in alt if r["benchmark"] == bench and r["provider"] == p]
             for p in ("sorted", "dcor-AVL", "dcor-MERGESORT")}
        if all(t.values()):
            mem = max(r.get("extra_mem_mib") or 0 for r in alt if r["benchmark"] == bench and r["provider"] == "sorted")
            print(f"  {bench}: sorted's slowest round {max(t['sorted']):.0f} ms, dcor's fastest "
                  f"{min(t['dcor-AVL'] + t['dcor-MERGESORT']):.0f} ms (per-round ratios above); sorted's peak extra "
                  f"memory {mem:.0f} MiB")

if __name__ == "__main__":
    main()
