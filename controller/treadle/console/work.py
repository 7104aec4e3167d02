"""Slow answers the console computes once: off the event loop, bounded in time, kept while they stay true.

A commit's plan or a node's provenance at a commit never changes (commits
are immutable), so each is computed once, in a small pool of its own, and
kept in a bounded cache. A page waits for it at most ``wait_s``; past that it
says "still computing" and reloads itself, while the work finishes in the
background and lands in the cache. At most ``max_pending`` computations wait
at a time: a flood of requests for different commits is refused, not queued
without bound.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import anyio


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a computation stands: ``state`` is "done" (``value``), "failed" (``error``), "running" or "busy"."""

    state: str
    value: Any = None
    error: str = ""


class Work:
    """A cache of immutable results, each computed once in a bounded thread pool."""

    def __init__(self, name: str, workers: int = 1, keep: int = 64, max_pending: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"console-{name}")
        self._keep, self._max_pending = keep, max_pending
        self._lock = threading.Lock()
        self._done: OrderedDict[Hashable, Outcome] = OrderedDict()
        self._running: dict[Hashable, Future[Any]] = {}

    def cached(self, key: Hashable) -> Outcome | None:
        """The finished result of ``key``, if any (nothing is started)."""
        with self._lock:
            hit = self._done.get(key)
            if hit is not None:
                self._done.move_to_end(key)
            return hit

    async def get(self, key: Hashable, compute: Callable[[], Any], wait_s: float) -> Outcome:
        """The outcome of ``compute`` for ``key``: from the cache, or started (once) and awaited up to ``wait_s``."""
        hit = self.cached(key)
        if hit is not None:
            return hit
        with self._lock:
            running = self._running.get(key)
            started = running is None
            if running is None:
                if len(self._running) >= self._max_pending:
                    return Outcome("busy")
                running = self._pool.submit(compute)
                self._running[key] = running
        future: Future[Any] = running
        if started:  # outside the lock: a future already done runs its callback here, and _finish takes the lock
            future.add_done_callback(functools.partial(self._finish, key))
        try:
            await anyio.to_thread.run_sync(future.result, wait_s)
        except FutureTimeout:
            return Outcome("running")
        except Exception:  # noqa: BLE001 - the future holds it; _outcome reads it
            pass
        return _outcome(future)

    def _finish(self, key: Hashable, future: Future[Any]) -> None:
        """Keep a result; not a failure: it may have been the mirror's passing state, and the next request retries."""
        outcome = _outcome(future)
        with self._lock:
            self._running.pop(key, None)
            if outcome.state != "done":
                return
            self._done[key] = outcome
            self._done.move_to_end(key)
            while len(self._done) > self._keep:
                self._done.popitem(last=False)


def _outcome(future: Future[Any]) -> Outcome:
    error = future.exception()
    return (
        Outcome("done", future.result())
        if error is None
        else Outcome("failed", error=str(error) or type(error).__name__)
    )
