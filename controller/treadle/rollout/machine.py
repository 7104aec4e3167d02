"""The rollout state machine.

    pending ──► waiting (window, freeze, approval) ──► publishing k ──► soaking k ──┐
       ▲                                                                           │ wave passed
       └───────────────────────── next wave ◄──────────────────────────────────────┤
                                                                                   ├─► complete (last wave)
    soaking k ── failures over budget ─► halted            (failure_policy: halt)  │
                                   └──► rolling_back ─► rolled_back (rollback)     │
    any active state ── newer commit ─► superseded;  operator ─► aborted; paused is a flag
    halted ── operator resume ─► soaking k (failed nodes observed afresh);  operator abort ─► aborted

``step()`` is pure: it takes the rollout, the time, what the agents report and
whether a window or freeze blocks new waves, and returns the next rollout and
the actions the pipeline must carry out. The pipeline persists the rollout
after every transition *before* carrying out its actions, and actions are
idempotent, so a controller killed at any point resumes at the same step: in
``publishing`` it publishes the wave again (publishing identical bytes is a
no-op), in ``rolling_back`` it re-publishes the previous content again.

A node of the current wave is done when it reports the generation published
for it, its apply succeeded, and it has stayed healthy for the wave's soak
time. Missing data never passes: a node that does not report is not done,
and when the wave's timeout expires every node that is not done has failed.
A node that reports a failed apply or unhealthy after applying has failed at
once (a flapping node is a failing node). Only the exact generation counts: a
node reporting a higher one holds a manifest from an earlier controller and
refuses this one (see ``_observe``), so it has failed at once too. Nodes of
the waves that passed stay under the gate until the rollout completes: more
of them failing than their wave's budget fails the rollout as well.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import compress, filterfalse, repeat
from operator import attrgetter, is_, or_

from treadle.errors import TransitionError  # raised here; the tree is drawn in treadle.errors


class State(StrEnum):
    PENDING = "pending"
    WAITING = "waiting"
    PUBLISHING = "publishing"
    SOAKING = "soaking"
    COMPLETE = "complete"
    HALTED = "halted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"
    ABORTED = "aborted"


TERMINAL = frozenset(
    {State.COMPLETE, State.HALTED, State.ROLLED_BACK, State.SUPERSEDED, State.ABORTED}
)


class NodeStatus(StrEnum):
    PENDING = "pending"  # published, not yet reported as applied
    APPLIED = "applied"  # applied and healthy, soaking
    HEALTHY = "healthy"  # soaked: done
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Observation:
    """What one agent reports; None where the data is missing or unreadable."""

    generation: int | None = None
    apply_ok: bool | None = None
    healthy: bool | None = None
    failed_checks: tuple[str, ...] = ()  # the health checks reported down, for the halt reason
    #: The highest generation the agent accepted (treadle_agent_manifest_generation): above the published
    #: one, the agent refuses what was published as a rollback.
    accepted: int | None = None


@dataclass(frozen=True, slots=True)
class NodeProgress:
    status: NodeStatus = NodeStatus.PENDING
    since: float | None = None
    reason: str = ""


#: A node's statuses once it is done with its wave.
_DONE = (NodeStatus.HEALTHY, NodeStatus.FAILED)
#: The progress of a node that has not reported yet; immutable, so all such nodes share it.
_FRESH = NodeProgress()
#: The counts of a wave with no nodes (an empty wave passes at once; it keeps its place in the table).
_ZERO_COUNTS: Mapping[str, int] = {s.value: 0 for s in NodeStatus}


@dataclass(frozen=True, slots=True)
class Wave:
    name: str
    nodes: tuple[str, ...]
    soak_s: int
    timeout_s: int
    allowed_failures: int
    approval: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish the rollout's content for these nodes (the wave's), each under a new generation."""

    wave: int
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rollback:
    """Re-publish the content these nodes had before the rollout, under a new, higher generation."""

    nodes: tuple[str, ...]


Action = Publish | Rollback


