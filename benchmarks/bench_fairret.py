"""Benchmark of the linear-fractional losses: value+grad time against fairret 0.1.3 in the same run.

    python benchmarks/bench_fairret.py [--quick] [--fairret013-python /path/to/venv/bin/python]
                                       [--ns N ...] [--ss S ...] [--losses NAME ...] [--background-load]

fairret 0.1.3 has the same import name, so it runs in its own virtual environment (``--fairret013-python``,
e.g. ``python -m venv /tmp/v013 && /tmp/v013/bin/pip install torch==2.13.0 fairret==0.1.3 cvxpy``); this script
sends it the same timing loop through a subprocess. Results (median, p20, p80 in ms) are appended to
``benchmarks/results.csv`` with the machine, versions, date and the load average at the measurement (``load``).
The summary also gives each projection loss's time as a multiple of the KL projection's in the same run.
``--background-load`` runs the whole measurement with a competing CPU load in a second process (a matrix-product
loop on every core, ``_results.LOAD``); its rows are recorded as ``fairret_loss_value_grad_loaded``.

The total-variation projection against the KL one at N = 65,536 and 1,048,576:

    python benchmarks/bench_fairret.py --ns 65536 1048576 --ss 4 --losses KLProjectionLoss \
        TotalVariationProjectionLoss
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

TIMER = WORKER_PRELUDE + r'''
import json, sys, torch
from _results import time_steps
torch.set_num_threads(int(sys.argv[5]))
from fairret.statistic import PositiveRate
import fairret.loss as L
name, n, s, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(0)
x = torch.randn(n, 1, generator=g)
sens = torch.nn.functional.one_hot(torch.randint(0, s, (n,), generator=g), s).float()
loss = getattr(L, name)(PositiveRate())
def step():
    xx = x.clone().requires_grad_(True)
    loss(xx, sens).backward()
step()
print(json.dumps(time_steps(step, reps)))
'''

LOSSES = ["NormLoss", "LSELoss", "KLProjectionLoss", "JensenShannonProjectionLoss", "TotalVariationProjectionLoss",
          "SquaredEuclideanProjectionLoss", "ChiSquaredProjectionLoss"]


def run_timer(python: str, name: str, n: int, s: int, reps: int, threads: int, env=None) -> dict:
    out = subprocess.run([python, "-c", TIMER, name, str(n), str(s), str(reps), str(threads)], capture_output=True,
                         text=True, env=env, cwd="/tmp", timeout=1800)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small grid (N=1,024 and 65,536, S=4)")
    ap.add_argument("--fairret013-python", default=None, help="python of a venv with fairret 0.1.3 (+ cvxpy)")
    ap.add_argument("--ns", type=int, nargs="*", default=None, help="sample sizes (default 1,024 65,536 1,048,576)")
    ap.add_argument("--ss", type=int, nargs="*", default=None, help="group counts (default 2 4 8 32)")
    ap.add_argument("--losses", nargs="*", default=None, help=f"subset of {LOSSES}")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 20, or 3 above N=65,536)")
    ap.add_argument("--from-log", default=None, help="append the JSON rows of an earlier run's output to the CSV")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    ap.add_argument("--background-load", action="store_true",
                    help="measure with a competing CPU load in a second process")
    ap.add_argument("--load-threads", type=int, default=os.cpu_count() or 1, help="threads of the competing load")
    args = ap.parse_args()

    if args.from_log:
        rows = [json.loads(line) for line in Path(args.from_log).read_text().splitlines() if line.startswith("{")]
        _write(rows, Path(args.csv))
        return
    if args.background_load:
        print(f"--- with a background load ({args.load_threads} threads); load average before: {load_average()}",
              flush=True)
        with background_load(args.load_threads):
            rows = measure(args, loaded=True)
        print(f"--- load stopped; load average {load_average()}", flush=True)
    else:
        print(f"--- no added load; load average {load_average()}", flush=True)
        rows = measure(args, loaded=False)
    _write(rows, Path(args.csv))
    _ratios(rows)


def measure(args, loaded: bool) -> list:
    """Every (N, S, loss) asked for, in a fresh process each; returns the rows (also printed as JSON lines)."""
    import torch

    import fairret

    ns = args.ns or ([1024, 65536] if args.quick else [1024, 65536, 1048576])
    ss = args.ss or ([4] if args.quick else [2, 4, 8, 32])
    losses = args.losses or LOSSES
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    rows = []
    machine = f"{platform.machine()} {os.cpu_count()} cores ({platform.processor() or 'cpu'})"
    date = datetime.date.today().isoformat()
    for n in ns:
        for s in ss:
            for name in losses:
                reps = args.reps or (20 if n <= 65536 else 3)
                providers = [("fairret-plus", sys.executable, env)]
                # 0.1.3's cvxpy projections take seconds per call: compare them where the targets are set.
                if args.fairret013_python and (name in ("NormLoss", "LSELoss") or (n <= 65536 and s == 4)):
                    providers.append(("fairret-0.1.3", args.fairret013_python, None))
                for provider, py, e in providers:
                    r = run_timer(py, name, n, s, reps if provider == "fairret-plus" else min(reps, 5),
                                  args.threads, e)
                    row = {"date": date, "machine": machine, "torch": torch.__version__,
                           "version": fairret.__version__ if provider == "fairret-plus" else "0.1.3",
                           "benchmark": "fairret_loss_value_grad" + ("_loaded" if loaded else ""),
                           "provider": provider, "loss": name, "n": n, "s": s, "dtype": "float32", "device": "cpu",
                           **r, "load": load_average()}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def _write(rows, path: Path) -> None:
    append_rows(path, rows)


def _ratios(rows) -> None:
    """Print the speed-ups against 0.1.3 and the projections' times against KL's, measured in the same run."""
    by = {(r["provider"], r["loss"], r["n"], r["s"]): r.get("median_ms") for r in rows}
    kl = {(n, s): t for (prov, loss, n, s), t in by.items() if prov == "fairret-plus" and loss == "KLProjectionLoss"}
    if any(kl.values()):
        print("\nprojection losses against the KL projection (median value+grad, same run):")
        for (prov, loss, n, s), t in by.items():
            if prov == "fairret-plus" and "Projection" in loss and loss != "KLProjectionLoss" and t and kl.get((n, s)):
                print(f"  {loss:32s} N={n:>8d} S={s:>2d}: {t / kl[(n, s)]:6.2f}x KL ({t:.2f} ms vs "
                      f"{kl[(n, s)]:.2f} ms)")
    print("\nspeed-up of fairret-plus over fairret 0.1.3 (median value+grad, same run):")
    for (prov, loss, n, s), t in by.items():
        if prov == "fairret-0.1.3" and t and by.get(("fairret-plus", loss, n, s)):
            print(f"  {loss:32s} N={n:>8d} S={s:>2d}: {t / by[('fairret-plus', loss, n, s)]:7.1f}x "
                  f"({t:.2f} ms vs {by[('fairret-plus', loss, n, s)]:.2f} ms)")


if __name__ == "__main__":
    main()
