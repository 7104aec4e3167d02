"""Rollout scenarios over the real controller and real agents, in-process on a fake clock (support.local_fleet).

Every fleet starts with all nodes applying "v1" at the generation in
``fleet.first``; a pushed change then travels in waves: the canary c1-n01,
half of each cluster's remaining nodes, the rest. "No node outside the
canary ever received it" is checked through the published generation:
generations only grow, so a node still published at its first generation was
never published anything else. Where the end-to-end tests waited for time to
pass, these let fake seconds pass (``run_for``), so what would wrongly happen
meanwhile has happened before the test looks. tests/rollout_e2e/ keeps the
scenarios that prove the wiring between processes.
"""

from __future__ import annotations

import json
import shutil

import pytest

from support.fleet import CANARY_MARKER, MISSING_FILE, git, rollout_yaml
from support.local_fleet import EPOCH, LocalFleet
from support.net import free_port
from treadle.cli import main
from treadle.rollout.observe import PrometheusSource

TERMINAL = {"complete", "halted", "rolled_back", "superseded", "aborted"}
CANARY = "c1-n01"


def wave_nodes(doc: dict) -> list[list[str]]:  # type: ignore[type-arg]
    return [w["nodes"] for w in doc["waves"]]


def assert_untouched(fleet: LocalFleet, names: list[str]) -> None:
    """These nodes were never published a new generation and still run v1."""
    published = fleet.published_generations()
    assert {n: published[n] for n in names} == {n: fleet.first[n] for n in names}
    for n in names:
        agent = fleet.agents[n]
        assert agent.content() == "v1", n
        if agent.up:
            assert agent.metrics()["treadle_agent_applied_generation"] == fleet.first[n], n


def restart_controller(fleet: LocalFleet) -> None:
    """The controller dies and starts again: its first cycle renders the head afresh."""
    fleet.kill_controller()
    fleet.start_controller()


# -- health-gated waves -----------------------------------------------------------------------------------


def test_a_good_change_passes_wave_by_wave_each_wave_only_after_the_previous_one_soaked(
    local_fleet,
) -> None:
    fleet = local_fleet(canary_soak_s=5, half_soak_s=5)
    sha = fleet.push("v2")
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "complete", doc["reason"]
    canary, half, rest = wave_nodes(doc)
    assert canary == [CANARY] and sorted(n[:2] for n in half) == ["c1", "c2", "c2"]
    assert [w["status"]["healthy"] for w in doc["waves"]] == [1, 3, 4]
    published = {(e["state"], e["wave"]): e["at"] for e in doc["events"]}
    # Each wave soaked its 5 s of healthy reports before the next was published.
    assert published[("publishing", 1)] - published[("publishing", 0)] >= 5
    assert published[("publishing", 2)] - published[("publishing", 1)] >= 5
    fleet.wait_applied("v2", fleet.agents)
    assert all(
        fleet.agents[n].metrics()["treadle_agent_applied_generation"] == g
        for n, g in fleet.published_generations().items()
    )


def test_a_change_failing_its_health_check_on_the_canary_halts_before_any_other_node(
    local_fleet,
) -> None:
    fleet = local_fleet()
    sha = fleet.push("v2", healthy=False)
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "halted"
    assert (
        "wave canary" in doc["reason"] and CANARY in doc["reason"] and "unhealthy" in doc["reason"]
    )
    fleet.run_for(5)
    assert_untouched(fleet, [n for n in fleet.agents if n != CANARY])
    # A restarted controller renders the bad head again: the halted rollout still holds it back.
    restart_controller(fleet)
    fleet.run_for(5)
    assert fleet.rollout()["state"] == "halted"
    assert_untouched(fleet, [n for n in fleet.agents if n != CANARY])
    # halt leaves the canary as it is: it applied the bad change.
    assert fleet.agents[CANARY].content() == "v2"
    assert fleet.agents[CANARY].metrics()["treadle_agent_healthy"] == 0