@dataclass(frozen=True, slots=True)
class ProgressIndex:
    """What a step needs to know of ``progress`` beyond the mapping, derived from it: its nodes by status,
    and its soaking ("applied") nodes by soak start.

    With it a step counts the wave and finds the soaks that are up without walking the wave. It is valid
    only for the very ``progress`` object it names (a rollout whose progress was replaced derives it
    again). A step that moved nodes also says from which progress (``base``) by which entries (``moved``),
    so that the store writes those without comparing the whole wave.
    """

    progress: Mapping[str, NodeProgress]
    counts: Mapping[NodeStatus, int]
    starts: Mapping[float | None, int]
    base: Mapping[str, NodeProgress] | None = None
    moved: Mapping[str, NodeProgress] | None = None


@dataclass(frozen=True, slots=True)
class Rollout:
    commit: str
    waves: tuple[Wave, ...]
    failure_policy: str = "halt"
    immediate: bool = False
    state: State = State.PENDING
    wave: int = 0
    started_at: float | None = None
    progress: Mapping[str, NodeProgress] = field(default_factory=dict)
    approved: frozenset[int] = frozenset()
    paused: bool = False
    reason: str = ""
    #: Node counts by status of each wave that has passed, in wave order.
    finished: tuple[Mapping[str, int], ...] = ()
    #: Derived from ``progress`` (see :class:`ProgressIndex`), not part of the rollout's value: None, or an
    #: index of another progress object, is derived again when needed.
    index: ProgressIndex | None = field(default=None, compare=False, repr=False)

    @property
    def active(self) -> bool:
        return self.state not in TERMINAL

    @property
    def current(self) -> Wave | None:
        return self.waves[self.wave] if self.wave < len(self.waves) else None

    def reached(self) -> tuple[str, ...]:
        """Nodes that have been sent this rollout's content (waves up to the current one, once published)."""
        upto = self.wave + 1 if self.state not in (State.PENDING, State.WAITING) else self.wave
        return tuple(n for w in self.waves[:upto] for n in w.nodes)

    def counts(self) -> dict[str, int]:
        """Current wave's nodes by status."""
        out: dict[str, int] = {s.value: 0 for s in NodeStatus}
        index = self.index
        counts = (
            index.counts
            if index is not None and index.progress is self.progress
            else _count(self.progress)
        )
        out.update((s.value, n) for s, n in counts.items())  # a handful of statuses, not nodes
        return out

    def wave_counts(self) -> list[dict[str, int]]:
        """Every wave's nodes by status: passed waves as they ended, the current one live, later ones pending."""
        out = [dict(c) for c in self.finished]
        for i in range(len(self.finished), len(self.waves)):
            started = i == self.wave and self.progress
            out.append(
                self.counts()
                if started
                else {**{s.value: 0 for s in NodeStatus}, "pending": len(self.waves[i].nodes)}
            )
        return out


_status = attrgetter("status")


def _count(progress: Mapping[str, NodeProgress]) -> Counter[NodeStatus]:
    """Nodes by status, counted in C (no Python code runs per node: 100,000 nodes take a few ms)."""
    return Counter(map(_status, progress.values()))


def _replace(r: Rollout, **changes: object) -> Rollout:
    return dataclasses.replace(r, **changes)  # type: ignore[arg-type]


def step(
    r: Rollout,
    now: float,
    observations: Mapping[str, Observation],
    expected: Mapping[str, int],
    blocked: str | None,
    changed: Collection[str] | None = None,
) -> tuple[Rollout, list[Action]]:
    """One deterministic step of rollout ``r``.

    ``observations`` are the agents' reports for the current wave's nodes and those of the waves that
    passed (still gated: see :func:`_passed_wave_failure`);
    ``expected`` the generation published for each of them; ``blocked`` why
    no new wave may start now (window, freeze) or None. Returns the next
    rollout (``r`` itself when nothing changed) and the actions to carry out.

    ``changed`` lets a caller that stepped this very rollout before say which nodes' observation or
    expected generation differ from that step's (None: unknown, any may have). Only those nodes, and
    soaking nodes whose soak time is up, are looked at then: a step of a 90,000-node wave with no news
    does no work per node. The result is the same as without it (tests/rollout/test_machine.py checks).

    What a step needs to know of the wave's progress beyond the mapping (its counts by status, its soak
    starts) it keeps beside it, in :class:`ProgressIndex`, derived data that is not part of the rollout's
    value; so counting a wave, finding the soaks that are up and telling the store what moved cost per
    node that moved, not per node of the wave.
    """
    if not r.active or r.paused:
        return r, []
    told = None if changed is None else _Changed(changed, r.progress)
    late = _passed_wave_failure(r, observations, told) if r.wave else None
    if late is not None:
        return _fail(r, late)
    if r.state in (State.PENDING, State.WAITING):
        return _start_wave(r, blocked)
    if r.state is State.PUBLISHING:
        wave = r.waves[r.wave]
        return r, [Publish(r.wave, wave.nodes)]
    if r.state is State.SOAKING:
        return _soak(r, now, observations, expected, told)
    if r.state is State.ROLLING_BACK:
        return r, [Rollback(r.reached())]
    return r, []


