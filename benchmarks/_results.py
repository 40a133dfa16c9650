"""Appending rows to ``benchmarks/results.csv`` (one writer for every benchmark script), and the timing loop the
benchmark workers share (they run in subprocesses, some in another virtual environment: stdlib only here)."""
from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

#: Put at the top of a worker script run with ``python -c`` so that it can import this module.
WORKER_PRELUDE = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"

FIELDS = ["date", "machine", "torch", "version", "benchmark", "provider", "loss", "n", "s", "dtype", "device",
          "median_ms", "p20_ms", "p80_ms", "extra_mem_mib", "error"]


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
    """Median, 20th and 80th percentile (ms) of ``reps`` timed calls of ``step`` (warm up before calling this)."""
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t)
    ts.sort()

    def q(f: float) -> float:
        return ts[min(len(ts) - 1, int(f * len(ts)))] * 1e3

    return {"median_ms": statistics.median(ts) * 1e3, "p20_ms": q(0.2), "p80_ms": q(0.8)}
