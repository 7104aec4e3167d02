"""The fleet's health and drift as the console shows them: every agent asked in the background, now and then.

A page cannot wait for 10,000 agents, and the controller keeps no per-node
series (DESIGN.md); so the console keeps the last answer of each agent, read
the way the node page reads one (:func:`treadle.daemon.nodeview.parse_agent_metrics`
over the agent's ``/metrics``), and refreshes the lot in a background thread
when a page asks and the last sweep is older than ``interval_s``. Pages show
what the last sweep saw and when; a node not asked yet is "unknown", an
agent that does not answer is "unreachable": never a guess.

Health: healthy, unhealthy (the agent says so), unreachable, unknown.
Drift: in_sync, drifted (resources changed on the host since they were
applied), unknown.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from treadle import log
from treadle.daemon.nodeview import parse_agent_metrics
from treadle.rollout.observe import Target, scrape

HEALTH = ("healthy", "unhealthy", "unreachable", "unknown")
DRIFT = ("in_sync", "drifted", "unknown")
UNKNOWN = ("unknown", "unknown")
#: A sweep asks every agent: at 10,000 nodes, no more often than this while someone reads the console.
SWEEP_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class Seen:
    """One agent's last answer, reduced to what the fleet view filters on."""

    health: str
    drift: str
    at: float


def classify(facts: dict[str, Any] | None) -> tuple[str, str]:
    """(health, drift) of a parsed exposition; None (no readable answer) is unreachable, drift unknown."""
    if facts is None:
        return "unreachable", "unknown"
    health = (
        "unknown"
        if facts.get("healthy") is None
        else "healthy"
        if facts["healthy"]
        else "unhealthy"
    )
    return health, "drifted" if facts["resources"]["drifted"] > 0 else "in_sync"


@dataclass(frozen=True, slots=True)
class Sweep:
    """What the pages read: each node's last answer, when the last sweep ended, whether one is running."""

    seen: dict[str, Seen]
    finished_at: float | None
    running: bool


class FleetWatch:
    """The last answer of every agent; a sweep over ``targets()`` starts when a reader finds it stale."""

    def __init__(
        self,
        targets: Callable[[], Sequence[Target]],
        timeout_s: float,
        interval_s: float = SWEEP_INTERVAL_S,
        concurrency: int = 64,
    ) -> None:
        self._targets, self.timeout_s, self.interval_s, self.concurrency = (
            targets,
            timeout_s,
            interval_s,
            concurrency,
        )
        self.round_s = (
            interval_s  # a sweep ends by the time the next one may start: the rest stay unreachable
        )
        self._lock = threading.Lock()
        self._seen: dict[str, Seen] = {}
        self._finished: float | None = None
        self._thread: threading.Thread | None = None

    def read(self, refresh: bool = True) -> Sweep:
        """The last answers; with ``refresh``, a new sweep starts in the background when the last one is stale."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            stale = self._finished is None or time.time() - self._finished >= self.interval_s
            if refresh and stale and not running:
                self._thread = threading.Thread(
                    target=self._sweep, name="console-fleet-watch", daemon=True
                )
                self._thread.start()
                running = True
            return Sweep(dict(self._seen), self._finished, running)

    def wait(self, timeout_s: float) -> None:
        """Until the running sweep (if any) ends: for tests and benchmarks, which need a finished sweep."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _sweep(self) -> None:
        seen: dict[str, Seen] | None = None
        try:
            targets = list(self._targets())
            facts, _ = anyio.run(
                functools.partial(
                    scrape,
                    targets,
                    _parse,
                    timeout_s=self.timeout_s,
                    concurrency=self.concurrency,
                    round_s=self.round_s,
                )
            )
            now = time.time()
            seen = {t.node: Seen(*classify(facts.get(t.node)), now) for t in targets}
        except Exception as e:  # noqa: BLE001 - a failed sweep is logged and ends; the next stale read retries
            log.warning("console.fleet_watch_failed", error=str(e) or type(e).__name__)
        with self._lock:
            if seen is not None:  # a failed sweep keeps what the last one saw
                self._seen = seen
            self._finished = time.time()


def _parse(body: bytes, node: str) -> dict[str, Any] | None:
    return parse_agent_metrics(body.decode("utf-8", "replace"), node)