def _start_wave(r: Rollout, blocked: str | None) -> tuple[Rollout, list[Action]]:
    while (
        r.current is not None and not r.current.nodes
    ):  # nothing changed in this wave: passed, with no nodes
        r = _replace(r, wave=r.wave + 1, finished=(*r.finished, _ZERO_COUNTS))
    wave = r.current
    if wave is None:
        return _replace(r, state=State.COMPLETE, reason="", progress={}), []
    if blocked and not r.immediate:
        return _waiting(r, blocked)
    if wave.approval and r.wave not in r.approved:
        # The command to run (with the rollout's id, which the machine does not know) is the service's hint.
        return _waiting(r, f"wave {wave.name} waits for approval")
    r = _replace(r, state=State.PUBLISHING, reason="", progress=dict.fromkeys(wave.nodes, _FRESH))
    return r, [Publish(r.wave, wave.nodes)]


def _waiting(r: Rollout, reason: str) -> tuple[Rollout, list[Action]]:
    if r.state is State.WAITING and r.reason == reason:
        return r, []
    return _replace(r, state=State.WAITING, reason=reason), []


def published(r: Rollout, now: float) -> Rollout:
    """The pipeline has durably published the current wave: soaking starts now."""
    if r.state is not State.PUBLISHING:
        raise TransitionError(f"rollout of {r.commit[:12]} is {r.state}, not publishing")
    return _replace(r, state=State.SOAKING, started_at=now)


def rolled_back(r: Rollout) -> Rollout:
    """The pipeline has durably re-published the previous content."""
    if r.state is not State.ROLLING_BACK:
        raise TransitionError(f"rollout of {r.commit[:12]} is {r.state}, not rolling back")
    return _replace(r, state=State.ROLLED_BACK)


def _observe(
    p: NodeProgress,
    obs: Observation | None,
    want: int | None,
    now: float,
    soak_s: float,
    made: dict[tuple[float, bool], NodeProgress],
) -> NodeProgress:
    """The node's progress after observation ``obs``. New "applied" and "healthy" values come from
    ``made`` (one per status and start time in a step), so nodes that move together share them."""
    if p.status in _DONE:
        return p
    ahead = None if obs is None or want is None else max(obs.generation or 0, obs.accepted or 0)
    if ahead is not None and want is not None and ahead > want:
        # Above anything this controller published: the agent accepted a higher generation from an earlier
        # controller (state lost, restored from an old backup) and refuses ours as a rollback. It will
        # never apply this wave's content, so waiting for the timeout would only hide that.
        return NodeProgress(
            NodeStatus.FAILED,
            now,
            f"reports generation {ahead}, above the {want} published "
            "for it: it refuses what was published (controller state lost? see 'Restoring a controller')",
        )
    if obs is None or obs.generation is None or want is None or obs.generation != want:
        # Not applied yet, or no data: a soak in progress restarts once data returns. Only the exact
        # generation published for the node counts as applied.
        return _FRESH if p.status is NodeStatus.APPLIED else p
    if obs.apply_ok is False:
        return NodeProgress(NodeStatus.FAILED, now, f"apply of generation {obs.generation} failed")
    if obs.healthy is False:
        checks = f" (failing checks: {', '.join(obs.failed_checks)})" if obs.failed_checks else ""
        return NodeProgress(
            NodeStatus.FAILED, now, f"unhealthy after applying generation {obs.generation}{checks}"
        )
    if obs.apply_ok is None or obs.healthy is None:
        return _FRESH if p.status is NodeStatus.APPLIED else p
    since = p.since if p.status is NodeStatus.APPLIED and p.since is not None else now
    done = now - since >= soak_s
    if not done and p.status is NodeStatus.APPLIED and p.since == since:
        return p
    q = made.get((since, done))
    if q is None:
        q = made[(since, done)] = NodeProgress(
            NodeStatus.HEALTHY if done else NodeStatus.APPLIED, since
        )
    return q


