"""The health watcher's answers cost what changed: each read applies only the changes since the last.

The source here answers from a dict (no sockets): these tests are about the cache between rounds and
reads; tests/rollout/test_health.py runs the same watcher over real loopback peers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from treadle.rollout.health import HealthWatcher
from treadle.rollout.machine import Observation
from treadle.rollout.observe import RoundResult, Target


class Answers:
    """A health source that says what the test put in ``said`` (absent: the node gave nothing)."""

    def __init__(self) -> None:
        self.said: dict[str, Observation] = {}

    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        return (await self.observe_round(targets)).observations

    async def observe_round(self, targets: Sequence[Target]) -> RoundResult:
        got = {t.node: self.said[t.node] for t in targets if t.node in self.said}
        return RoundResult(got, {t.node: "refused" for t in targets if t.node not in got})


def _targets(*nodes: str) -> list[Target]:
    return [Target(n, "127.0.0.1", 1) for n in nodes]


def _watcher(stale_after_s: float = 600) -> tuple[HealthWatcher, Answers, list[float], list[float]]:
    now, wall = [1000.0], [1_800_000_000.0]
    source = Answers()
    w = HealthWatcher(
        source,
        interval_s=1,
        stale_after_s=stale_after_s,
        clock=lambda: now[0],
        wall_clock=lambda: wall[0],
    )
    return w, source, now, wall


def test_a_read_with_no_news_is_the_last_answer_itself() -> None:
    w, source, now, _ = _watcher()
    targets = _targets("a", "b")
    source.said = {"a": Observation(1, True, True), "b": Observation(1, True, True)}
    w.watch(targets)
    w.run_round(targets)
    first = w.observations(targets)
    assert first == source.said
    now[0] += 1
    assert w.observations(targets) is first
    w.run_round(targets)  # the same reports again (other objects, equal): no news
    assert w.observations(targets) is first


def test_only_the_node_updated_after_the_last_read_is_read_again() -> None:
    w, source, _, _ = _watcher()
    targets = _targets("a", "b", "c")
    source.said = {n: Observation(1, True, True) for n in "abc"}
    w.watch(targets)
    w.run_round(targets)
    first = w.observations(targets)
    source.said = {
        "a": Observation(1, True, True),
        "b": Observation(2, True, False),
        "c": Observation(1, True, True),
    }
    w.run_round(targets)
    second = w.observations(targets)
    assert second == source.said
    assert second is not first and first["b"] == Observation(
        1, True, True
    )  # the answer given stays as it was
    assert second["a"] is first["a"] and second["c"] is first["c"]  # the others were not read again
    del source.said["c"]  # c stops answering: unknown at once
    w.run_round(targets)
    assert w.observations(targets) == {
        "a": Observation(1, True, True),
        "b": Observation(2, True, False),
    }


def test_a_stale_observation_becomes_unknown_once_and_counts_again_when_observed_again() -> None:
    w, source, now, _ = _watcher(stale_after_s=30)
    targets = _targets("a", "b")
    source.said = {"a": Observation(1, True, True), "b": Observation(1, True, True)}
    w.watch(targets)
    w.run_round(targets)
    now[0] += 30
    assert w.observations(targets) == source.said  # 30 s old: still fresh
    now[0] += 0.5
    stale = w.observations(targets)
    assert stale == {}
    now[0] += 100
    assert w.observations(targets) is stale  # gone stale once: no news since
    w.run_round(targets)  # the same reports as before, now fresh again
    assert w.observations(targets) == source.said


def test_a_refresh_after_since_counts_even_when_it_says_the_same() -> None:
    w, source, _, wall = _watcher()
    targets = _targets("a")
    source.said = {"a": Observation(1, True, True)}
    w.watch(targets)
    w.run_round(targets)
    since = wall[0] + 1  # e.g. an operator resumed a second after that round
    assert w.observations(targets, since) == {}
    wall[0] += 2
    w.run_round(targets)
    assert w.observations(targets, since) == {"a": Observation(1, True, True)}
    assert w.observations(targets) == {"a": Observation(1, True, True)}


def test_a_node_no_longer_watched_is_dropped_and_unknown_until_observed_again() -> None:
    w, source, _, _ = _watcher()
    both = _targets("a", "b")
    source.said = {"a": Observation(1, True, True), "b": Observation(1, True, True)}
    w.watch(both)
    w.run_round(both)
    assert w.observations(both) == source.said
    one = both[:1]
    assert w.observations(one) == {"a": Observation(1, True, True)}
    again = list(both)
    assert w.observations(again) == {"a": Observation(1, True, True)}  # b was forgotten
    w.run_round(again)
    assert w.observations(again) == source.said


def test_incremental_answers_match_a_walk_of_everything_over_random_histories() -> None:
    """Random rounds, reads, clock moves and target changes: each answer equals what a full walk gives."""
    nodes = [f"n{i}" for i in range(12)]
    reports = [
        Observation(1, True, True),
        Observation(2, True, True),
        Observation(2, False, True),
        Observation(2, True, False),
    ]
    for seed in range(40):
        rnd = random.Random(seed)
        w, source, now, wall = _watcher(stale_after_s=10)
        targets = _targets(*rnd.sample(nodes, 6))
        taken: dict[
            str, tuple[float, float, Observation | None]
        ] = {}  # node -> (at, wall, what it said)
        sinces: list[float | None] = [None]
        for _ in range(60):
            op = rnd.random()
            if op < 0.3:
                source.said = {n: rnd.choice(reports) for n in nodes if rnd.random() < 0.8}
                w.watch(targets)
                wanted = {t.node for t in targets}
                taken = {n: v for n, v in taken.items() if n in wanted}
                w.run_round(targets)
                taken.update({t.node: (now[0], wall[0], source.said.get(t.node)) for t in targets})
            elif op < 0.45:
                step = rnd.choice([0.5, 3, 7, 11])
                now[0] += step
                wall[0] += step
                sinces.append(wall[0] - rnd.choice([0, 1, 5]))
            elif op < 0.5:
                targets = _targets(
                    *rnd.sample(nodes, rnd.randint(0, 8))
                )  # the watcher learns of them below
            else:
                wanted = {t.node for t in targets}
                taken = {
                    n: v for n, v in taken.items() if n in wanted
                }  # forgotten when watched no more
                since = rnd.choice(sinces[-2:])
                floor = float("-inf") if since is None else since
                want = {
                    t.node: obs
                    for t in targets
                    if (v := taken.get(t.node)) is not None
                    and (obs := v[2]) is not None
                    and now[0] - v[0] <= 10
                    and v[1] >= floor
                }
                assert w.observations(targets, since) == want, (seed, since)


def test_targets_changed_while_a_round_is_worked_out_are_taken_into_account(monkeypatch) -> None:
    """The round's bookkeeping runs outside the lock; a watch() meanwhile makes it start again."""
    from treadle.rollout import health

    w, source, _, _ = _watcher()
    both, one = _targets("a", "b"), _targets("a")
    source.said = {"a": Observation(1, True, True), "b": Observation(1, True, True)}
    w.watch(both)
    real, made = health._Kept.of, []

    def meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(1)
        if len(made) == 1:
            w.watch(one)  # a tick changes the targets while the round is worked out
        return real(*args, **kwargs)

    monkeypatch.setattr(health._Kept, "of", staticmethod(meanwhile))
    w.run_round(both)
    assert len(made) == 2  # worked out again, against the targets as they are now
    assert w.observations(one) == {"a": Observation(1, True, True)}
    assert w.asked_all()
    w.watch(both)
    assert w.observations(both) == {"a": Observation(1, True, True)} and not w.asked_all()
