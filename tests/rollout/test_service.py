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
from treadle.rollout.machine import Observation, State
from treadle.rollout.observe import Target
from treadle.rollout.policy import from_doc
from treadle.rollout.service import RolloutService
from treadle.rollout.waves import Candidate

SHA = "f" * 40
POLICY = from_doc({"waves": [
    {"name": "canary", "selector": {"labels": {"canary": "true"}}, "soak_s": 10},
    {"name": "rest", "fraction": 1.0, "soak_s": 10},
]})
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

    r = service.tick(executor)  # pending -> publishing the canary -> soaking; its reports are not read yet
    assert r is not None and r.state is State.SOAKING and executor.published == [("n0",)]
    assert steps == [State.PENDING]

    steps.clear()
    now[0] += 1
    r = service.tick(executor)  # the canary reports: soaking, once
    assert r is not None and r.state is State.SOAKING and r.progress["n0"].status is machine.NodeStatus.APPLIED
    assert steps == [State.SOAKING]

    steps.clear()
    now[0] += 10
    r = service.tick(executor)  # soaked: the canary passes, the next wave starts in the same tick
    assert r is not None and r.state is State.SOAKING and r.wave == 1
    assert executor.published == [("n0",), ("n1", "n2", "n3", "n4", "n5")]
    assert steps == [State.SOAKING, State.PENDING]
    assert all(p.status is machine.NodeStatus.PENDING for p in r.progress.values())


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