def _soak(
    r: Rollout,
    now: float,
    observations: Mapping[str, Observation],
    expected: Mapping[str, int],
    changed: _Changed | None,
) -> tuple[Rollout, list[Action]]:
    wave = r.waves[r.wave]
    soak_s = 0 if r.immediate else wave.soak_s
    timed_out = r.started_at is not None and now - r.started_at >= wave.timeout_s
    progress = r.progress
    index = _index(r)
    # Only the nodes whose progress can move are looked at, and only those that move are collected:
    # on most steps of a large wave that is few of them, and a node that is done is not looked at again.
    walk = timed_out or len(progress) != len(wave.nodes)
    soaked: list[tuple[NodeProgress, list[str]]] = []
    if walk:
        todo: Collection[str] = (
            wave.nodes
        )  # every node not done moves (or the progress is incomplete)
    else:
        todo, soaked = _may_move(progress, index.starts, observations, now, soak_s, changed)
        if not todo and not soaked and changed is not None:
            # Nothing can move, and the step that returned ``r`` (there was one: ``changed`` says so) found
            # its counts neither over the budget nor finished: the result is ``r``, with no work per node.
            return r, []
    moved, was = _moved(
        progress, todo, observations, expected, now, soak_s, wave if timed_out else None
    )
    for p, nodes in soaked:  # done soaking, all at once (see _may_move)
        moved.update(dict.fromkeys(nodes, NodeProgress(NodeStatus.HEALTHY, p.since)))
        was.extend(repeat(p, len(nodes)))
    if moved:
        new = {**progress, **moved}
        # Counted again from the moves (in C, per shared progress object); a walk of the wave may have
        # added nodes the progress lacked, and is rare: the new progress is counted whole then. A node
        # named twice in ``changed`` moved once (its progress was read from the same ``progress``).
        if not walk and len(was) != len(moved):
            was = list(map(progress.__getitem__, moved))
        index = _derive(new) if walk else _advance(index, new, was, moved)
        r = _replace(r, progress=new, index=dataclasses.replace(index, base=progress, moved=moved))
    counts = index.counts
    failed = counts.get(NodeStatus.FAILED, 0)
    unfinished = len(wave.nodes) - failed - counts.get(NodeStatus.HEALTHY, 0)
    if failed > wave.allowed_failures:
        names = sorted(n for n, p in r.progress.items() if p.status is NodeStatus.FAILED)
        reason = (
            f"wave {wave.name}: {failed} of {len(wave.nodes)} nodes failed "
            f"(budget {wave.allowed_failures}): "
            + ", ".join(f"{n}: {r.progress[n].reason}" for n in names[:5])
        )
        return _fail(r, reason)
    if not unfinished:
        return _replace(
            r,
            state=State.PENDING,
            wave=r.wave + 1,
            started_at=None,
            progress={},
            finished=(*r.finished, r.counts()),
        ), []
    return r, []


