"""Health observation off the push path: rounds over real loopback peers, a cache the rollout reads.

Peers are real sockets (tests/support/loopback_peers.py): agents that answer,
listeners that accept and never answer, ports that refuse.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.agent_pages import exposition
from support.loopback_peers import Peers, peers
from treadle.daemon.metrics import ControllerMetrics
from treadle.rollout.health import HealthWatcher
from treadle.rollout.machine import Observation
from treadle.rollout.observe import ScrapeSource, Target


@pytest.fixture
def net() -> Iterator[Peers]:
    with peers() as p:
        yield p


def _sample(metrics: ControllerMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "treadle_controller_health_observations_total", {"result": result}
    )
    return value or 0.0


def test_hung_and_refusing_agents_are_unknown_and_counted_while_live_ones_are_read(
    net: Peers,
) -> None:
    live = [Target(f"live{i}", *net.agent(exposition(f"live{i}", 5, 1, 1))) for i in range(3)]
    hung = [Target(f"hung{i}", *net.hung()) for i in range(3)]
    refusing = [Target(f"down{i}", *net.refusing()) for i in range(3)]
    metrics = ControllerMetrics()
    watcher = HealthWatcher(
        ScrapeSource(timeout_s=0.5, concurrency=8), interval_s=1, stale_after_s=60, metrics=metrics
    )
    targets = [*live, *hung, *refusing]
    watcher.watch(targets)
    stats = watcher.run_round(targets)
    assert (stats.ok, stats.failed) == (3, {"timeout": 3, "refused": 3})
    assert watcher.observations(targets) == {t.node: Observation(5, True, True) for t in live}
    assert (_sample(metrics, "ok"), _sample(metrics, "timeout"), _sample(metrics, "refused")) == (
        3,
        3,
        3,
    )
    assert net.accepted == 3 and net.wait_closed(3)  # each hung agent cost one connection, given up


def test_connections_open_at_once_never_exceed_the_bound(net: Peers) -> None:
    targets = [Target(f"hung{i}", *net.hung()) for i in range(24)] + [
        Target(f"down{i}", *net.refusing()) for i in range(8)
    ]
    stats = HealthWatcher(
        ScrapeSource(timeout_s=0.3, concurrency=4), interval_s=1, stale_after_s=60
    ).run_round(targets)
    assert stats.failed == {"timeout": 24, "refused": 8}
    assert net.accepted == 24
    assert net.max_open == 4  # counted at the listeners: the bound was reached and never passed


def test_the_round_deadline_makes_unreached_agents_unknown(net: Peers) -> None:
    targets = [Target(f"hung{i}", *net.hung()) for i in range(6)]
    live = Target("live", *net.agent(exposition("live", 5, 1, 1)))
    # One connection at a time, 0.3 s each at most, 0.5 s in all: the hung agents use up the round.
    source = ScrapeSource(timeout_s=0.3, concurrency=1, round_s=0.5)
    stats = HealthWatcher(source, interval_s=1, stale_after_s=60).run_round([*targets, live])
    assert stats.failed.get("round_deadline", 0) >= 4
    assert sum(stats.failed.values()) + stats.ok == 7


def test_an_agent_that_stops_answering_is_unknown_at_once_not_healthy_on_old_data(
    net: Peers,
) -> None:
    watcher = HealthWatcher(ScrapeSource(timeout_s=0.5), interval_s=1, stale_after_s=600)
    answering = Target("n1", *net.agent(exposition("n1", 5, 1, 1)))
    watcher.watch([answering])
    watcher.run_round([answering])
    assert watcher.observations([answering]) == {"n1": Observation(5, True, True)}
    gone = Target("n1", *net.refusing())  # the same node, now refusing
    watcher.watch([gone])
    watcher.run_round([gone])
    assert watcher.observations([gone]) == {}


def test_an_observation_older_than_stale_after_is_unknown(net: Peers) -> None:
    now = [1000.0]
    watcher = HealthWatcher(
        ScrapeSource(timeout_s=0.5), interval_s=1, stale_after_s=30, clock=lambda: now[0]
    )
    target = Target("n1", *net.agent(exposition("n1", 5, 1, 1)))
    watcher.watch([target])
    watcher.run_round([target])
    now[0] += 30
    assert watcher.observations([target]) == {"n1": Observation(5, True, True)}
    now[0] += 0.5
    assert watcher.observations([target]) == {}


def test_nodes_no_longer_watched_are_forgotten(net: Peers) -> None:
    watcher = HealthWatcher(ScrapeSource(timeout_s=0.5), interval_s=1, stale_after_s=600)
    target = Target("n1", *net.agent(exposition("n1", 5, 1, 1)))
    watcher.watch([target])
    watcher.run_round([target])
    watcher.watch([])
    assert watcher.observations([target]) == {}  # watched again now, but nothing seen since


def test_a_new_set_of_targets_starts_a_round_in_the_health_thread_at_once(net: Peers) -> None:
    watcher = HealthWatcher(ScrapeSource(timeout_s=0.5), interval_s=3600, stale_after_s=7200)
    watcher.start()
    try:
        target = Target("n1", *net.agent(exposition("n1", 5, 1, 1)))
        assert (
            watcher.observations([target]) == {}
        )  # nothing seen yet: the call only asks for a round
        assert watcher.wait_rounds(1, timeout_s=30)
        assert watcher.observations([target]) == {"n1": Observation(5, True, True)}
        assert watcher.status()["last_round"] == {
            "targets": 1,
            "ok": 1,
            "failed": {},
            "duration_s": pytest.approx(watcher.last_round.duration_s, abs=0.001),
        }  # type: ignore[union-attr]
    finally:
        watcher.stop()


def test_what_was_observed_before_since_does_not_count(net: Peers) -> None:
    """A halted wave resumed by an operator is judged on what its nodes say after the resume."""
    wall = [1_800_000_000.0]
    watcher = HealthWatcher(
        ScrapeSource(timeout_s=0.5), interval_s=1, stale_after_s=600, wall_clock=lambda: wall[0]
    )
    target = Target("n1", *net.agent(exposition("n1", 5, 1, 0)))
    watcher.watch([target])
    watcher.run_round([target])
    assert watcher.observations([target], since=wall[0]) == {"n1": Observation(5, True, False)}
    assert (
        watcher.observations([target], since=wall[0] + 1) == {}
    )  # e.g. resumed a second after that round
    wall[0] += 2
    watcher.run_round([target])
    assert watcher.observations([target], since=wall[0] - 1) == {"n1": Observation(5, True, False)}
