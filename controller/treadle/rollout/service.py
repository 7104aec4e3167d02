"""The controller's rollouts: created, stepped, persisted and acted on in one place.

The pipeline (a worker thread) and the HTTP API (operator actions) share one
:class:`RolloutService`; a lock serialises them, so an operator's pause can
never be lost under a concurrent step. What changes the fabric — publishing a
wave, rolling back — is done by the pipeline through the :class:`Executor`
it passes in; the service decides when, persisting the rollout *before*
every action and again after it (see :mod:`treadle.rollout.machine` for why
that makes a restart resume at the same step).

Observation (HTTP to the agents or to Prometheus) happens outside the lock,
so a slow health source never blocks an operator; in the controller it
happens in a thread of its own (:class:`treadle.rollout.health.HealthWatcher`)
and a tick only reads its latest observations, so it never blocks a push either. Reads (the API's rollout
documents, status) use a second connection and never wait for a step: a
wave of 10,000 manifests being signed does not make ``/v1/status`` hang.
"""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import compress, filterfalse
from operator import is_not
from pathlib import Path
from typing import Any, Protocol

from treadle import log
from treadle.errors import NoSuchRolloutError, SourceError, StoreError
from treadle.rollout import machine
from treadle.rollout.health import DirectObserver, HealthWatcher, Observer
from treadle.rollout.machine import Observation, Publish, Rollback, Rollout, State
from treadle.rollout.observe import HealthSource, Target
from treadle.rollout.policy import RolloutPolicy
from treadle.rollout.store import RolloutStore
from treadle.rollout.waves import Candidate, plan_rollout

#: Steps taken in one tick at most (a guard): a tick steps again only after a wave passed, to start the next.
MAX_STEPS_PER_TICK = 4
ACTIONS = {
    "pause": machine.pause,
    "resume": machine.resume,
    "approve": machine.approve,
    "abort": machine.abort,
}


class Executor(Protocol):
    """What the pipeline does for a rollout."""

    def rollout_policy(self, commit: str) -> RolloutPolicy | None:
        """The policy of ``commit`` (None while it is not rendered: the rollout waits)."""

    def targets(self, commit: str, nodes: Sequence[str]) -> list[Target]:
        """Where these nodes' agents report (addresses as ``commit`` has them)."""

    def expected(self, nodes: Sequence[str]) -> dict[str, int]:
        """The generation published for each node."""

    def publish_content(self, commit: str, nodes: Sequence[str]) -> None:
        """Publish ``commit``'s content for these nodes (a no-op for nodes already carrying it)."""

    def publish_manifests(self, manifests: Mapping[str, Mapping[str, Any]]) -> None:
        """Publish these manifests under new generations (the rollback)."""

    def write_revert(self, commit: str, reason: str) -> str:
        """Write and push the revert branch of ``commit``; its name. Raises SourceError."""


