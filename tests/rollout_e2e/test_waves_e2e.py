"""Health-gated waves end to end: a real controller, real agents, real pushes.

Every fleet starts with all nodes applying content "v1" at the generation
recorded in ``fleet.first`` (new nodes are published at once). A pushed change then travels in waves:
the canary c1-n01, half of each cluster's remaining nodes, the rest.

"No node outside the canary ever received it" is checked through the
published generation: generations only grow, so a node still published at
its first generation was never published anything else.
"""

from __future__ import annotations

import time

import httpx
import pytest

from support.fleet import CANARY_MARKER, Fleet, free_port, git

TERMINAL = {"complete", "halted", "rolled_back", "superseded", "aborted"}
CANARY = "c1-n01"


def wave_nodes(doc: dict) -> list[list[str]]:  # type: ignore[type-arg]
    return [w["nodes"] for w in doc["waves"]]


def assert_untouched(fleet: Fleet, names: list[str]) -> None:
    """These nodes were never published a new generation and still run v1."""
    published = fleet.published_generations()
    assert {n: published[n] for n in names} == {n: fleet.first[n] for n in names}
    for n in names:
        agent = fleet.agents[n]
        assert agent.content() == "v1", n
        if agent.proc is not None and agent.proc.alive():
            assert agent.metrics()["treadle_agent_applied_generation"] == fleet.first[n], n


def settle(fleet: Fleet, cycles: int = 4) -> None:
    """Give the controller and the agents a few more cycles, so that anything that would (wrongly) still
    happen has happened before the test looks."""
    time.sleep(cycles * 0.5)


def restart_controller(fleet: Fleet, head: str) -> None:
    """SIGKILL the controller and start it again; return once its first cycle (a fresh render of ``head``) is done."""
    fleet.kill_controller()
    fleet.start_controller()
    fleet.wait(lambda: fleet.api("/v1/status")["last_cycle"].get("commit") == head, 60,
               "the restarted controller's first cycle")


def test_a_good_change_reaches_the_canary_then_half_of_each_cluster_then_the_rest(make_fleet) -> None:
    fleet = make_fleet()
    pushed = time.monotonic()
    sha = fleet.change_app("v2")
    doc = fleet.wait_rollout(sha, TERMINAL, 90)
    assert doc["state"] == "complete", doc["reason"]
    # The figure for the log (bench/rollout.py measures the 50-agent target): never asserted.
    print(f"3-wave rollout over {len(fleet.agents)} agents, 1 s soak: push -> complete {time.monotonic() - pushed:.1f} s")
    canary, half, rest = wave_nodes(doc)
    assert canary == [CANARY]
    # Half of each cluster's remaining changed nodes: 1 of c1's 3, 2 of c2's 4.
    assert sorted(n[:2] for n in half) == ["c1", "c2", "c2"]
    assert sorted(canary + half + rest) == sorted(fleet.agents)
    fleet.wait_applied("v2", fleet.agents)
    published = fleet.published_generations()
    assert all(published[n] > fleet.first[n] for n in fleet.agents)
    assert all(fleet.agents[n].metrics()["treadle_agent_applied_generation"] == published[n] for n in fleet.agents)
    # The wave order as the agents lived it: when each wrote the new content.
    mtime = {n: a.app_file.stat().st_mtime_ns for n, a in fleet.agents.items()}
    for earlier, later in ((canary, half), (half, rest)):
        assert max(mtime[n] for n in earlier) < min(mtime[n] for n in later), (earlier, later, mtime)
    assert [w["status"]["healthy"] for w in doc["waves"]] == [1, 3, 4]
    metrics = httpx.get(f"{fleet.url}/metrics", timeout=10, trust_env=False).text
    assert 'treadle_rollout_state{state="complete"} 1.0' in metrics
    assert 'treadle_rollout_wave_nodes{status="healthy",wave="half"} 3.0' in metrics


def test_a_change_failing_its_health_check_on_the_canary_halts_before_any_other_node(make_fleet) -> None:
    fleet = make_fleet()
    sha = fleet.change_app("v2", healthy=False)
    doc = fleet.wait_rollout(sha, TERMINAL, 90)
    assert doc["state"] == "halted"
    assert "wave canary" in doc["reason"] and CANARY in doc["reason"] and "unhealthy" in doc["reason"]
    settle(fleet)
    assert_untouched(fleet, [n for n in fleet.agents if n != CANARY])
    # A restarted controller renders the bad head again: the halted rollout still holds it back.
    restart_controller(fleet, sha)
    settle(fleet)
    assert fleet.rollout()["state"] == "halted"
    assert_untouched(fleet, [n for n in fleet.agents if n != CANARY])
    # halt leaves the canary as it is: it applied the bad change.
    assert fleet.agents[CANARY].content() == "v2"
    assert fleet.agents[CANARY].metrics()["treadle_agent_healthy"] == 0


