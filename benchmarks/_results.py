"""Appending rows to ``benchmarks/results.csv`` (one writer for every benchmark script), and the timing loop the
benchmark workers share (they run in subprocesses, some in another virtual environment: stdlib only here)."""
from __future__ import annotations

import contextlib
import csv
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence

#: Put at the top of a worker script run with ``python -c`` so that it can import this module.
WORKER_PRELUDE = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"

FIELDS = ["date", "machine", "torch", "version", "benchmark", "provider", "loss", "n", "s", "dtype", "device",
          "median_ms", "p20_ms", "p80_ms", "extra_mem_mib", "error", "min_ms", "max_ms", "load"]


def append_rows(path: Path, rows: List[Dict], extra_fields: Sequence[str] = ()) -> None:
    """Append ``rows`` under the file's header; create the file, or rewrite it with :data:`FIELDS` (and
    ``extra_fields``, columns only some benchmarks fill) when its header lacks a column (older files), so that
    columns never shift."""
    path = Path(path)
    fields = list(FIELDS) + [c for c in extra_fields if c not in FIELDS]
    old: List[Dict] = []
    header: List[str] = []
    if path.exists():
        with open(path) as f:
            header = next(csv.reader(f), [])
        if all(c in header for c in fields):
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=header, extrasaction="ignore").writerows(rows)
            return
        with open(path) as f:
            old = list(csv.DictReader(f))
    header_fields = fields + [c for c in header if c not in fields]  # keep columns other benchmarks added
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header_fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(old + rows)


def time_steps(step: Callable[[], None], reps: int) -> Dict[str, float]:
    """Median, 20th and 80th percentile, minimum and maximum (ms) of ``reps`` timed calls of ``step`` (warm up
    before calling this)."""
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    ts.sort()

    def q(f: float) -> float:
        return ts[min(len(ts) - 1, int(f * len(ts)))] * 1e3

    return {"median_ms": statistics.median(ts) * 1e3, "p20_ms": q(0.2), "p80_ms": q(0.8), "min_ms": ts[0] * 1e3,
            "max_ms": ts[-1] * 1e3}


#: The competing load of ``--background-load``: a matrix-product loop in its own process, using ``sys.argv[1]``
#: threads (torch if available, else numpy); it stops by itself when the process that started it is gone.
LOAD = r"""
import os, sys
threads, parent = int(sys.argv[1]), os.getppid()
try:
    import torch
    torch.set_num_threads(threads)
    a = torch.randn(512, 512)
    step = lambda a: torch.tanh(a @ a * 1e-3)
except ImportError:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import numpy as np
    a = np.random.default_rng(0).normal(size=(512, 512))
    step = lambda a: np.tanh(a @ a * 1e-3)
while os.getppid() == parent:
    for _ in range(20):
        a = step(a)
"""


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages (``"2.07/2.01/5.06"``), for the log and the ``load`` column."""
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - platforms without getloadavg
        return "unknown"


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def background_load(threads: int, warmup_s: float = 2.0) -> Iterator[None]:
    """Run :data:`LOAD` with ``threads`` threads in a second process for the duration of the block (a busy
    machine: another job, DataLoader workers, a notebook), started ``warmup_s`` seconds before the block and
    stopped after it."""
    proc = subprocess.Popen([sys.executable, "-c", LOAD, str(threads)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that the load is stopped on SIGTERM too
    try:
        time.sleep(warmup_s)
        if proc.poll() is not None:
            raise RuntimeError("the background load exited at once")
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
