"""RolloutService.tick: how far one tick moves a rollout, over a real SQLite store.

The health source and the executor are the service's two interfaces to the
outside (HTTP to agents, the pipeline's publishing); here they answer from
dicts, so the test can say exactly what the agents report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from treadle.rollout import machine
from treadle.rollout.health import HealthWatcher
from treadle.rollout.machine import Observation, State
from treadle.rollout.observe import RoundResult, Target
from treadle.rollout.policy import from_doc
from treadle.rollout.service import RolloutService
from treadle.rollout.waves import Candidate

SHA = "f" * 40
POLICY = from_doc(
    {
        "waves": [
            {"name": "canary", "selector": {"labels": {"canary": "true"}}, "soak_s": 10},
            {"name": "rest", "fraction": 1.0, "soak_s": 10},
        ]
    }
)
NODES = [Candidate(f"n{i}", "s", "c", {"canary": "true"} if i == 0 else {}) for i in range(6)]


class Executor:
    def __init__(self) -> None:
        self.generation = {c.name: 1 for c in NODES}
        self.published: list[tuple[str, ...]] = []

    def rollout_policy(self, commit: str) -> Any:
        return POLICY

    def targets(self, commit: str, nodes: Sequence[str]) -> list[Target]:
        return [Target(n, "127.0.0.1") for n in nodes]

    def expected(self, nodes: Sequence[str]) -> dict[str, int]:
        return {n: self.generation[n] for n in nodes}

    def publish_content(self, commit: str, nodes: Sequence[str]) -> None:
        self.published.append(tuple(nodes))
        for n in nodes:
            self.generation[n] += 1

    def publish_manifests(self, manifests: Mapping[str, Mapping[str, Any]]) -> None:
        self.publish_content("", list(manifests))

    def write_revert(self, commit: str, reason: str) -> str:
        return f"treadle/revert-{commit[:12]}"


class Reports:
    """Every node reports its current generation applied and healthy."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        return {t.node: Observation(self.executor.generation[t.node], True, True) for t in targets}


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[State]:
    """The state of the rollout each machine.step call was given."""
    seen: list[State] = []
    real = machine.step

    def counting(r: machine.Rollout, *args: Any) -> Any:
        seen.append(r.state)
        return real(r, *args)

    monkeypatch.setattr(machine, "step", counting)
    return seen


def test_a_tick_steps_again_only_to_start_the_next_wave(tmp_path, steps) -> None:
    executor, now = Executor(), [1000.0]
    service = RolloutService(tmp_path / "state.db", Reports(executor), clock=lambda: now[0])
    service.begin(SHA, POLICY, NODES, immediate=False)

    r = service.tick(
        executor
    )  # pending -> publishing the canary -> soaking; its reports are not read yet
    assert r is not None and r.state is State.SOAKING and executor.published == [("n0",)]
    assert steps == [State.PENDING]

    steps.clear()
    now[0] += 1
    r = service.tick(executor)  # the canary reports: soaking, once
    assert (
        r is not None
        and r.state is State.SOAKING
        and r.progress["n0"].status is machine.NodeStatus.APPLIED
    )
    assert steps == [State.SOAKING]

    steps.clear()
    now[0] += 10
    r = service.tick(executor)  # soaked: the canary passes, the next wave starts in the same tick
    assert r is not None and r.state is State.SOAKING and r.wave == 1
    assert executor.published == [("n0",), ("n1", "n2", "n3", "n4", "n5")]
    assert steps == [State.SOAKING, State.PENDING]
    assert all(p.status is machine.NodeStatus.PENDING for p in r.progress.values())


class Unhealthy(Reports):
    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        return {
            t.node: Observation(self.executor.generation[t.node], True, False, ("app",))
            for t in targets
        }


def test_a_halted_rollout_hints_with_its_id_and_abort_says_what_the_fabric_runs(tmp_path) -> None:
    ex = Executor()
    svc = RolloutService(tmp_path / "state.db", Unhealthy(ex), clock=lambda: 1000.0)
    rid = svc.begin(SHA, POLICY, NODES, immediate=False)
    svc.tick(ex)
    r = svc.tick(ex)
    assert r is not None and r.state is State.HALTED and "n0" in r.reason and "app" in r.reason
    doc = svc.document(rid)
    assert (
        f"treadle rollout resume {rid}" in doc["hint"]
        and f"treadle rollout abort {rid}" in doc["hint"]
    )
    aborted = svc.act(rid, "abort")
    assert aborted["state"] == "aborted"
    assert (
        "1 node(s) (waves canary) run" in aborted["outcome"]
        and "other 5 changed node(s) keep" in aborted["outcome"]
    )