def test_rollback_returns_the_canary_to_its_previous_content_under_a_higher_generation(
    local_fleet,
) -> None:
    fleet = local_fleet(failure_policy="rollback")
    sha = fleet.push("v2", healthy=False, message="app v2 with a broken probe")
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "rolled_back", doc["reason"]
    rolled = fleet.published_generation(CANARY)  # above v1's and the bad v2's: v1 again
    assert rolled > fleet.first[CANARY] + 1
    canary = fleet.agents[CANARY]
    fleet.run_until(
        lambda: canary.metrics()["treadle_agent_applied_generation"] == rolled,
        30,
        "the canary to apply the rollback's generation",
    )
    assert canary.content() == "v1"
    fleet.run_until(
        lambda: canary.metrics()["treadle_agent_healthy"] == 1, 30, "the canary to be healthy again"
    )
    # A restarted controller renders the bad head again: the rolled-back canary keeps the previous content.
    restart_controller(fleet)
    fleet.run_for(5)
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


def test_a_failure_in_wave_2_rolls_back_the_canary_and_wave_2_and_never_reaches_wave_3(
    local_fleet,
) -> None:
    fleet = local_fleet(failure_policy="rollback")
    # The new check passes on the canary only (it alone has the marker file): wave 2 fails.
    sha = fleet.push("v2", probe=CANARY_MARKER, message="app v2 probing a canary-only file")
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "rolled_back" and "wave half" in doc["reason"], doc["reason"]
    canary, half, rest = wave_nodes(doc)
    reached = canary + half
    rolled = {n: fleet.published_generation(n) for n in reached}
    assert all(rolled[n] > fleet.first[n] + 1 for n in reached)  # v1, the bad v2, v1 again
    fleet.wait_applied("v1", reached)
    fleet.run_until(
        lambda: all(
            fleet.agents[n].metrics()["treadle_agent_applied_generation"] == rolled[n]
            for n in reached
        ),
        30,
        "the reached nodes to apply the rollback's generation",
    )
    fleet.run_for(5)
    assert_untouched(fleet, rest)
    assert doc["revert_branch"] == f"treadle/revert-{sha[:12]}"


@pytest.mark.parametrize("budget, outcome", [(1, "complete"), (0, "halted")])
def test_a_node_that_stops_reporting_during_its_wave_counts_against_the_failure_budget(
    local_fleet, budget: int, outcome: str
) -> None:
    fleet = local_fleet(half_budget=budget, half_soak_s=3, half_timeout_s=15)
    sha = fleet.push("v2")
    doc = fleet.wait_rollout(sha, {"soaking", *TERMINAL}, also=lambda d: d["wave"] >= 1)
    assert doc["state"] == "soaking" and doc["wave"] == 1, doc["state"]
    victim = wave_nodes(doc)[1][0]
    fleet.stop_agent(victim)  # at the start of the wave's 3 s soak: it never soaks
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == outcome, doc["reason"]
    rest = wave_nodes(doc)[2]
    if outcome == "complete":
        assert doc["waves"][1]["status"]["failed"] == 1
        fleet.wait_applied("v2", rest)
    else:
        assert victim in doc["reason"] and "timed out after 15s" in doc["reason"]
        fleet.run_for(5)
        assert_untouched(fleet, rest)


def test_a_prometheus_that_refuses_connections_halts_the_wave_at_its_timeout(local_fleet) -> None:
    refusing = PrometheusSource(
        f"http://127.0.0.1:{free_port()}", timeout_s=1
    )  # nothing listens there
    fleet = local_fleet(canary_timeout_s=3, health=refusing)
    sha = fleet.push("v2")
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "halted"
    assert "timed out after 3s" in doc["reason"] and CANARY in doc["reason"]
    # The canary did apply and is healthy: only the source is down, and that never passes a wave.
    assert (
        fleet.agents[CANARY].content() == "v2"
        and fleet.agents[CANARY].metrics()["treadle_agent_healthy"] == 1
    )
    fleet.run_for(5)
    assert_untouched(fleet, [n for n in fleet.agents if n != CANARY])


