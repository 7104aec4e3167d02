"""observability/README.md's TreadleRolloutHalted runbook, step by step, against a real fleet.

Three nodes in one cluster: the canary c1-n01, then one node per later wave.
A change whose health check probes a file no node has halts at the canary.
Step 3 (abort, then revert in git) runs in-process: tests/rollout/test_scenarios.py.
"""

from __future__ import annotations

import re

from support import REPO
from support.fleet import CANARY, MISSING_FILE, TERMINAL, Fleet

RUNBOOK = REPO / "observability" / "README.md"


def halted(fleet: Fleet) -> tuple[str, int]:
    sha = fleet.change_app("v2", healthy=False, message="app v2 with a probe no node passes")
    doc = fleet.wait_rollout(sha, TERMINAL, 90)
    assert doc["state"] == "halted", doc["reason"]
    return sha, doc["id"]


def wait_until_status_says_healthy(fleet: Fleet, names: list[str]) -> None:
    """Runbook step 2's check between repair and resume: `treadle status --node N` exits 0 for each."""
    for name in names:
        fleet.wait(
            lambda n=name: fleet.cli("status", "--node", n).returncode == 0,
            60,
            f"treadle status --node {name} to say healthy",
        )


def step_1_status_names_the_rollout_nodes_checks_and_next_commands(fleet: Fleet, rid: int) -> None:
    status = fleet.cli("status")
    out = " ".join(status.stdout.split())  # the table wraps long lines
    assert f"{rid} of" in out and "halted" in out, status.stdout + status.stderr
    assert CANARY in out and "app-config" in out, out
    assert f"treadle rollout resume {rid}" in out and f"treadle rollout abort {rid}" in out, out
    shown = fleet.cli("rollout", "show", str(rid))
    assert (
        shown.returncode == 0
        and f"failed {CANARY}" in shown.stdout
        and "app-config" in shown.stdout
    ), shown.stdout


def test_runbook_says_what_it_tests() -> None:
    text = RUNBOOK.read_text()
    section = text[
        text.index("### TreadleRolloutHalted") : text.index("### TreadleRolloutRolledBack")
    ]
    for command in (
        "treadle status",
        "treadle rollout show ID",
        "treadle rollout resume ID",
        "treadle rollout abort ID",
        "git revert",
    ):
        assert command in section, command
    assert "test_runbook_e2e.py" in section


def test_halted_runbook_repair_the_node_then_resume_completes_the_rollout(make_fleet) -> None:
    fleet = make_fleet(clusters=1, per_cluster=3)
    sha, rid = halted(fleet)
    step_1_status_names_the_rollout_nodes_checks_and_next_commands(fleet, rid)
    # 2. The cause is on the node: repair it by hand (here: give it the file its check probes), then resume.
    probe = fleet.agents[CANARY].home / "root" / MISSING_FILE.lstrip("/")
    probe.write_text("repaired\n")
    wait_until_status_says_healthy(fleet, [CANARY])
    # The controller's own hint, run as printed (its id included).
    hint = fleet.rollout(rid)["hint"]
    command = re.search(r"`(treadle rollout resume \d+)`", hint)
    assert command and command.group(1) == f"treadle rollout resume {rid}", hint
    resumed = fleet.cli(*command.group(1).split()[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert "re-checking wave canary" in " ".join(resumed.stdout.split())
    # The other nodes do not have the file: only the canary was repaired, so the next wave halts on its node.
    doc = fleet.wait_rollout(sha, {"halted", "complete"}, 90, also=lambda d: d["wave"] >= 1)
    assert doc["wave"] >= 1 and doc["waves"][0]["status"]["healthy"] == 1, doc
    for _name, agent in fleet.agents.items():
        (agent.home / "root" / MISSING_FILE.lstrip("/")).write_text("repaired\n")
    if doc["state"] == "halted":
        wait_until_status_says_healthy(fleet, list(fleet.agents))
        again = fleet.cli("rollout", "resume", str(rid))
        assert again.returncode == 0, again.stderr
    doc = fleet.wait_rollout(sha, {"complete"}, 90)
    fleet.wait_applied("v2", fleet.agents)
