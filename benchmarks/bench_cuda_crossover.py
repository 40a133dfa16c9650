"""Where ``backend="auto"`` should switch on a GPU: value+grad time of ``dense``, ``tiled`` and ``cuda`` for 1-D
predictions against 8-D attributes (dCov², gradient w.r.t. the predictions) at growing n, in one process.

    python benchmarks/bench_cuda_crossover.py [--device cuda|cpu] [--dtypes float32 float64] [--ns 256 512 ...]
                                              [--reps 20] [--csv FILE]

Each (n, dtype, backend): two warm-up steps (the first use of ``cuda`` builds and self-checks the kernels), then the
median of ``reps`` steps, each timed with CUDA events around the step (on the CPU: ``time.perf_counter``). Prints a
table and, per dtype, the smallest measured n from which ``cuda`` is the fastest at every larger measured n (the
candidate for ``fairret.ops.CUDA_MIN_N``) and the same for ``tiled`` against ``dense`` (``DENSE_MAX_N`` on this
device). Rows (benchmark ``cuda_crossover``) are appended to the CSV. With ``--device cpu`` the ``cuda`` backend is
left out: that checks the script, not a crossover.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fairret  # noqa: E402
from _results import append_rows  # noqa: E402
from fairret.functional import distance_covariance_sqr  # noqa: E402
from fairret.ops import CUDA_MIN_N, DENSE_MAX_N  # noqa: E402

NS = [128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]


def time_backend(x: torch.Tensor, y: torch.Tensor, backend: str, reps: int) -> float:
    """Median milliseconds of one value+grad step."""
    cuda = x.is_cuda

    def step():
        xx = x.clone().requires_grad_(True)
        distance_covariance_sqr(xx, y, backend=backend).backward()

    for _ in range(2):
        step()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def crossover(ns, faster) -> str:
    """The smallest n from which ``faster(n)`` holds at every larger measured n, as text."""
    ok = [faster(n) for n in ns]
    if not ok or not ok[-1]:
        return "not reached in the measured range"
    i = len(ok)
    while i > 0 and ok[i - 1]:
        i -= 1
    return f"n >= {ns[i]}" + (f" (between {ns[i - 1]} and {ns[i]})" if i > 0 else " (at every n measured)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--ns", type=int, nargs="+", default=NS)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    args = ap.parse_args()
    dev = torch.device(args.device)
    backends = ["dense", "tiled"] + (["cuda"] if dev.type == "cuda" else [])
    machine = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
               else f"{platform.machine()} {os.cpu_count()} cores")
    rows, table = [], {}
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for n in args.ns:
            g = torch.Generator().manual_seed(n)
            x = torch.randn(n, 1, generator=g, dtype=torch.float64)
            y = torch.randn(n, 8, generator=g, dtype=torch.float64)
            y[:, 0] += x[:, 0]
            x, y = x.to(dev, dtype), y.to(dev, dtype)
            for be in backends:
                try:
                    ms, err = time_backend(x, y, be, args.reps), ""
                except Exception as e:  # noqa: BLE001 - e.g. out of memory: record it and go on
                    ms, err = None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:150]}"
                table[(dtype_name, n, be)] = ms
                rows.append({"date": datetime.date.today().isoformat(), "machine": machine,
                             "torch": torch.__version__, "version": fairret.__version__,
                             "benchmark": "cuda_crossover", "provider": be,
                             "loss": "dCov2 value+grad", "n": n, "s": "8d", "dtype": dtype_name,
                             "device": dev.type, "median_ms": "" if ms is None else ms, "error": err})
                print(f"{dtype_name} n={n:>6d} {be:6s} " + (f"{ms:9.3f} ms" if ms is not None else err), flush=True)
    append_rows(Path(args.csv), rows)
    print(f"\nvalue+grad, median ms ({machine}, torch {torch.__version__}; now CUDA_MIN_N = {CUDA_MIN_N}, "
          f"DENSE_MAX_N = {DENSE_MAX_N})")
    print("dtype    " + "".join(f"{n:>10d}" for n in args.ns))
    for dtype_name in args.dtypes:
        for be in backends:
            cells = [table.get((dtype_name, n, be)) for n in args.ns]
            print(f"{dtype_name:7s} {be:6s}" + "".join(f"{c:10.3f}" if c is not None else f"{'-':>10s}"
                                                       for c in cells))
    for dtype_name in args.dtypes:
        t = {k[1:]: (v if v is not None else float("inf")) for k, v in table.items() if k[0] == dtype_name}
        print(f"{dtype_name}: tiled faster than dense from "
              f"{crossover(args.ns, lambda n: t[n, 'tiled'] < t[n, 'dense'])}")
        if "cuda" in backends:
            print(f"{dtype_name}: cuda fastest from "
                  f"{crossover(args.ns, lambda n: t[n, 'cuda'] < min(t[n, 'dense'], t[n, 'tiled']))}")
        else:
            print(f"{dtype_name}: cuda not measured (no CUDA device)")


if __name__ == "__main__":
    main()