def test_a_wave_whose_agents_are_all_down_halts_at_its_timeout(local_fleet) -> None:
    fleet = local_fleet(canary_timeout_s=3)
    fleet.stop_agent(CANARY)
    sha = fleet.push("v2")
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "halted"
    assert "timed out after 3s while pending" in doc["reason"]
    fleet.run_for(5)
    assert_untouched(fleet, [n for n in fleet.agents if n != CANARY])
    assert fleet.agents[CANARY].content() == "v1"  # its agent was down: nothing applied it


# -- restarts, newer commits, change windows ----------------------------------------------------------------


def test_a_controller_killed_in_wave_2_resumes_in_wave_2_without_skipping_or_repeating_a_wave(
    local_fleet,
) -> None:
    fleet = local_fleet(half_soak_s=4)
    sha = fleet.push("v2")
    doc = fleet.wait_rollout(sha, {"soaking", *TERMINAL}, also=lambda d: d["wave"] >= 1)
    assert (doc["state"], doc["wave"]) == ("soaking", 1)
    half, rest = wave_nodes(doc)[1:]
    fleet.kill_controller()
    killed_at = fleet.clock.now
    before = fleet.published_generations()
    assert {n: before[n] for n in rest} == {n: fleet.first[n] for n in rest}

    fleet.run_for(1)  # the agents go on while the controller is down
    fleet.start_controller()
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "complete", doc["reason"]
    steps = [(e["state"], e["wave"]) for e in doc["events"]]
    # Each wave published once, in order, and wave 3 only after wave 2 passed.
    assert [w for s, w in steps if s == "publishing"] == [0, 1, 2], steps
    assert steps.index(("pending", 2)) < steps.index(("publishing", 2))
    after_restart = [(e["state"], e["wave"]) for e in doc["events"] if e["at"] > killed_at]
    assert after_restart and all(w >= 1 for _s, w in after_restart), after_restart
    # Nothing re-published: the nodes published before the kill keep that generation.
    after = fleet.published_generations()
    assert all(after[n] == before[n] for n in fleet.agents if before[n] != fleet.first[n])
    assert all(after[n] > fleet.first[n] for n in fleet.agents)
    fleet.wait_applied("v2", fleet.agents)
    mtime = {n: a.app_file.stat().st_mtime_ns for n, a in fleet.agents.items()}
    assert max(mtime[n] for n in half) < min(mtime[n] for n in rest)


def test_a_second_commit_during_wave_1_supersedes_and_unreached_nodes_skip_the_first(
    local_fleet,
) -> None:
    fleet = local_fleet(canary_soak_s=30)
    first = fleet.push("v2")
    fleet.wait_rollout(first, {"soaking"})
    fleet.wait_applied("v2", [CANARY])
    at_v2 = fleet.published_generations()
    assert all(at_v2[n] == fleet.first[n] for n in fleet.agents if n != CANARY)
    (fleet.work / "rollout.yaml").write_text(rollout_yaml(canary_soak_s=1))
    second = fleet.push("v3")
    doc = fleet.wait_rollout(second, TERMINAL)
    assert doc["state"] == "complete", doc["reason"]
    old = fleet.rollout_of(first)
    assert old["state"] == "superseded" and second[:12] in old["reason"]
    fleet.wait_applied("v3", fleet.agents)
    published = fleet.published_generations()
    # The canary went v1 -> v2 -> v3; every other node v1 -> v3, never publishing v2.
    assert (
        all(published[n] > at_v2[n] for n in fleet.agents) and at_v2[CANARY] > fleet.first[CANARY]
    )


