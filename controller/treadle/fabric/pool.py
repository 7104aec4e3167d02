"""fork_map: a list of independent jobs shared between this process and one forked worker.

Why a forked worker: the jobs (rendering batches of nodes) read the render's
state — parsed documents, merged overlays, compiled templates. A worker forked
at the start of the map already has all of it, copy-on-write, so only job
indexes go out and results come back (pickled). The worker is an ordinary
:class:`concurrent.futures.ProcessPoolExecutor` in the ``fork`` context.

Sharing: every job is submitted to the worker, which takes them from the
front; this process takes them from the back, cancelling each future the
worker has not started and running that job itself. A worker that gets
little CPU on a busy machine therefore just does fewer jobs instead of
holding up the render. Results are put back in job order, so the outcome is
the same bytes as running every job here; a job that failed or was lost in
the worker (it raised, or the worker died) is run again here, so its error
surfaces exactly as without the worker.

Forking is skipped when it is unsafe or pointless: without ``fork``, on one
CPU, with other threads running (a fork copies only the calling thread, and
a lock another thread holds would never be released in the child: the
controller daemon therefore always renders serially), or for one job.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ProcessPoolExecutor
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")

#: The map in progress; the forked worker reads its own copy (set before the fork, never pickled).
_current: tuple[Sequence[Any], Callable[[Any], Any]] | None = None


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether forking a worker is safe and could help here."""
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1 and usable_cpus() > 1


def _run_job(index: int) -> Any:
    assert _current is not None
    jobs, run = _current
    return run(jobs[index])


def fork_map(jobs: Sequence[J], run: Callable[[J], R], parallel: bool = True) -> list[R]:
    """``[run(job) for job in jobs]``, shared with one forked worker when ``parallel`` and possible.

    ``run`` must be deterministic and its results picklable.

    Raises:
        Whatever ``run`` raises for a job (run again here when it failed in the worker).
    """
    if not parallel or len(jobs) < 2 or not can_fork():
        return [run(job) for job in jobs]
    global _current
    _current = (jobs, run)
    results: dict[int, R] = {}
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_run_job, i) for i in range(len(jobs))]
            for i in reversed(range(len(jobs))):
                if futures[i].cancel():
                    results[i] = run(jobs[i])
            for i, future in enumerate(futures):
                if i not in results:
                    try:
                        results[i] = future.result()
                    except (Exception, CancelledError):  # noqa: BLE001  failed or lost there: run it here
                        results[i] = run(jobs[i])
    finally:
        _current = None
    return [results[i] for i in range(len(jobs))]