def test_resume_of_a_halted_rollout_goes_on_once_the_nodes_are_fixed(tmp_path) -> None:
    ex = Executor()
    health: Any = Unhealthy(ex)

    class Switch:
        async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
            return await health.observe(targets)

    now = [1000.0]
    svc = RolloutService(tmp_path / "state.db", Switch(), clock=lambda: now[0])
    rid = svc.begin(SHA, POLICY, NODES, immediate=False)
    svc.tick(ex)
    assert svc.tick(ex).state is State.HALTED  # type: ignore[union-attr]
    health = Reports(ex)  # the canary was repaired by hand
    assert "re-checking wave canary" in svc.act(rid, "resume")["outcome"]
    for _ in range(6):
        now[0] += 11
        svc.tick(ex)
    assert svc.document(rid)["state"] == "complete"


def test_approval_hint_is_the_approve_command_with_the_rollout_id(tmp_path) -> None:
    ex = Executor()
    policy = from_doc(
        {
            "waves": [
                {"name": "canary", "selector": {"labels": {"canary": "true"}}, "approval": True}
            ]
        }
    )

    class Ex(Executor):
        def rollout_policy(self, commit: str) -> Any:
            return policy

    svc = RolloutService(tmp_path / "state.db", Reports(ex), clock=lambda: 1000.0)
    rid = svc.begin(SHA, policy, NODES[:1], immediate=False)
    svc.tick(Ex())
    assert svc.document(rid)["hint"] == f"`treadle rollout approve {rid}` starts the wave"


def test_an_empty_wave_is_counted_as_empty_in_documents_metrics_and_the_demo_table(
    tmp_path,
) -> None:
    from prometheus_client import generate_latest
    from rich.console import Console

    from treadle.daemon.metrics import ControllerMetrics
    from treadle.demo.view import wave_table

    policy = from_doc(
        {
            "waves": [
                {"name": "canary", "selector": {"labels": {"canary": "none"}}, "soak_s": 0},
                {"name": "first", "selector": {"labels": {"canary": "true"}}, "soak_s": 0},
                {"name": "rest", "fraction": 1.0, "soak_s": 0},
            ]
        }
    )

    class Ex(Executor):
        def rollout_policy(self, commit: str) -> Any:
            return policy

    ex, metrics = Ex(), ControllerMetrics()
    svc = RolloutService(tmp_path / "state.db", Reports(ex), metrics=metrics, clock=lambda: 1000.0)
    rid = svc.begin(SHA, policy, NODES, immediate=False)
    for _ in range(6):
        svc.tick(ex)
    doc = svc.document(rid)
    assert doc["state"] == "complete"
    assert [(w["name"], len(w["nodes"]), w["status"]["healthy"]) for w in doc["waves"]] == [
        ("canary", 0, 0),
        ("first", 1, 1),
        ("rest", 5, 5),
    ]
    exposition = generate_latest(metrics.registry).decode()
    assert 'treadle_rollout_wave_nodes{status="healthy",wave="canary"} 0.0' in exposition
    assert 'treadle_rollout_wave_nodes{status="healthy",wave="first"} 1.0' in exposition
    console = Console(width=200, record=True)
    console.print(wave_table(doc))
    cells = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in console.export_text().splitlines()
        if "│" in line
    ]
    rows = {c[0]: c[2:] for c in cells}
    assert rows["canary"] == ["0", "0", "0", "0"] and rows["first"] == ["0", "0", "1", "0"]


