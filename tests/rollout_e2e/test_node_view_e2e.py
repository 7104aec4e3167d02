"""GET /v1/nodes/<node>, /history, `treadle status --node` and `treadle history`, against a real fleet."""

from __future__ import annotations

import json

import treadle_schemas
from support.fleet import CANARY, TERMINAL


def test_a_node_says_what_it_runs_since_when_its_wave_and_what_its_agent_reports(
    make_fleet,
) -> None:
    fleet = make_fleet(clusters=1, per_cluster=2)
    sha = fleet.change_app("v2")
    assert fleet.wait_rollout(sha, TERMINAL, 90)["state"] == "complete"
    fleet.wait_applied("v2", fleet.agents)

    # Generations are clock-based: the second publication is above the first, and the one the store serves.
    gen1, gen2 = fleet.first[CANARY], fleet.published_generation(CANARY)
    assert gen2 > gen1
    doc = fleet.api(f"/v1/nodes/{CANARY}")
    assert treadle_schemas.errors("node-status.json", doc) == []
    assert (doc["node"], doc["lifecycle"], doc["labels"], doc["site"], doc["cluster"]) == (
        CANARY,
        "production",
        {"canary": "true"},
        "s1",
        "c1",
    )
    assert (
        doc["published"]["generation"] == gen2
        and doc["published"]["commit"] == sha
        and doc["published"]["since"]
    )
    assert doc["rollout"]["commit"] == sha and (
        doc["rollout"]["wave"],
        doc["rollout"]["status"],
    ) == ("canary", "passed")
    obs = doc["observation"]
    assert obs["reachable"] is True, obs
    assert (obs["applied_generation"], obs["last_apply_success"], obs["healthy"]) == (
        gen2,
        True,
        True,
    )
    from treadle_agent import __version__

    assert obs["version"] == __version__  # the agent's treadle_agent_info{version}
    assert (
        obs["health_checks"] == {"app-config": True}
        and obs["resources"]["failed"] == 0
        and obs["last_apply_at"] > 0
    )

    shown = fleet.cli("status", "--node", CANARY)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    out = " ".join(shown.stdout.split())
    assert (
        f"generation {gen2} of commit {sha}" in out
        and "app-config up" in out
        and "canary=true" in out
    ), out

    history = fleet.api(f"/v1/nodes/{CANARY}/history")
    assert treadle_schemas.errors("node-history.json", history) == []
    rows = [(h["generation"], h["commit"], h["why"]) for h in history["history"]]
    first = rows[-1][1]
    assert rows == [(gen2, sha, "rollout"), (gen1, first, "new node")]
    assert all(h["author"] == "Fabric Admin <admin@example.org>" for h in history["history"])
    listed = fleet.cli("history", CANARY)
    assert (
        listed.returncode == 0
        and "rollout" in listed.stdout
        and "new node" in listed.stdout
        and sha[:12] in listed.stdout
    )
    as_json = json.loads(fleet.cli("history", CANARY, "--format", "json").stdout)
    assert as_json == history


def test_a_stopped_agent_is_reported_unreachable_and_status_exits_1(make_fleet) -> None:
    fleet = make_fleet(clusters=1, per_cluster=2)
    fleet.stop_agent(CANARY)
    doc = fleet.api(f"/v1/nodes/{CANARY}")
    assert doc["observation"]["reachable"] is False and "cannot read" in doc["observation"]["error"]
    assert treadle_schemas.errors("node-status.json", doc) == []
    shown = fleet.cli("status", "--node", CANARY)
    assert shown.returncode == 1 and "unreachable" in shown.stdout
    missing = fleet.cli("status", "--node", "no-such-node")
    assert missing.returncode == 2 and "404" in missing.stderr
