"""Rollouts under restarts, newer commits, change windows and operators, end to end.

Same fleet as test_waves_e2e.py: the canary c1-n01, half of each cluster,
the rest; every node starts at "v1", at the generation in ``fleet.first``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time

from support.fleet import PY, Fleet, rollout_yaml

TERMINAL = {"complete", "halted", "rolled_back", "superseded", "aborted"}
CANARY = "c1-n01"


def wave_nodes(doc: dict) -> list[list[str]]:  # type: ignore[type-arg]
    return [w["nodes"] for w in doc["waves"]]


def cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `treadle rollout ...` against the fleet's controller."""
    return subprocess.run([PY, "-m", "treadle.cli", "rollout", *args, "--url", fleet.url],
                          capture_output=True, text=True, timeout=60)


def test_a_controller_killed_in_wave_2_resumes_in_wave_2_without_skipping_or_repeating_a_wave(make_fleet) -> None:
    fleet = make_fleet(half_soak_s=4)
    sha = fleet.change_app("v2")
    doc = fleet.wait_rollout(sha, {"soaking", *TERMINAL}, 60, also=lambda d: d["wave"] >= 1)
    assert (doc["state"], doc["wave"]) == ("soaking", 1)
    half, rest = wave_nodes(doc)[1:]
    fleet.kill_controller()
    killed_at = time.time()
    before = fleet.published_generations()
    assert {n: before[n] for n in rest} == {n: fleet.first[n] for n in rest}

    fleet.start_controller()
    doc = fleet.wait_rollout(sha, TERMINAL, 90)
    assert doc["state"] == "complete", doc["reason"]
    steps = [(e["state"], e["wave"]) for e in doc["events"]]
    # Each wave published once, in order, and wave 3 only after wave 2 passed.
    assert [w for s, w in steps if s == "publishing"] == [0, 1, 2], steps
    assert steps.index(("pending", 2)) < steps.index(("publishing", 2))
    after_restart = [(e["state"], e["wave"]) for e in doc["events"] if e["at"] > killed_at]
    assert all(w >= 1 for _s, w in after_restart), after_restart
    # Nothing re-published: the nodes published before the kill keep that generation.
    after = fleet.published_generations()
    assert all(after[n] == before[n] for n in fleet.agents if before[n] != fleet.first[n])
    assert all(after[n] > fleet.first[n] for n in fleet.agents)
    fleet.wait_applied("v2", fleet.agents)
    mtime = {n: a.app_file.stat().st_mtime_ns for n, a in fleet.agents.items()}
    assert max(mtime[n] for n in half) < min(mtime[n] for n in rest)


def test_a_second_commit_during_wave_1_supersedes_and_unreached_nodes_skip_the_first(make_fleet) -> None:
    fleet = make_fleet(canary_soak_s=30)
    first = fleet.change_app("v2")
    fleet.wait_rollout(first, {"soaking"}, 60)
    fleet.wait_applied("v2", [CANARY])
    at_v2 = fleet.published_generations()
    assert all(at_v2[n] == fleet.first[n] for n in fleet.agents if n != CANARY)
    # The second commit also shortens the canary soak, only to keep this test short.
    (fleet.work / "rollout.yaml").write_text(rollout_yaml(canary_soak_s=1))
    second = fleet.change_app("v3")
    doc = fleet.wait_rollout(second, TERMINAL, 90)
    assert doc["state"] == "complete", doc["reason"]
    old = next(d for d in fleet.api("/v1/rollouts")["rollouts"] if d["commit"] == first)
    assert old["state"] == "superseded" and second[:12] in old["reason"]
    fleet.wait_applied("v3", fleet.agents)
    published = fleet.published_generations()
    # The canary went v1 -> v2 -> v3; every other node v1 -> v3, never publishing v2.
    assert all(published[n] > at_v2[n] for n in fleet.agents) and at_v2[CANARY] > fleet.first[CANARY]


def _window_elsewhere() -> str:
    """A daily change window that does not contain the present moment (two hours from now, UTC)."""
    hour = (dt.datetime.now(dt.UTC).hour + 2) % 24
    return (f"windows:\n  - days: [mon, tue, wed, thu, fri, sat, sun]\n"
            f'    start: "{hour:02d}:00"\n    end: "{hour:02d}:30"\n    timezone: UTC\n')


