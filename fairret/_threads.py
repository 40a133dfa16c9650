r"""Thread control for the CPU hot paths (tiled and sorted distance covariance, the projection solver).

PyTorch parallelises one operation at a time: every op on more than ~32k elements is split over the intra-op
threads and ends in a barrier across them. On a machine where other work competes for the cores (DataLoader
workers, a second job, a notebook) one of the threads is often descheduled, and every op then waits for a time
slice: a loop of a few thousand such ops runs many times slower with two threads than with one (measured with
``benchmarks/bench_dependence.py --background-load``). The hot paths therefore

* run their ops single-threaded (:func:`single_threaded`), so that no op waits for another thread, and
* where the work splits into independent pieces (tiles of the pair matrix, halves of the sorted sweep), run the
  pieces in Python threads (:func:`run_parallel`), as many as :func:`torch.get_num_threads` allows. The ops
  release the GIL, so the threads compute in parallel; a descheduled thread delays only its own pieces.

How the work is split never depends on the number of threads, so results are bitwise identical for any setting
of :func:`torch.set_num_threads`.

Example:
    >>> import torch
    >>> from fairret._threads import run_parallel, single_threaded
    >>> with single_threaded():
    ...     torch.get_num_threads()
    1
    >>> run_parallel([lambda: 1 + 1, lambda: 2 * 3], workers=2)
    [2, 6]
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, List, Sequence, TypeVar

import torch

__all__ = ["single_threaded", "run_parallel", "worker_count"]

T = TypeVar("T")


_outer = threading.local()  # the thread count the user had set, while inside single_threaded()


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the torch ops of the block with one intra-op thread; the previous setting is restored on exit (and is
    what :func:`worker_count` goes by inside the block).

    :func:`torch.set_num_threads` acts on the calling thread's OpenMP and MKL settings (and on the default that
    threads started later pick up), so the block changes nothing for ops that other threads run meanwhile.
    """
    before = torch.get_num_threads()
    outer = getattr(_outer, "threads", None)
    if outer is None:
        _outer.threads = before
    try:
        if before == 1:
            yield
        else:
            torch.set_num_threads(1)
            try:
                yield
            finally:
                torch.set_num_threads(before)
    finally:
        _outer.threads = outer


def worker_count(tasks: int) -> int:
    """Threads worth starting for ``tasks`` independent pieces: the user's :func:`torch.get_num_threads` (as set
    outside any :func:`single_threaded` block), at most ``tasks``."""
    threads = getattr(_outer, "threads", None) or torch.get_num_threads()
    return max(1, min(threads, tasks))


def run_parallel(tasks: Sequence[Callable[[], T]], workers: int) -> List[T]:
    """Call every task once, spread over ``workers`` threads (the caller's thread is one of them), each running
    its ops single-threaded; return the results in task order.

    Threads take the next task as they become free, so a thread that the OS deschedules holds up only the task it
    is on. Grad mode is off in the workers (tasks are no-grad computations). The first exception raised by a task
    is re-raised here after every thread has stopped.
    """
    results: List[T] = [None] * len(tasks)  # type: ignore[list-item]
    if workers <= 1 or len(tasks) <= 1:
        with single_threaded(), torch.no_grad():
            return [task() for task in tasks]
    lock = threading.Lock()
    pending = iter(range(len(tasks)))
    errors: List[BaseException] = []

    def work() -> None:
        with torch.no_grad():
            while not errors:
                with lock:
                    k = next(pending, None)
                if k is None:
                    return
                try:
                    results[k] = tasks[k]()
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    errors.append(exc)

    def helper() -> None:
        torch.set_num_threads(1)  # this thread's own OpenMP/MKL setting
        work()

    with single_threaded():
        threads = [threading.Thread(target=helper, daemon=True) for _ in range(workers - 1)]
        for t in threads:
            t.start()
        try:
            work()
        finally:
            for t in threads:
                t.join()
    if errors:
        raise errors[0]
    return results
