"""Health observation off the push path: rounds in a thread of their own, a cache the rollout reads.

    rollout tick (pipeline worker thread)        health thread
    ─────────────────────────────────────        ──────────────────────────────────────────
    observations(targets) ── wanted targets ──►  round: source.observe_round(targets)
                          ◄── latest per node ─  (bounded connections, per-target and
                                                  per-round deadlines: see ScrapeSource)

Why: a round over 10,000 agents, a tenth of them down or hung, takes seconds
to tens of seconds; if the pipeline's worker waited for it, a push would wait
too. Here the tick never does network I/O: it names the nodes it gates and
reads what the last rounds saw.

Rules this module keeps (tests/rollout/test_health.py pins them):

- An observation counts only while it is younger than ``stale_after_s``,
  measured from the start of the round that took it; older, the node is
  unknown, which the state machine never counts as a pass.
- An observation counts only if its round started at or after ``since`` (the
  rollout's soak start): what a node said before an operator resumed a halted
  wave, or before the wave was published, is never judged again
  (tests/rollout_e2e/test_runbook_e2e.py repairs a node, resumes, and expects
  the repaired state to be what counts).
- A target that gave nothing in a round (refused, hung, unreadable, past the
  round's deadline) replaces what it reported before: a node that stops
  answering is unknown at once, never healthy on old data.
- Rounds are paced: ``interval_s`` from the end of one to the start of the
  next; a new set of wanted targets (a wave just published) starts one at
  once, or as soon as the round in progress ends.

Reading costs what changed, not what is watched: at 100,000 nodes a walk of
the cache per tick alone took about 100 ms. The watcher keeps the answer it
gave last and notes each node whose entry has read differently since
(another observation, none, stale, or taken on the other side of the
reader's ``since``); a read with the same targets and ``since`` looks again
at those nodes only, and returns that very object when there are none.
Staleness comes from the clock, not from a round, so a read first expires the
rounds (all the nodes a round observed share its start) that have grown older
than ``stale_after_s``: a few rounds to look at, then only their nodes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import and_, attrgetter, is_not
from typing import Any, Protocol

import anyio

from treadle import log
from treadle.rollout.machine import Observation
from treadle.rollout.observe import HealthSource, RoundResult, Target


class Observer(Protocol):
    """What the rollout service asks: the observations of these targets, now (absent: unknown)."""

    def observations(
        self, targets: Sequence[Target], since: float | None = None
    ) -> dict[str, Observation]:
        """``since``: ignore what was observed before this time (seconds since the epoch)."""
        ...

    def asked_all(self) -> bool:
        """Whether, when the last observations were read, every target had been asked at least once.

        A target never asked is not one that stopped answering: nothing is known of it, and a rollout
        must neither count it nor restart its soak (a controller just started, a wave just published).
        """
        ...


class DirectObserver:
    """Asks the source in the caller's thread (tests and tools that step a rollout by hand)."""

    def __init__(self, source: HealthSource) -> None:
        self.source = source

    def observations(
        self, targets: Sequence[Target], since: float | None = None
    ) -> dict[str, Observation]:
        if not targets:
            return {}
        return anyio.run(self.source.observe, targets)  # observed now: after any ``since``

    def asked_all(self) -> bool:
        return True  # every read asks every target


@dataclass(frozen=True, slots=True)
class _Seen:
    at: float  # start of the round that took it (monotonic clock)
    wall: float  # the same moment in seconds since the epoch, to compare with the rollout's times
    observation: Observation | None  # None: the target gave nothing in that round


_TAKEN = attrgetter("observation")
_AT = attrgetter("at")


@dataclass(slots=True)
class _Answer:
    """The last answer given: for these targets (the very object) and ``since``."""

    targets: Sequence[Target]
    floor: float
    out: dict[str, Observation]


@dataclass(frozen=True, slots=True)
class _Kept:
    """A round's result as the cache takes it, worked out from the entries it replaces."""

    started: float
    wall: float
    entries: dict[str, _Seen]  # the new entry of each watched node the round covered
    observed: list[str]  # those with an observation (the round's set in ``_rounds``)
    differ: list[str]  # those whose observation differs from their old entry's, or that had none
    #: Old entries by round start: (that round's wall time, their nodes, those with an observation).
    before: dict[float, tuple[float, list[str], list[str]]]

    @staticmethod
    def of(
        targets: Sequence[Target],
        observations: Mapping[str, Observation],
        started: float,
        wall: float,
        wanted: Mapping[str, Target],
        seen: Mapping[str, _Seen],
    ) -> _Kept:
        entries: dict[str, _Seen] = {}
        observed: list[str] = []
        differ: list[str] = []
        before: dict[float, tuple[float, list[str], list[str]]] = {}
        for t in targets:
            n = t.node
            if n not in wanted or n in entries:
                continue
            obs = observations.get(n)
            entries[n] = _Seen(started, wall, obs)
            if obs is not None:
                observed.append(n)
            old = seen.get(n)
            if old is None:
                differ.append(n)
                continue
            group = before.get(old.at)
            if group is None:
                group = before[old.at] = (old.wall, [], [])
            group[1].append(n)
            if old.observation is not None:
                group[2].append(n)
            if old.observation != obs:
                differ.append(n)
        return _Kept(started, wall, entries, observed, differ, before)