def test_outside_a_change_window_the_rollout_waits_and_the_emergency_trailer_bypasses_it(make_fleet) -> None:
    fleet = make_fleet(extra=_window_elsewhere())
    waiting = fleet.change_app("v2")
    doc = fleet.wait_rollout(waiting, {"waiting", *TERMINAL}, 60)
    assert doc["state"] == "waiting"
    current = fleet.rollout("current")
    assert current["commit"] == waiting and "outside every change window" in current["reason"]
    assert ":00-" in current["reason"] and "UTC" in current["reason"]
    time.sleep(2)
    assert fleet.published_generations() == fleet.first

    urgent = fleet.change_app("v3", message="app v3: urgent security fix\n\nTreadle-Rollout: immediate")
    doc = fleet.wait_rollout(urgent, TERMINAL, 90)
    assert doc["state"] == "complete" and doc["immediate"] is True, doc["reason"]
    fleet.wait_applied("v3", fleet.agents)
    published = fleet.published_generations()
    assert all(published[n] > fleet.first[n] for n in fleet.agents)  # v3; v2 never reached anyone (see above)
    old = next(d for d in fleet.api("/v1/rollouts")["rollouts"] if d["commit"] == waiting)
    assert old["state"] == "superseded"


def test_operator_pause_holds_resume_continues_approve_releases_and_abort_ends(make_fleet) -> None:
    fleet = make_fleet(half_approval="true", half_soak_s=60)
    sha = fleet.change_app("v2")
    doc = fleet.wait_rollout(sha, {"waiting", *TERMINAL}, 60)
    assert (doc["state"], doc["wave"]) == ("waiting", 1) and "approval" in doc["reason"]
    assert f"`treadle rollout approve {doc['id']}`" in doc["hint"]  # the id, not the commit (approval takes the id)
    half, rest = wave_nodes(doc)[1:]

    paused = cli(fleet, "pause")
    assert paused.returncode == 0, paused.stderr
    assert fleet.rollout()["paused"] is True
    approved = cli(fleet, "approve")  # approved while paused: the pause still holds the wave
    assert approved.returncode == 0, approved.stderr
    time.sleep(2)
    doc = fleet.rollout()
    assert (doc["state"], doc["wave"], doc["paused"]) == ("waiting", 1, True)
    assert {n: g for n, g in fleet.published_generations().items() if n in half} == {n: fleet.first[n] for n in half}

    resumed = cli(fleet, "resume")
    assert resumed.returncode == 0, resumed.stderr
    fleet.wait_rollout(sha, {"soaking"}, 60, also=lambda d: d["wave"] == 1)
    fleet.wait_applied("v2", half)

    aborted = cli(fleet, "abort")
    assert aborted.returncode == 0, aborted.stderr
    assert fleet.rollout()["state"] == "aborted"
    time.sleep(2)
    assert {n: g for n, g in fleet.published_generations().items() if n in rest} == {n: fleet.first[n] for n in rest}
    assert all(fleet.agents[n].content() == "v1" for n in rest)
    listed = cli(fleet, "list")
    assert listed.returncode == 0 and sha[:12] in listed.stdout and "aborted" in listed.stdout, listed.stdout
    shown = cli(fleet, "show")
    assert shown.returncode == 0 and "aborted" in shown.stdout, shown.stdout + shown.stderr
    again = cli(fleet, "abort")
    assert again.returncode == 1 and "it is aborted" in again.stdout + again.stderr
    states = [e["state"] for e in fleet.rollout()["events"]]
    assert "waiting (paused)" in states and states[-1] == "aborted"


def test_an_operator_action_that_does_not_apply_exits_1_with_the_reason_on_stderr(make_fleet) -> None:
    fleet = make_fleet(clusters=1, per_cluster=2)
    sha = fleet.change_app("v2")
    assert fleet.wait_rollout(sha, TERMINAL, 60)["state"] == "complete"
    late = cli(fleet, "approve")
    assert late.returncode == 1
    # Like every other error of the CLI, on stderr: scripts parse stdout.
    assert "cannot approve" in late.stderr and "it is complete" in late.stderr, (late.stdout, late.stderr)
    assert late.stdout == ""
