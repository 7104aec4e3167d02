"""A push is never delayed by health observation: a real controller publishes a push while its round of
scraping is blocked on agents that accept and never answer.

The wave in flight holds live agents, hung listeners (tests/support/loopback_peers.py) and addresses that
refuse; the per-agent deadline is ten minutes, so the round stays blocked for the whole test. The test
orders events, it does not time them: the hung listeners have accepted the round's connections, then the
push is published, and the round's connections are still open (no client has given up).
"""

from __future__ import annotations

from pathlib import Path

from support.fleet import Fleet, node_specs, rollout_yaml
from support.loopback_peers import peers

BLOCKING_HEALTH = (
    '[health]\nsource = "scrape"\nscrape_timeout_s = 600\nscrape_round_s = 900\nstale_after_s = 2000\n'
    "interval_s = 0.5\nscrape_concurrency = 8\n"
)


def test_a_push_is_published_while_a_round_is_blocked_on_hung_agents(
    tmp_path: Path, fleet_keys: Path
) -> None:
    specs = node_specs(1, 6, canaries=6)  # every node a canary: the first wave holds them all
    live, hung, _down = specs[:2], specs[2:4], specs[4:]
    fleet = Fleet(tmp_path / "fleet", fleet_keys, specs, BLOCKING_HEALTH)
    with peers() as net:
        try:
            fleet.init_repo(rollout_yaml(canary_soak_s=3600, canary_timeout_s=3600))
            fleet.start_controller()
            fleet.wait(
                lambda: all(
                    (
                        fleet.workdir / "controller" / "publish" / "nodes" / n.name / "manifest"
                    ).exists()
                    for n in specs
                ),
                60,
                "the first publication",
            )
            fleet.start_agents([n.name for n in live])
            fleet.wait_applied("v1", [n.name for n in live], 60)
            for n in hung:
                net.hung(n.address, n.port)
            commit = fleet.change_app("v2")
            fleet.wait_rollout(commit, {"soaking"})
            assert net.first_accepted.wait(60), "the round never reached the hung agents"

            node = live[0]
            before = fleet.published_generation(node.name)
            path = fleet.work / "sites" / node.site / node.cluster / "nodes" / f"{node.name}.yaml"
            path.write_text(
                path.read_text().replace(
                    'labels: {canary: "true"}', 'labels: {canary: "true", bump: "1"}'
                )
            )
            fleet.commit_and_push("one node")
            fleet.wait(
                lambda: fleet.published_generation(node.name) > before,
                60,
                "the one-node push to be published",
            )

            # The round that was blocked when the push came is blocked still: its connections are open.
            assert net.accepted == len(hung) and net.open == len(hung) and net.closed_by_client == 0
            # The new rollout's wave (the one node) is what the health thread watches now; its round waits.
            fleet.wait(
                lambda: fleet.api("/v1/status")["health"]["watched"] == 1,
                60,
                "the one node to be watched",
            )
        finally:
            fleet.stop()