def _moved(
    progress: Mapping[str, NodeProgress],
    todo: Collection[str],
    observations: Mapping[str, Observation],
    expected: Mapping[str, int],
    now: float,
    soak_s: float,
    timed_out: Wave | None,
) -> tuple[dict[str, NodeProgress], list[NodeProgress]]:
    """The nodes of ``todo`` whose progress moves, with their new progress, and the progress they had.

    The usual report (the generation published for the node, applied, healthy) is decided here inline:
    it is what most nodes of a large wave send at once, and a call of :func:`_observe` per node would cost
    more than everything else in the step. It gives what :func:`_observe` gives (tests/rollout/test_machine.py
    checks them against each other); any other report goes to :func:`_observe`. ``todo`` comes in the
    progress's order: looking nodes up in the order their entries were made is several times faster at
    100,000 nodes than in a set's order (memory locality).
    """
    moved: dict[str, NodeProgress] = {}
    made: dict[tuple[float, bool], NodeProgress] = {}
    was: list[NodeProgress] = []  # what the nodes that moved had
    applied, healthy, failed = NodeStatus.APPLIED, NodeStatus.HEALTHY, NodeStatus.FAILED
    starting: list[
        str
    ] = []  # the nodes that do, when there is no timeout to apply: moved all at once below
    progress_get, observation_get, expected_get = progress.get, observations.get, expected.get
    for n in todo:
        p = progress_get(n, _FRESH)
        status = p.status
        if status is healthy or status is failed:
            continue
        obs, want = observation_get(n), expected_get(n)
        if obs is None:  # no report (any more): a soak in progress restarts once one returns
            q = _FRESH if status is applied else p
            if q is p and timed_out is None:
                continue
        elif (
            want is not None
            and want > 0
            and obs.generation == want
            and obs.apply_ok is True
            and obs.healthy is True
            and (obs.accepted is None or obs.accepted <= want)
        ):
            if status is applied and p.since is not None:
                if now - p.since < soak_s:
                    if timed_out is None:
                        continue  # soaking on: unchanged
                    q = p
                else:
                    q = made.get((p.since, True)) or made.setdefault(
                        (p.since, True), NodeProgress(healthy, p.since)
                    )
            elif timed_out is None:
                starting.append(n)
                was.append(p)
                continue
            else:
                q = _started(now, soak_s, made)
        else:
            q = _observe(p, obs, want, now, soak_s, made)
        if timed_out is not None and q.status is not healthy and q.status is not failed:
            seen = (
                ""
                if obs is None or obs.generation is None or obs.generation == want
                else f" (reports generation {obs.generation}, published {want})"
            )
            q = NodeProgress(
                failed, now, f"timed out after {timed_out.timeout_s}s while {q.status}{seen}"
            )
        if q is not p or n not in progress:
            moved[n] = q
            was.append(p)
    if starting:
        moved.update(dict.fromkeys(starting, _started(now, soak_s, made)))
    return moved, was


def _started(
    now: float, soak_s: float, made: dict[tuple[float, bool], NodeProgress]
) -> NodeProgress:
    """The progress of a node whose soak starts ``now`` (shared by every such node of the step)."""
    done = now - now >= soak_s
    q = made.get((now, done))
    if q is None:
        q = made[(now, done)] = NodeProgress(
            NodeStatus.HEALTHY if done else NodeStatus.APPLIED, now
        )
    return q


def _tally(values: list[NodeProgress]) -> list[tuple[NodeProgress, int]]:
    """The distinct progress objects of ``values`` with how many times each occurs, counted in C (nodes
    that moved together share one object, so there are few)."""
    if not values:
        return []
    if all(
        map(is_, values, repeat(values[0]))
    ):  # the usual case, in one pass in C that stops at a difference
        return [(values[0], len(values))]
    objects = dict(zip(map(id, values), values, strict=False))
    if len(objects) <= 8:
        return [(p, sum(map(is_, values, repeat(p)))) for p in objects.values()]
    return [(objects[i], count) for i, count in Counter(map(id, values)).items()]


def _derive(progress: Mapping[str, NodeProgress]) -> ProgressIndex:
    counts: dict[NodeStatus, int] = {}
    starts: dict[float | None, int] = {}
    _add(counts, starts, _tally(list(progress.values())), 1)
    return ProgressIndex(progress, counts, starts)


def _advance(
    index: ProgressIndex,
    progress: Mapping[str, NodeProgress],
    was: list[NodeProgress],
    moved: Mapping[str, NodeProgress],
) -> ProgressIndex:
    """The index of ``progress``, made from ``index`` by ``moved`` (whose nodes had ``was`` before)."""
    counts, starts = dict(index.counts), dict(index.starts)
    _add(counts, starts, _tally(was), -1)
    _add(counts, starts, _tally(list(moved.values())), 1)
    return ProgressIndex(progress, counts, starts)