def test_outside_a_change_window_the_rollout_waits_and_the_emergency_trailer_bypasses_it(
    local_fleet,
) -> None:
    # The fleet's clock starts at EPOCH (08:00 UTC); the only window is 10:00-10:30 UTC, every day.
    hour = (int(EPOCH) // 3600 + 2) % 24
    window = (
        f"windows:\n  - days: [mon, tue, wed, thu, fri, sat, sun]\n"
        f'    start: "{hour:02d}:00"\n    end: "{hour:02d}:30"\n    timezone: UTC\n'
    )
    fleet = local_fleet(extra=window)
    waiting = fleet.push("v2")
    doc = fleet.wait_rollout(waiting, {"waiting", *TERMINAL})
    assert doc["state"] == "waiting"
    current = fleet.rollout("current")
    assert current["commit"] == waiting and "outside every change window" in current["reason"]
    assert f"{hour:02d}:00-" in current["reason"] and "UTC" in current["reason"]
    fleet.run_for(60)
    assert fleet.rollout("current")["state"] == "waiting"
    assert fleet.published_generations() == fleet.first

    urgent = fleet.push("v3", message="app v3: urgent security fix\n\nTreadle-Rollout: immediate")
    doc = fleet.wait_rollout(urgent, TERMINAL)
    assert doc["state"] == "complete" and doc["immediate"] is True, doc["reason"]
    fleet.wait_applied("v3", fleet.agents)
    published = fleet.published_generations()
    assert all(
        published[n] > fleet.first[n] for n in fleet.agents
    )  # v3; v2 never reached anyone (see above)
    assert fleet.rollout_of(waiting)["state"] == "superseded"


def test_inside_the_change_window_the_waiting_rollout_starts_by_itself(local_fleet) -> None:
    hour = (int(EPOCH) // 3600 + 1) % 24  # 09:00-09:30: an hour after the fleet's clock starts
    window = (
        f"windows:\n  - days: [mon, tue, wed, thu, fri, sat, sun]\n"
        f'    start: "{hour:02d}:00"\n    end: "{hour:02d}:30"\n    timezone: UTC\n'
    )
    fleet = local_fleet(extra=window)
    sha = fleet.push("v2")
    assert fleet.wait_rollout(sha, {"waiting", *TERMINAL})["state"] == "waiting"
    fleet.clock.advance(3600 - (fleet.clock.now - EPOCH))  # 09:00
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "complete", doc["reason"]
    fleet.wait_applied("v2", fleet.agents)


def test_a_controller_rebuilt_without_its_state_reaches_every_node_and_refusing_nodes_halt_the_rollout(
    local_fleet,
) -> None:
    fleet = local_fleet(clusters=1, per_cluster=3)
    # The controller's host is rebuilt: its state and publish directories are lost.
    fleet.kill_controller()
    shutil.rmtree(fleet.workdir / "controller" / "state")
    shutil.rmtree(fleet.publish_dir)
    fleet.clock.advance(60)
    fleet.start_controller()
    # The rebuilt controller republishes v1 above what the agents accepted: they take it.
    published = fleet.published_generations()
    fleet.run_until(
        lambda: all(
            fleet.agents[n].metrics()["treadle_agent_applied_generation"]
            == published[n]
            > fleet.first[n]
            for n in fleet.agents
        ),
        30,
        "every agent to accept the rebuilt controller's v1",
    )
    sha = fleet.push("v2")
    assert fleet.wait_rollout(sha, TERMINAL, 120)["state"] == "complete"
    fleet.wait_applied("v2", fleet.agents)

    # The canary's agent holds a generation above anything this controller publishes (as it would after a
    # restore onto a host whose clock is far behind): it refuses the next change, and the rollout halts.
    canary = fleet.agents[CANARY]
    fleet.stop_agent(CANARY)
    state = canary.home / "state" / "agent-state.json"
    doc = json.loads(state.read_text())
    doc["generation"] = 2**52
    state.write_text(json.dumps(doc))
    fleet.start_agents([CANARY])
    sha = fleet.push("v3")
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "halted", doc
    assert (
        f"{CANARY}: reports generation {2**52}, above the" in doc["reason"]
        and "refuses" in doc["reason"]
    )
    assert canary.content() == "v2"
    assert all(fleet.agents[n].content() == "v2" for n in fleet.agents)


# -- operators: the real CLI against the controller's real API --------------------------------------------------


def treadle(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`treadle ARGS` in-process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_operator_pause_holds_resume_continues_approve_releases_and_abort_ends(
    local_fleet, capsys
) -> None:
    fleet = local_fleet(half_approval="true", half_soak_s=60)
    sha = fleet.push("v2")
    doc = fleet.wait_rollout(sha, {"waiting", *TERMINAL})
    assert (doc["state"], doc["wave"]) == ("waiting", 1) and "approval" in doc["reason"]
    assert (
        f"`treadle rollout approve {doc['id']}`" in doc["hint"]
    )  # the id, not the commit (approval takes the id)
    half, rest = wave_nodes(doc)[1:]

    with fleet.serving() as url:
        code, _out, err = treadle(capsys, "rollout", "pause", "--url", url)
        assert code == 0, err
        assert fleet.rollout()["paused"] is True
        code, _out, err = treadle(
            capsys, "rollout", "approve", "--url", url
        )  # approved while paused
        assert code == 0, err
        fleet.run_for(10)  # the pause still holds the wave
        doc = fleet.rollout()
        assert (doc["state"], doc["wave"], doc["paused"]) == ("waiting", 1, True)
        assert {n: g for n, g in fleet.published_generations().items() if n in half} == {
            n: fleet.first[n] for n in half
        }

        code, _out, err = treadle(capsys, "rollout", "resume", "--url", url)
        assert code == 0, err
        fleet.wait_rollout(sha, {"soaking"}, also=lambda d: d["wave"] == 1)
        fleet.wait_applied("v2", half)

        code, _out, err = treadle(capsys, "rollout", "abort", "--url", url)
        assert code == 0, err
        assert fleet.rollout()["state"] == "aborted"
        fleet.run_for(10)
        assert {n: g for n, g in fleet.published_generations().items() if n in rest} == {
            n: fleet.first[n] for n in rest
        }
        assert all(fleet.agents[n].content() == "v1" for n in rest)
        code, out, _err = treadle(capsys, "rollout", "list", "--url", url)
        assert code == 0 and sha[:12] in out and "aborted" in out, out
        code, out, err = treadle(capsys, "rollout", "show", "--url", url)
        assert code == 0 and "aborted" in out, out + err
        code, out, err = treadle(capsys, "rollout", "abort", "--url", url)
        assert code == 1 and "it is aborted" in out + err
    states = [e["state"] for e in fleet.rollout()["events"]]
    assert "waiting (paused)" in states and states[-1] == "aborted"


def test_an_operator_action_that_does_not_apply_exits_1_with_the_reason_on_stderr(
    local_fleet, capsys
) -> None:
    fleet = local_fleet(clusters=1, per_cluster=2)
    sha = fleet.push("v2")
    assert fleet.wait_rollout(sha, TERMINAL, 120)["state"] == "complete"
    with fleet.serving() as url:
        code, out, err = treadle(capsys, "rollout", "approve", "--url", url)
    assert code == 1
    # Like every other error of the CLI, on stderr: scripts parse stdout.
    assert "cannot approve" in err and "it is complete" in err, (out, err)
    assert out == ""


def test_halted_runbook_abort_says_what_runs_and_a_revert_takes_the_canary_back(
    local_fleet, capsys
) -> None:
    fleet = local_fleet(clusters=1, per_cluster=3)
    sha = fleet.push("v2", healthy=False, message="app v2 with a probe no node passes")
    doc = fleet.wait_rollout(sha, TERMINAL, 120)
    assert doc["state"] == "halted", doc["reason"]
    rid = doc["id"]
    assert f"`treadle rollout abort {rid}`" in doc["hint"], doc["hint"]
    with fleet.serving() as url:
        code, out, err = treadle(capsys, "rollout", "show", str(rid), "--url", url)
        assert code == 0 and f"failed {CANARY}" in out and "app-config" in out, out + err
        code, out, err = treadle(capsys, "rollout", "abort", str(rid), "--url", url)
    assert code == 0, err
    out = " ".join(out.split())
    assert f"1 node(s) (waves canary) run {sha[:12]}; the other 2 changed node(s) keep" in out, out
    assert fleet.rollout(rid)["state"] == "aborted"
    assert fleet.agents[CANARY].content() == "v2"
    assert not (fleet.agents[CANARY].home / "root" / MISSING_FILE.lstrip("/")).exists()
    git(fleet.work, "revert", "--no-edit", sha)
    revert = fleet.push_head()
    doc = fleet.wait_rollout(revert, TERMINAL)
    assert doc["state"] == "complete", doc["reason"]
    fleet.wait_applied("v1", fleet.agents)