@dataclass(frozen=True, slots=True)
class RoundStats:
    """The counts of one finished round (``/v1/status`` shows the last one)."""

    started_at: float
    duration_s: float
    targets: int
    ok: int
    failed: dict[str, int] = field(default_factory=dict)  # reason -> count


class HealthWatcher:
    """Observes the wanted targets in rounds, in its own thread, and keeps the latest observation per node."""

    def __init__(
        self,
        source: HealthSource,
        *,
        interval_s: float,
        stale_after_s: float,
        metrics: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self._interval_s = interval_s
        self._stale_after_s = stale_after_s
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._wanted: dict[str, Target] = {}
        #: The targets object ``_wanted`` was made from: the rollout hands the same list while it stays put.
        self._wanted_from: Sequence[Target] | None = None
        self._seen: dict[str, _Seen] = {}
        #: Round start -> its wall time, for the rounds that may still be fresh (see _read_into).
        self._walls: dict[float, float] = {}
        #: The nodes whose entry reads differently since the last answer (a dict: ordered, each once).
        self._changed: dict[str, None] = {}
        #: Round start -> the nodes whose observation that round took, while they are not stale.
        self._rounds: dict[float, set[str]] = {}
        #: Nodes whose observation was read as stale: their next round changes them whatever it says.
        self._expired: set[str] = set()
        #: The ``since`` of the last read (an entry taken on the other side of it reads differently).
        self._floor = float("-inf")
        self._answer: _Answer | None = None
        #: Whether every watched node had an entry (had been asked) at the last read.
        self._asked_all = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_round: RoundStats | None = None
        #: Rounds finished since start; a condition variable lets tests wait for the next one.
        self.rounds = 0
        self._round_done = threading.Condition(self._lock)

    # -- the rollout's side (any thread) ----------------------------------------

    def observations(
        self, targets: Sequence[Target], since: float | None = None
    ) -> dict[str, Observation]:
        """Watch ``targets`` from now on (and only them) and return their fresh observations taken since ``since``.

        The caller must not change the answer, nor ``targets`` once handed over (the same object is
        taken to mean the same targets): an answer with no news since the last is that same object.
        """
        self.watch(targets)
        floor = float("-inf") if since is None else since
        with self._lock:
            # Entries exist only for watched nodes (see watch and _record_round): equal sizes, all asked.
            self._asked_all = len(self._seen) == len(self._wanted)
            now = self._clock()
            self._expire(now)
            last = self._answer
            if (
                last is None
                or last.targets is not targets
                or last.floor != floor
                or len(self._changed) >= len(self._wanted)  # all of it anew: no copy to undo
            ):
                self._floor = floor
                out: dict[str, Observation] = {}
                self._read_into(out, [t.node for t in targets], now, floor)
            else:
                if not self._changed:
                    return last.out
                out = dict(last.out)
                changed = list(self._changed)
                deque(map(out.pop, changed, repeat(None)), maxlen=0)  # each read again below, in C
                self._read_into(out, changed, now, floor)
            self._changed = {}
            self._answer = _Answer(targets, floor, out)
            return out

    def asked_all(self) -> bool:
        """See :meth:`Observer.asked_all`: false until a round has covered every node watched."""
        return self._asked_all

    def watch(self, targets: Sequence[Target]) -> None:
        """Make ``targets`` the set observed; a change starts a round at once."""
        if targets is self._wanted_from:
            return
        wanted = {t.node: t for t in targets}
        with self._lock:
            self._wanted_from = targets
            if wanted == self._wanted:
                return
            self._wanted = wanted
            self._seen = {n: s for n, s in self._seen.items() if n in wanted}
            for nodes in self._rounds.values():
                nodes.intersection_update(wanted)
            self._expired.intersection_update(wanted)
            self._changed = {}  # the next read starts afresh: its targets are another object
            self._answer = None
        self._wake.set()

    def _read_into(
        self, out: dict[str, Observation], nodes: list[str], now: float, floor: float
    ) -> None:
        """Add what ``nodes``' entries read as now to ``out`` (the lock is held).

        Done in C but for a look per distinct round: the nodes a round observed share its start.
        """
        found = list(map(self._seen.get, nodes))
        nodes = list(compress(nodes, found))  # an entry is always truthy
        found = list(filter(None, found))
        taken = list(map(_TAKEN, found))
        starts = set(map(_AT, found))
        walls = self._walls  # a round's entries share its start and wall time: looked up per round
        fresh = {
            at
            for at in starts
            if now - at <= self._stale_after_s and walls.get(at, float("-inf")) >= floor
        }
        keep: Iterable[bool] = map(is_not, taken, repeat(None))
        if len(fresh) < len(starts):
            keep = map(and_, keep, map(fresh.__contains__, map(_AT, found)))
        keep = list(keep)
        out.update(zip(compress(nodes, keep), compress(taken, keep), strict=False))

    def _expire(self, now: float) -> None:
        """Note every node whose observation has gone stale since the last read (the lock is held)."""
        for at in [a for a in self._rounds if now - a > self._stale_after_s]:
            nodes = self._rounds.pop(at)
            self._changed.update(dict.fromkeys(nodes))
            self._expired |= nodes

    def watched(self) -> list[Target]:
        """The targets observed now (what the next round covers)."""
        with self._lock:
            return list(self._wanted.values())

    def status(self) -> dict[str, Any]:
        """The last round in a few fields, for ``/v1/status``."""
        r = self.last_round
        with self._lock:
            watched = len(self._wanted)
        if r is None:
            return {"watched": watched, "last_round": None}
        return {
            "watched": watched,
            "last_round": {
                "targets": r.targets,
                "ok": r.ok,
                "failed": dict(r.failed),
                "duration_s": round(r.duration_s, 3),
            },
        }

    def wait_rounds(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` rounds have finished in all; whether they did."""
        with self._round_done:
            return self._round_done.wait_for(lambda: self.rounds >= count, timeout_s)

    # -- the health thread ----------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="treadle-health", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the round in progress (bounded by the source's round deadline); waits ``timeout_s`` at most."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            targets = self.watched()
            if targets:
                try:
                    self.run_round(targets)
                except (
                    Exception
                ) as e:  # a bug of ours must not end observation: its nodes stay unknown
                    log.error("health.round_crashed", error_type=type(e).__name__, error=str(e))
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def run_round(self, targets: Sequence[Target]) -> RoundStats:
        """One round over ``targets``, recorded in the cache (the health thread calls it; tests may too)."""
        started, wall = self._clock(), self._wall_clock()
        result: RoundResult = anyio.run(self.source.observe_round, targets)
        stats = RoundStats(
            started,
            result.duration_s,
            len(targets),
            len(result.observations),
            _count(result.failed.values()),
        )
        self._record_round(targets, result.observations, started, wall)
        with self._lock:
            self.last_round = stats
            self.rounds += 1
            self._round_done.notify_all()
        self._record(stats)
        return stats

    def _record_round(
        self,
        targets: Sequence[Target],
        observations: dict[str, Observation],
        started: float,
        wall: float,
    ) -> None:
        """Keep a round's observations, noting each node that reads differently now.

        The per-node work (a new entry, a comparison with the old) is done without the lock, against
        the entries as they are: only this thread changes them, and :meth:`watch` replaces the whole
        mapping rather than changing it, which is looked for under the lock before the result is
        taken. Under the lock only work in C remains, so a tick reading the cache waits a few ms at
        100,000 nodes, not the round's whole bookkeeping.
        """
        for _ in range(3):
            with self._lock:
                wanted, seen = self._wanted, self._seen
            kept = _Kept.of(targets, observations, started, wall, wanted, seen)
            with self._lock:
                if self._wanted is wanted and self._seen is seen:
                    self._keep(kept)
                    return
        with self._lock:  # the targets keep changing meanwhile: the same, under the lock
            self._keep(_Kept.of(targets, observations, started, wall, self._wanted, self._seen))

    def _keep(self, kept: _Kept) -> None:
        """Take ``kept`` into the cache (the lock is held; ``kept`` was made from the entries as they are)."""
        rounds, changed, floor = self._rounds, self._changed, self._floor
        for at, (old_wall, nodes, observed) in kept.before.items():
            if (was := rounds.get(at)) is not None:
                was.difference_update(observed)  # their observation from that round is replaced
            if (old_wall >= floor) != (
                kept.wall >= floor
            ):  # now on the other side of the reader's since
                changed.update(dict.fromkeys(nodes))
        rounds.setdefault(kept.started, set()).update(kept.observed)
        changed.update(dict.fromkeys(kept.differ))
        if (
            self._expired
        ):  # read as stale before: they read differently now, whatever the round said
            hits = self._expired.intersection(kept.entries)
            self._expired.difference_update(hits)
            changed.update(dict.fromkeys(hits))
        self._seen.update(kept.entries)
        self._walls = {
            a: w for a, w in self._walls.items() if kept.started - a <= self._stale_after_s
        }
        self._walls[kept.started] = kept.wall
        for at in [a for a, nodes in rounds.items() if not nodes]:
            del rounds[at]

    def _record(self, stats: RoundStats) -> None:
        if self._metrics is not None:
            self._metrics.health_observations_total.labels(result="ok").inc(stats.ok)
            for reason, n in stats.failed.items():
                self._metrics.health_observations_total.labels(result=reason).inc(n)
            self._metrics.health_round_duration_seconds.observe(stats.duration_s)
        emit = log.warning if stats.failed else log.event
        emit(
            "health.round",
            targets=stats.targets,
            ok=stats.ok,
            duration_s=round(stats.duration_s, 3),
            **{f"failed_{k}": v for k, v in sorted(stats.failed.items())},
        )


def _count(reasons: Sequence[str] | Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons:
        out[r] = out.get(r, 0) + 1
    return out