def _add(
    counts: dict[NodeStatus, int],
    starts: dict[float | None, int],
    tally: list[tuple[NodeProgress, int]],
    sign: int,
) -> None:
    for p, count in tally:
        counts[p.status] = counts.get(p.status, 0) + sign * count
        if p.status is NodeStatus.APPLIED:
            starts[p.since] = left = starts.get(p.since, 0) + sign * count
            if not left:
                del starts[p.since]


def prepare(r: Rollout) -> None:
    """Make the derived data ``r``'s next step needs ready (for a rollout just read from a store: its
    first step then costs what a step costs, not a count of the whole wave too)."""
    _index(r)


def _index(r: Rollout) -> ProgressIndex:
    """The index of ``r``'s progress (see :class:`ProgressIndex`).

    Derived once per progress object and kept on the rollout: the field is not part of its value (it does
    not compare), so keeping it there leaves ``r`` the same rollout, and a step with no news finds it ready.
    """
    if r.index is not None and r.index.progress is r.progress:
        return r.index
    index = _derive(r.progress)
    object.__setattr__(r, "index", index)  # a cache of derived data, not a change
    return index


def _may_move(
    progress: Mapping[str, NodeProgress],
    starts: Mapping[float | None, int],
    observations: Mapping[str, Observation],
    now: float,
    soak_s: float,
    changed: _Changed | None,
) -> tuple[list[str], list[tuple[NodeProgress, list[str]]]]:
    """The wave's nodes whose progress a soak step can move (in the progress's order; every other node's
    stays as it is), and those of them that are done soaking for sure, by the progress object they share.

    A pending node moves only on a report (without one it stays pending); a soaking ("applied") node
    moves on a report, on losing it, or when its soak is up; a done node never moves. With ``changed``
    (the nodes whose report differs from the previous step's), an unchanged report moves nothing that
    step did not already move, so only the changed nodes and the soaks that are up remain. The soak
    starts (``starts``) say whether any soak is up without walking the wave; only when one is are its
    nodes looked for, per shared progress object, in C.

    A soaking node whose report did not change since the previous step is healthy now if its soak is up:
    it was soaking after that step, so its report was the right one then, and is now. Those nodes are
    returned apart (the second part), for the step to move them all at once, without a look per node.
    """
    keys = progress.keys()
    up = {s for s in starts if changed is None or s is None or now - s >= soak_s}
    values: list[NodeProgress] = []
    ups: list[NodeProgress] = []
    if up:
        values = list(progress.values())
        distinct = dict(zip(map(id, values), values, strict=False))
        ups = [p for p in distinct.values() if p.status is NodeStatus.APPLIED and p.since in up]
    bulk = changed is not None and 0 < len(ups) <= 8 and all(p.since is not None for p in ups)
    if changed is None or (ups and not bulk):
        flags = (
            map(observations.__contains__, keys)
            if changed is None
            else map(set(changed.inside).__contains__, keys)
        )
        if ups:
            ids = {id(p) for p in ups}
            flags = map(or_, flags, map(ids.__contains__, map(id, values)))
        return list(compress(keys, flags)), []
    todo = changed.inside
    if not bulk:
        return todo, []
    looked = set(todo)
    done = []
    for p in ups:
        nodes = compress(keys, map(is_, values, repeat(p)))  # one pass in C per shared object
        done.append((p, list(filterfalse(looked.__contains__, nodes))))
    return todo, done


def _fail(r: Rollout, reason: str) -> tuple[Rollout, list[Action]]:
    """Halt, or roll back every node reached so far, as the rollout's failure policy says."""
    if r.failure_policy == "rollback":
        r = _replace(r, state=State.ROLLING_BACK, reason=reason)
        return r, [Rollback(r.reached())]
    return _replace(r, state=State.HALTED, reason=reason), []


class _Changed:
    """The nodes a caller says changed (see :func:`step`): those of the current wave's progress (``inside``,
    found in C, in the caller's order) and the others, of passed waves (usually none: known without a look)."""

    __slots__ = ("given", "inside", "_progress")

    def __init__(self, changed: Collection[str], progress: Mapping[str, NodeProgress]) -> None:
        self.given = changed
        self._progress = progress
        self.inside = list(compress(changed, map(progress.__contains__, changed)))

    def outside(self) -> Collection[str]:
        if len(self.inside) == len(self.given):
            return ()
        return list(filterfalse(self._progress.__contains__, self.given))