def test_rollback_returns_the_canary_to_its_previous_content_under_a_higher_generation(make_fleet) -> None:
    fleet = make_fleet(failure_policy="rollback")
    sha = fleet.change_app("v2", healthy=False, message="app v2 with a broken probe")
    doc = fleet.wait_rollout(sha, TERMINAL, 90)
    assert doc["state"] == "rolled_back", doc["reason"]
    rolled = fleet.published_generation(CANARY)  # above v1's and the bad v2's: v1 again
    assert rolled > fleet.first[CANARY] + 1
    canary = fleet.agents[CANARY]
    fleet.wait(lambda: canary.metrics()["treadle_agent_applied_generation"] == rolled, 30,
               "the canary to apply the rollback's generation")
    assert canary.content() == "v1"
    fleet.wait(lambda: canary.metrics()["treadle_agent_healthy"] == 1, 30, "the canary to be healthy again")
    # A restarted controller renders the bad head again: the rolled-back canary keeps the previous content.
    restart_controller(fleet, sha)
    settle(fleet)
    assert fleet.published_generation(CANARY) == rolled and canary.content() == "v1"
    assert_untouched(fleet, [n for n in fleet.agents if n != CANARY])
    # The revert branch: on top of the bad commit, restoring exactly the tree before it.
    branch = f"treadle/revert-{sha[:12]}"
    assert doc["revert_branch"] == branch and doc["revert_error"] is None
    revert = git(fleet.bare, "rev-parse", f"refs/heads/{branch}")
    assert git(fleet.bare, "rev-parse", f"{revert}^") == sha
    assert git(fleet.bare, "diff", "--name-only", sha, revert) == "profiles/app.yaml"
    assert git(fleet.bare, "diff", f"{sha}^", revert) == ""
    assert f"This reverts commit {sha}" in git(fleet.bare, "log", "-1", "--format=%B", revert)
    # git stays the admins': the tracked branch is untouched.
    assert git(fleet.bare, "rev-parse", "refs/heads/main") == sha


def test_a_failure_in_wave_2_rolls_back_the_canary_and_wave_2_and_never_reaches_wave_3(make_fleet) -> None:
    fleet = make_fleet(failure_policy="rollback")
    # The new check passes on the canary only (it alone has the marker file): wave 2 fails.
    sha = fleet.change_app("v2", probe=CANARY_MARKER, message="app v2 probing a canary-only file")
    doc = fleet.wait_rollout(sha, TERMINAL, 90)
    assert doc["state"] == "rolled_back" and "wave half" in doc["reason"], doc["reason"]
    canary, half, rest = wave_nodes(doc)
    reached = canary + half
    rolled = {n: fleet.published_generation(n) for n in reached}
    assert all(rolled[n] > fleet.first[n] + 1 for n in reached)  # v1, the bad v2, v1 again
    fleet.wait_applied("v1", reached)
    fleet.wait(lambda: all(fleet.agents[n].metrics()["treadle_agent_applied_generation"] == rolled[n] for n in reached),
               30, "the reached nodes to apply the rollback's generation")
    settle(fleet)
    assert_untouched(fleet, rest)
    assert doc["revert_branch"] == f"treadle/revert-{sha[:12]}"


@pytest.mark.parametrize("budget, outcome", [(1, "complete"), (0, "halted")])
def test_a_node_that_stops_reporting_during_its_wave_counts_against_the_failure_budget(
        make_fleet, budget: int, outcome: str) -> None:
    fleet = make_fleet(half_budget=budget, half_soak_s=3, half_timeout_s=15)
    sha = fleet.change_app("v2")
    doc = fleet.wait_rollout(sha, {"publishing", "soaking", *TERMINAL}, 60, also=lambda d: d["wave"] >= 1)
    assert doc["state"] in ("publishing", "soaking") and doc["wave"] == 1, doc["state"]
    victim = wave_nodes(doc)[1][0]
    fleet.stop_agent(victim)  # inside the wave's 3 s soak: it never soaks
    doc = fleet.wait_rollout(sha, TERMINAL, 60)
    assert doc["state"] == outcome, doc["reason"]
    rest = wave_nodes(doc)[2]
    if outcome == "complete":
        assert doc["waves"][1]["status"]["failed"] == 1
        fleet.wait_applied("v2", rest)
    else:
        assert victim in doc["reason"] and "timed out after 15s" in doc["reason"]
        settle(fleet)
        assert_untouched(fleet, rest)


def test_a_prometheus_that_refuses_connections_halts_the_wave_at_its_timeout(make_fleet) -> None:
    refusing = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    fleet = make_fleet(canary_timeout_s=3, controller_toml_extra=(
        f'[health]\nsource = "prometheus"\nprometheus_url = "{refusing}"\nscrape_timeout_s = 1\ninterval_s = 0.5\n'))
    sha = fleet.change_app("v2")
    doc = fleet.wait_rollout(sha, TERMINAL, 60)
    assert doc["state"] == "halted"
    assert "timed out after 3s" in doc["reason"] and CANARY in doc["reason"]
    # The canary did apply and is healthy: only the source is down, and that never passes a wave.
    assert fleet.agents[CANARY].content() == "v2"
    settle(fleet)
    assert_untouched(fleet, [n for n in fleet.agents if n != CANARY])


def test_a_wave_whose_agents_are_all_down_halts_at_its_timeout(make_fleet) -> None:
    fleet = make_fleet(canary_timeout_s=3)
    fleet.stop_agent(CANARY)
    sha = fleet.change_app("v2")
    doc = fleet.wait_rollout(sha, TERMINAL, 60)
    assert doc["state"] == "halted"
    assert "timed out after 3s while pending" in doc["reason"]
    settle(fleet)
    assert_untouched(fleet, [n for n in fleet.agents if n != CANARY])
    assert fleet.agents[CANARY].content() == "v1"  # its agent was down: nothing applied it
