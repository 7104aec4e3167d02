"""A rebuilt controller and agents that hold higher generations, end to end (real controller, real agents).

A controller whose state and publish directories are gone must still reach
every node (its generations come from its clock, above what the agents
accepted); a rollout whose nodes refuse what was published must fail, loudly,
never complete.
"""

from __future__ import annotations

import json
import shutil

from support.fleet import Fleet

TERMINAL = {"complete", "halted", "rolled_back", "superseded", "aborted"}
CANARY = "c1-n01"


def rebuild_controller(fleet: Fleet) -> None:
    """The controller's host is rebuilt: its state and publish directories are lost."""
    fleet.kill_controller()
    shutil.rmtree(fleet.workdir / "controller" / "state")
    shutil.rmtree(fleet.workdir / "controller" / "publish")
    fleet.start_controller()


def test_a_controller_rebuilt_without_its_state_reaches_every_node_and_refusing_nodes_halt_the_rollout(make_fleet) -> None:
    fleet = make_fleet(clusters=1, per_cluster=3)
    rebuild_controller(fleet)
    # The rebuilt controller republishes v1 above what the agents accepted: they take it.
    def accepted() -> bool:
        try:
            published = fleet.published_generations()
        except FileNotFoundError:  # not republished yet
            return False
        return all(fleet.agents[n].metrics()["treadle_agent_applied_generation"] == published[n] > fleet.first[n]
                   for n in fleet.agents)

    fleet.wait(accepted, 60, "every agent to accept the rebuilt controller's v1")
    sha = fleet.change_app("v2")
    doc = fleet.wait_rollout(sha, TERMINAL, 90)
    assert doc["state"] == "complete", doc["reason"]
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
    sha = fleet.change_app("v3")
    doc = fleet.wait_rollout(sha, TERMINAL, 90)
    assert doc["state"] == "halted", doc
    assert f"{CANARY}: reports generation {2**52}, above the" in doc["reason"] and "refuses" in doc["reason"]
    assert canary.content() == "v2"
    assert all(fleet.agents[n].content() == "v2" for n in fleet.agents)