def test_a_passed_canary_is_still_asked_and_its_failure_halts_the_rollout(tmp_path) -> None:
    executor, now = Executor(), [1000.0]
    reports = Reports(executor)
    asked: list[set[str]] = []
    unhealthy: set[str] = set()

    class Watched:
        async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
            asked.append({t.node for t in targets})
            seen = await reports.observe(targets)
            return {n: Observation(o.generation, True, n not in unhealthy) for n, o in seen.items()}

    service = RolloutService(tmp_path / "state.db", Watched(), clock=lambda: now[0])
    service.begin(SHA, POLICY, NODES, immediate=False)
    service.tick(executor)
    now[0] += 1
    service.tick(executor)
    now[0] += 10
    r = service.tick(executor)
    assert r is not None and r.wave == 1 and r.state is State.SOAKING
    unhealthy.add("n0")
    now[0] += 1
    r = service.tick(executor)
    assert "n0" in asked[-1] and {"n1", "n5"} <= asked[-1]
    assert r is not None and r.state is State.HALTED and "wave canary (passed)" in r.reason


class RoundReports(Reports):
    """The same reports, for a HealthWatcher's rounds (which also say why a target gave nothing)."""

    async def observe_round(self, targets: Sequence[Target]) -> RoundResult:
        return RoundResult(await self.observe(targets), {})


#: The canary alone: soaked after 10 s, timed out after 15 s.
CANARY_ONLY = from_doc(
    {
        "waves": [
            {
                "name": "canary",
                "selector": {"labels": {"canary": "true"}},
                "soak_s": 10,
                "timeout_s": 15,
            }
        ]
    }
)


@pytest.mark.parametrize("restart", [False, True])
def test_a_restarted_controller_keeps_soaks_until_its_health_thread_has_asked_the_nodes(
    tmp_path, restart: bool
) -> None:
    """A new watcher knows nothing yet: that must not read as "no report", which restarts soaks (and a
    restart a few seconds before a wave's timeout would then fail the wave)."""
    executor, now = Executor(), [1000.0]
    executor.rollout_policy = lambda commit: CANARY_ONLY  # type: ignore[method-assign]
    source = RoundReports(executor)

    def watcher() -> HealthWatcher:
        clock = lambda: now[0]  # noqa: E731
        return HealthWatcher(source, interval_s=1, stale_after_s=60, clock=clock, wall_clock=clock)

    health = watcher()
    service = RolloutService(tmp_path / "state.db", health, clock=lambda: now[0])
    service.begin(SHA, CANARY_ONLY, NODES, immediate=False)
    r = service.tick(executor)  # publishes the canary: soaking from now (1000)
    assert r is not None and r.state is State.SOAKING
    now[0] += 1
    r = service.tick(executor)  # the round covering the canary has not run: nothing is decided
    assert r is not None and r.progress["n0"].status is machine.NodeStatus.PENDING
    health.run_round(health.watched())
    r = service.tick(executor)
    assert r is not None and r.progress["n0"] == machine.NodeProgress(
        machine.NodeStatus.APPLIED, 1001
    )
    now[0] += 8  # 1009: 6 s before the wave's timeout, 2 s before the canary has soaked
    if restart:
        service.close()
        health = watcher()
        service = RolloutService(tmp_path / "state.db", health, clock=lambda: now[0])
    r = service.tick(executor)
    assert r is not None and r.progress["n0"] == machine.NodeProgress(
        machine.NodeStatus.APPLIED, 1001
    )
    now[0] += 3  # 1012: the new health thread's first round
    health.run_round(health.watched())
    r = service.tick(executor)
    assert r is not None and r.state is State.COMPLETE, r.reason


def test_a_health_thread_that_never_finishes_a_round_does_not_keep_a_wave_from_timing_out(
    tmp_path,
) -> None:
    executor, now = Executor(), [1000.0]
    executor.rollout_policy = lambda commit: CANARY_ONLY  # type: ignore[method-assign]
    clock = lambda: now[0]  # noqa: E731
    # Its thread never runs a round: nothing is ever asked.
    health = HealthWatcher(
        RoundReports(executor), interval_s=1, stale_after_s=60, clock=clock, wall_clock=clock
    )
    service = RolloutService(tmp_path / "state.db", health, clock=clock)
    service.begin(SHA, CANARY_ONLY, NODES, immediate=False)
    service.tick(executor)
    now[0] += 14
    r = service.tick(executor)
    assert r is not None and r.state is State.SOAKING  # waiting for a round, within the timeout
    now[0] += 1
    r = service.tick(executor)
    assert r is not None and r.state is State.HALTED and "timed out after 15s" in r.reason