def _bad(obs: Observation | None) -> bool:
    return obs is not None and (obs.apply_ok is False or obs.healthy is False)


def _passed_wave_failure(
    r: Rollout, observations: Mapping[str, Observation], changed: _Changed | None = None
) -> str | None:
    """Why a wave that already passed now fails (more of its nodes report a failed apply or unhealthy than
    its budget allows), or None.

    Nodes of passed waves stay under the gate until the rollout completes: a canary that turns bad after
    its soak must still stop the waves behind it. Only reports count here (a passed node whose data
    is missing is not failed again: it passed, and a scrape gap must not halt a fleet-wide rollout).

    With ``changed``, the step that returned ``r`` checked the same passed waves (but the one that passed
    in it, when ``r`` is pending) and found none failing; only a changed report of a passed node that is
    bad can change that, so without one only a wave that just passed is walked.
    """
    passed = (
        r.wave if r.state in (State.PENDING, State.WAITING, State.PUBLISHING, State.SOAKING) else 0
    )
    first = 0
    if changed is not None and not any(_bad(observations.get(n)) for n in changed.outside()):
        first = passed - 1 if r.state is State.PENDING else passed
    for wave in r.waves[first:passed]:
        get = observations.get
        bad = [
            n
            for n in wave.nodes
            if (o := get(n)) is not None and (o.apply_ok is False or o.healthy is False)
        ]
        if len(bad) > wave.allowed_failures:
            shown = ", ".join(
                f"{n}: {'apply failed' if get(n).apply_ok is False else 'unhealthy'}"  # type: ignore[union-attr]
                f" at generation {get(n).generation}"  # type: ignore[union-attr]
                for n in bad[:5]
            )
            return (
                f"wave {wave.name} (passed): {len(bad)} of {len(wave.nodes)} nodes failed after it passed "
                f"(budget {wave.allowed_failures}): " + shown
            )
    return None


def pause(r: Rollout) -> Rollout:
    _require_active(r, "pause")
    return _replace(r, paused=True)


def resume(r: Rollout, now: float | None = None) -> Rollout:
    """Continue a paused rollout; or re-check the wave a halted rollout stopped at.

    A halted rollout resumes only when its cause was fixed outside git (a node
    repaired by hand, a flaky check): its failed nodes are observed afresh and
    the wave's timeout starts again at ``now``. A bad commit is not resumed but
    aborted and reverted, or fixed forward by a newer commit.
    """
    if r.state is State.HALTED:
        wave = r.current
        if wave is None:
            raise TransitionError(
                f"cannot resume the rollout of {r.commit[:12]}: it halted after its last wave"
            )
        progress = {
            n: _FRESH if p.status is NodeStatus.FAILED else p for n, p in r.progress.items()
        }
        return _replace(
            r,
            state=State.SOAKING,
            started_at=now,
            progress=progress,
            paused=False,
            reason=f"resumed by an operator after: {r.reason}",
        )
    _require_active(r, "resume")
    return _replace(r, paused=False)


def approve(r: Rollout) -> Rollout:
    """Approve the wave the rollout waits for (or the next one, ahead of time)."""
    _require_active(r, "approve")
    return _replace(r, approved=r.approved | {r.wave})


def abort(r: Rollout, reason: str = "aborted by an operator") -> Rollout:
    """End an active or a halted rollout where it is: reached nodes keep the new content, the others the old."""
    if r.state is State.HALTED:
        return _replace(r, state=State.ABORTED, reason=f"{reason} after: {r.reason}")
    _require_active(r, "abort")
    return _replace(r, state=State.ABORTED, reason=reason)


def supersede(r: Rollout, commit: str) -> Rollout:
    """A newer commit takes over; nodes keep what they have and the new rollout starts from there."""
    if not r.active:
        return r
    return _replace(r, state=State.SUPERSEDED, reason=f"superseded by {commit[:12]}")


def _require_active(r: Rollout, action: str) -> None:
    if not r.active:
        raise TransitionError(
            f"cannot {action} the rollout of {r.commit[:12]}: it is {r.state}; a finished rollout "
            "does not start again: push a commit (a fix, or a git revert) to start a new one"
        )