def _connect(db_path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(db_path, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn
    except sqlite3.Error as e:
        raise StoreError(f"{db_path}: cannot open the rollout tables: {e}") from e


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a tick reads and decides.

    Reading and deciding make no reference cycles (dicts, lists and frozen dataclasses, freed by their
    counts), but they allocate tens of thousands of objects on a 100,000-node wave, which trigger
    collections that walk the whole heap: 30-70 ms inside a step. Paused, the collector runs after
    the step (the health thread's or the next push's allocations trigger it), at the same total cost.
    Whoever found it enabled enables it again, so overlapping pauses in other threads end enabled.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class RolloutService:
    def __init__(
        self,
        db_path: Path,
        health: HealthSource | HealthWatcher,
        *,
        metrics: Any | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``health``: a watcher (its cache is read), or a source asked in the ticking thread."""
        self._lock = threading.RLock()  # steps and operator actions
        self._read_lock = threading.Lock()  # the reader connection only
        self._store = RolloutStore(_connect(db_path))
        self._reader = RolloutStore(_connect(db_path))
        self._observer: Observer = (
            health if isinstance(health, HealthWatcher) else DirectObserver(health)
        )
        self._metrics = metrics
        self._clock = clock
        #: The last rollout this service saved, with its id and save time: re-parsing a 10,000-node
        #: rollout costs ~20 ms, so a tick reuses this copy while the database says it is current.
        self._hot: tuple[int, float, Rollout] | None = None
        #: The rollout the last step returned, with the reports and generations it was given: the next
        #: step of that same rollout is told which nodes' reports changed (see :func:`machine.step`).
        self._stepped: tuple[Rollout, Mapping[str, Observation], Mapping[str, int]] | None = None
        #: The targets observed for a rollout's position ((id, commit, wave, state) -> targets): they only
        #: change when the rollout moves, and listing 100,000 of them costs tens of ms.
        self._targets: tuple[tuple[object, ...], list[Target]] | None = None
        #: The rollout the metrics gauges were last set from, with its id (None: another, or unknown).
        self._metered: tuple[int | None, Rollout] | None = None
        with self._lock:
            # The rollout in flight is read once, at start: the gauges and the first tick share it.
            rid = self._store.active_id()
            r = self._load(rid) if rid is not None else None
            self._update_metrics(rid, r)

    def close(self) -> None:
        """Close both connections (the service is not used afterwards)."""
        with self._lock, self._read_lock:
            self._store.close()
            self._reader.close()

    def prune(self, keep: int) -> int:
        """Keep the newest ``keep`` rollouts (and the one in flight); see :meth:`RolloutStore.prune`."""
        with self._lock:
            try:
                return self._store.prune(keep)
            except sqlite3.Error as e:
                raise StoreError(f"pruning old rollouts failed: {e}") from e

    # -- the pipeline's side -------------------------------------------------

    def has_rollout(self, commit: str) -> bool:
        with self._read_lock:
            return self._reader.for_commit(commit) is not None

    def active(self) -> Rollout | None:
        with self._read_lock:
            found = self._reader.active()
            return found[1] if found else None

    def begin(
        self,
        commit: str,
        policy: RolloutPolicy,
        changed: Sequence[Candidate],
        *,
        immediate: bool,
        current: Mapping[str, bytes] | None = None,
    ) -> int | None:
        """Start the rollout of ``commit`` over ``changed``, superseding the one in flight; None when nothing changed.

        ``current`` is what the changed nodes run now (their published manifest bytes): a rollback returns them to it.
        """
        with self._lock:
            now = self._clock()
            found = self._store.active()
            if found is not None:
                rid, old = found
                self._save(rid, machine.supersede(old, commit), now, before=old)
                log.event("rollout.superseded", rollout=rid, commit=old.commit, by=commit)
            if not changed:
                self._update_metrics()
                return None
            r = plan_rollout(commit, policy, changed, immediate=immediate)
            rid = self._store.create(r, now, previous=current)
            self._hot = (rid, now, r)
            log.event(
                "rollout.created",
                rollout=rid,
                commit=commit,
                immediate=immediate,
                waves={w.name: len(w.nodes) for w in r.waves},
            )
            self._update_metrics()
            return rid

    def _load(self, rid: int) -> Rollout | None:
        saved_at = self._store.updated_at(rid)
        if self._hot is not None and self._hot[0] == rid and self._hot[1] == saved_at:
            return self._hot[2]
        r = self._store.get(rid)
        if r is not None:  # read at start or after an operator's action: ready for the next step
            machine.prepare(r)
        if r is not None and saved_at is not None:
            self._hot = (rid, saved_at, r)
        return r

    def _save(self, rid: int, r: Rollout, now: float, before: Rollout | None) -> None:
        self._store.save(rid, r, now, before=before)
        self._hot = (rid, now, r)

    def tick(self, executor: Executor) -> Rollout | None:
        """Advance the rollout in flight by what the agents report now; the rollout afterwards (None: none in flight)."""
        with self._lock:
            rid = self._store.active_id()
            r = self._load(rid) if rid is not None else None
        if rid is None or r is None:
            self._observer.observations(())  # nothing to gate: stop observing
            return None
        with _collector_paused():
            observations = self._observe(rid, r, executor)
        with self._lock:
            found = self._load(rid)  # an operator may have acted while the agents were asked
            if found is None or not found.active:
                return found
            r = found
            policy = executor.rollout_policy(r.commit)
            if policy is None:
                return r
            if _waits_for_a_round(r, self._clock(), self._observer):
                self._update_metrics(rid, r)
                return r
            for _ in range(MAX_STEPS_PER_TICK):
                now = self._clock()
                wave_nodes = r.current.nodes if r.current else ()
                expected = executor.expected(wave_nodes)
                with _collector_paused():
                    new, actions = machine.step(
                        r,
                        now,
                        observations,
                        expected,
                        policy.blocked(now),
                        self._changed(r, observations, expected),
                    )
                    self._stepped = (new, observations, expected)
                    if new != r:
                        self._save(rid, new, now, before=r)
                        self._log_transition(rid, r, new)
                for action in actions:
                    new = self._carry_out(rid, new, action, executor)
                again = new.state is State.PENDING and new != r
                r = new
                if not again:
                    # A wave only passed from SOAKING to PENDING needs another step now (to start the
                    # next one). Any other step has reached what this tick's observations allow:
                    # soaking progress is a fixed point for them, and a wave just published needs new ones.
                    break
            self._update_metrics(rid, r)
            return r

    def _changed(
        self, r: Rollout, observations: Mapping[str, Observation], expected: Mapping[str, int]
    ) -> list[str] | None:
        """The nodes whose report differs from the last step's, when that step returned ``r`` itself; else None.

        Only the very object the last step returned qualifies (a rollout re-read from the store, changed
        by an operator or carried through an action is another one): a restart starts from None.
        """
        if self._stepped is None or self._stepped[0] is not r:
            return None
        # Dicts' == walks every entry even for the very same object (only values are compared by
        # identity first): 90,000 of them cost ~5 ms a tick, so the same object is looked for first.
        last_expected = self._stepped[2]
        if last_expected is not expected and last_expected != expected:
            return None
        before = self._stepped[1]
        if before is observations or before == observations:  # the usual tick with no news
            return []
        # Nodes whose report is another object are found in C, and those that had none before (new reports);
        # only the others are compared by value. Each part keeps the wave's order (see machine._moved).
        keys = list(observations)
        other = list(compress(keys, map(is_not, observations.values(), map(before.get, keys))))
        out = list(filterfalse(before.__contains__, other))
        if len(out) < len(other):
            out.extend(
                n for n in filter(before.__contains__, other) if before[n] != observations[n]
            )
        out.extend(filterfalse(observations.__contains__, before))
        return out

    def _observe(self, rid: int, r: Rollout, executor: Executor) -> dict[str, Observation]:
        """What the agents of the wave soaking and of the waves that passed report (those stay gated)."""
        # Only what was observed since the wave's soak started (at its publication, or an operator's resume) counts.
        since = r.started_at if r.state is State.SOAKING else None
        key = (executor, rid, r.commit, r.wave, r.state, r.paused)
        if self._targets is None or self._targets[0] != key:
            nodes: list[str] = []
            if not (r.paused or not r.active or r.state is State.ROLLING_BACK):
                nodes = [n for w in r.waves[: r.wave] for n in w.nodes]
                if r.state is State.SOAKING and r.current is not None:
                    nodes.extend(r.current.nodes)
            self._targets = (key, executor.targets(r.commit, nodes) if nodes else [])
        return self._observer.observations(self._targets[1], since)

    def _carry_out(
        self, rid: int, r: Rollout, action: machine.Action, executor: Executor
    ) -> Rollout:
        now = self._clock()
        before = r
        if isinstance(action, Publish):
            executor.publish_content(r.commit, action.nodes)
            r = machine.published(r, now)
        elif isinstance(action, Rollback):
            previous = self._store.previous(rid)
            executor.publish_manifests({n: previous[n] for n in action.nodes if n in previous})
            r = machine.rolled_back(r)
            self._write_revert(rid, r, executor)
        self._save(rid, r, now, before=before)
        log.event("rollout.step", rollout=rid, state=r.state.value, wave=r.wave)
        return r

    def _write_revert(self, rid: int, r: Rollout, executor: Executor) -> None:
        try:
            branch = executor.write_revert(r.commit, r.reason)
        except SourceError as e:
            self._store.note_revert(rid, None, str(e))
            log.error("rollout.revert_branch_failed", rollout=rid, error=str(e))
            return
        self._store.note_revert(rid, branch, None)
        log.event("rollout.revert_branch", rollout=rid, branch=branch)

    def _log_transition(self, rid: int, old: Rollout, new: Rollout) -> None:
        if (old.state, old.wave, old.reason) != (new.state, new.wave, new.reason):
            emit = log.warning if new.state in (State.HALTED, State.ROLLING_BACK) else log.event
            emit(
                "rollout.transition",
                rollout=rid,
                commit=new.commit,
                state=new.state.value,
                wave=new.current.name if new.current else None,
                reason=new.reason,
                hint=hint(rid, new, None),
            )

    # -- the operator's side -------------------------------------------------

    def act(self, rid: int, action: str) -> dict[str, Any]:
        """Apply an operator action; the rollout's document afterwards.

        Raises:
            NoSuchRolloutError: no rollout ``rid``.
            machine.TransitionError: the action does not apply in the rollout's state.
            ValueError: an unknown action.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        with self._lock:
            r = self._store.get(rid)
            if r is None:
                raise NoSuchRolloutError(rid)
            now = self._clock()
            latest = self._store.latest_id()
            if action == "resume" and r.state is State.HALTED and latest != rid:
                raise machine.TransitionError(
                    f"cannot resume rollout {rid}: rollout {latest} of a newer commit has started since it halted; "
                    f"see `treadle rollout show {latest}`"
                )
            reached = r.reached()
            new = machine.resume(r, now) if action == "resume" else ACTIONS[action](r)
            self._save(rid, new, now, before=r)
            log.event("rollout.operator", rollout=rid, action=action, state=new.state.value)
            self._update_metrics()
        doc = self.document(rid)
        if action == "abort":
            doc["outcome"] = _abort_outcome(r, reached)
        elif action == "resume" and r.state is State.HALTED:
            doc["outcome"] = (
                f"re-checking wave {r.current.name if r.current else '?'}: its failed nodes are observed "
                f"afresh and its timeout starts again"
            )
        return doc

    def latest_id(self) -> int | None:
        with self._read_lock:
            found = self._reader.latest()
            return found[0] if found else None

    def summary(self) -> dict[str, Any] | None:
        """The newest rollout in a few fields (for /v1/status): no wave lists, no counts."""
        with self._read_lock:
            found = self._reader.latest()
            if found is None:
                return None
            rid, r = found
            branch, _ = self._reader.revert_note(rid)
        return {
            "id": rid,
            "commit": r.commit,
            "state": r.state.value,
            "wave": r.wave,
            "paused": r.paused,
            "immediate": r.immediate,
            "reason": r.reason,
            "revert_branch": branch,
            "hint": hint(rid, r, branch),
        }

    def node_position(self, node: str, limit: int = 20) -> dict[str, Any] | None:
        """Where ``node`` stands in the newest of the last ``limit`` rollouts that changed it; None when none did."""
        with self._read_lock:
            rows = self._reader.list(limit)
        for rid, _created, _updated, r in rows:
            for i, w in enumerate(r.waves):
                if node not in w.nodes:
                    continue
                if i < r.wave or (i == r.wave and r.state is State.COMPLETE):
                    status = "passed"
                elif i == r.wave and node in r.progress:
                    status = r.progress[node].status.value
                else:
                    status = "not reached"
                reason = r.progress[node].reason if i == r.wave and node in r.progress else ""
                return {
                    "id": rid,
                    "commit": r.commit,
                    "state": r.state.value,
                    "wave": w.name,
                    "wave_index": i,
                    "status": status,
                    "reason": reason,
                }
        return None

    def documents(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._read_lock:
            return [
                self._doc(self._reader, rid, created, updated, r)
                for rid, created, updated, r in self._reader.list(limit)
            ]

    def document(self, rid: int) -> dict[str, Any]:
        """One rollout with its events and the current wave's per-node progress. Raises NoSuchRolloutError."""
        with self._read_lock:
            row = self._reader.row(rid)
            if row is None:
                raise NoSuchRolloutError(rid)
            doc = self._doc(self._reader, *row)
            doc["events"] = self._reader.events(rid)
            doc["progress"] = {
                n: {"status": p.status.value, "since": p.since, "reason": p.reason}
                for n, p in sorted(row[3].progress.items())
            }
            return doc

    @staticmethod
    def _doc(
        store: RolloutStore, rid: int, created: float, updated: float, r: Rollout
    ) -> dict[str, Any]:
        branch, revert_error = store.revert_note(rid)
        return {
            "id": rid,
            "commit": r.commit,
            "state": r.state.value,
            "wave": r.wave,
            "paused": r.paused,
            "immediate": r.immediate,
            "failure_policy": r.failure_policy,
            "reason": r.reason,
            "created_at": created,
            "updated_at": updated,
            "waves": [
                {
                    "name": w.name,
                    "nodes": list(w.nodes),
                    "soak_s": w.soak_s,
                    "timeout_s": w.timeout_s,
                    "allowed_failures": w.allowed_failures,
                    "approval": w.approval,
                    "status": counts,
                }
                for w, counts in zip(r.waves, r.wave_counts(), strict=False)
            ],
            "revert_branch": branch,
            "revert_error": revert_error,
            "hint": hint(rid, r, branch),
        }

    def _update_metrics(self, rid: int | None = None, r: Rollout | None = None) -> None:
        """Set the rollout gauges from the newest rollout (``r``, when the caller holds it and it is ``rid``)."""
        if self._metrics is None:
            return
        latest = self._store.latest_id()
        if (
            r is not None
            and self._metered is not None
            and self._metered[0] == rid == latest
            and self._metered[1] is r
        ):
            return  # the gauges show this very rollout already: a tick with no news counts no nodes
        found = (
            (rid, r)
            if r is not None and rid == latest
            else (self._store.latest() if latest is not None else None)
        )
        self._metered = (rid, r) if r is not None and rid == latest else None
        state_gauge, wave_gauge = self._metrics.rollout_state, self._metrics.rollout_wave_nodes
        current = found[1].state.value if found else None
        for s in State:
            state_gauge.labels(state=s.value).set(1 if s.value == current else 0)
        wave_gauge.clear()
        if found is not None:
            r = found[1]
            for w, counts in zip(r.waves, r.wave_counts(), strict=False):
                for status, n in counts.items():
                    wave_gauge.labels(wave=w.name, status=status).set(n)


def _waits_for_a_round(r: Rollout, now: float, observer: Observer) -> bool:
    """Whether a soaking rollout's step waits for the health thread's next round.

    Some of the nodes gated were never asked yet (the controller just started, the wave was just
    published): read as "no report", the step would restart soaks of nodes nobody looked at, and a
    restart near a wave's timeout would fail the wave. Past the wave's timeout it never waits: a
    health thread that cannot finish a round must not keep a wave from timing out.
    """
    if r.state is not State.SOAKING or r.current is None or observer.asked_all():
        return False
    return r.started_at is None or now - r.started_at < r.current.timeout_s


def hint(rid: int, r: Rollout, revert_branch: str | None) -> str | None:
    """What an operator can do next with rollout ``rid``, as commands that work as printed; None: nothing to do."""
    if r.state is State.HALTED:
        return (
            f"after fixing the failed nodes, `treadle rollout resume {rid}` re-checks wave "
            f"{r.current.name if r.current else r.wave}; or `treadle rollout abort {rid}` and revert the commit "
            f"(`git revert {r.commit[:12]}`), or push a fix"
        )
    if r.paused and r.active:
        return f"`treadle rollout resume {rid}` continues it"
    if r.state is State.WAITING and "approval" in r.reason:
        return f"`treadle rollout approve {rid}` starts the wave"
    if r.state is State.ROLLED_BACK:
        return (
            f"merge {revert_branch} so that git matches the rollback"
            if revert_branch
            else f"revert {r.commit[:12]} in git (`git revert {r.commit[:12]}`), or the next commit rolls it out again"
        )
    return None


def _abort_outcome(r: Rollout, reached: Sequence[str]) -> str:
    """What the fabric runs after rollout ``r`` was aborted, which reached ``reached``."""
    total = sum(len(w.nodes) for w in r.waves)
    waves = [w.name for w in r.waves if w.nodes and set(w.nodes) <= set(reached)]
    if not reached:
        return f"no node had received {r.commit[:12]}: all {total} changed node(s) keep what they ran before"
    return (
        f"{len(reached)} node(s) (waves {', '.join(waves)}) run {r.commit[:12]}; the other {total - len(reached)} "
        f"changed node(s) keep what they ran before. To take the reached nodes back, push a revert "
        f"(`git revert {r.commit[:12]}`): its rollout returns them"
    )
