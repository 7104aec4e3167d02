"""Health-gated waves end to end: a real controller, real agents, real pushes, real scrapes.

Every fleet starts with all nodes applying content "v1" at the generation recorded in ``fleet.first``. A pushed
change then travels in waves: the canary c1-n01, half of each cluster's remaining nodes, the rest. This proves
the wiring between the processes (git push, ref watcher, HTTP manifests, the agents' /metrics, the controller's
own metrics); what the rollout decides in every other scenario is tested in-process on a fake clock, against the
same controller and agent code (tests/rollout/test_scenarios.py).
"""

from __future__ import annotations

import time

import httpx

from support.fleet import CANARY, TERMINAL


def wave_nodes(doc: dict) -> list[list[str]]:  # type: ignore[type-arg]
    return [w["nodes"] for w in doc["waves"]]


def test_a_good_change_reaches_the_canary_then_half_of_each_cluster_then_the_rest(
    make_fleet,
) -> None:
    fleet = make_fleet()
    pushed = time.monotonic()
    sha = fleet.change_app("v2")
    doc = fleet.wait_rollout(sha, TERMINAL, 90)
    assert doc["state"] == "complete", doc["reason"]
    # The figure for the log (bench/rollout.py measures the 50-agent target): never asserted.
    print(
        f"3-wave rollout over {len(fleet.agents)} agents, 1 s soak: push -> complete {time.monotonic() - pushed:.1f} s"
    )
    canary, half, rest = wave_nodes(doc)
    assert canary == [CANARY]
    # Half of each cluster's remaining changed nodes: 1 of c1's 3, 2 of c2's 4.
    assert sorted(n[:2] for n in half) == ["c1", "c2", "c2"]
    assert sorted(canary + half + rest) == sorted(fleet.agents)
    fleet.wait_applied("v2", fleet.agents)
    published = fleet.published_generations()
    assert all(published[n] > fleet.first[n] for n in fleet.agents)
    assert all(
        fleet.agents[n].metrics()["treadle_agent_applied_generation"] == published[n]
        for n in fleet.agents
    )
    # The wave order as the agents lived it: when each wrote the new content.
    mtime = {n: a.app_file.stat().st_mtime_ns for n, a in fleet.agents.items()}
    for earlier, later in ((canary, half), (half, rest)):
        assert max(mtime[n] for n in earlier) < min(mtime[n] for n in later), (
            earlier,
            later,
            mtime,
        )
    assert [w["status"]["healthy"] for w in doc["waves"]] == [1, 3, 4]
    metrics = httpx.get(f"{fleet.url}/metrics", timeout=10, trust_env=False).text
    assert 'treadle_rollout_state{state="complete"} 1.0' in metrics
    assert 'treadle_rollout_wave_nodes{status="healthy",wave="half"} 3.0' in metrics
