"""The agent's cycle end to end in-process: real HTTP, real files in a temp root, real state dir."""

from __future__ import annotations

import json
import socket

import pytest

from treadle_agent.state import ENVELOPE, STATE


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1/nodes/node-1/manifest"


def test_first_cycle_accepts_applies_and_stores_the_manifest(node, kit):
    node.start()
    envelope = node.serve(kit.manifest_doc(generation=4, files={"/etc/motd": "hello\n"}))
    result = node.cycle()
    assert result.ok and result.generation == 4
    assert (node.tmp / "root/etc/motd").read_text() == "hello\n"
    assert (node.tmp / "state" / ENVELOPE).read_bytes() == envelope
    assert json.loads((node.tmp / "state" / STATE).read_bytes())["generation"] == 4
    assert node.sample("treadle_agent_manifest_generation") == 4
    assert node.sample("treadle_agent_applied_generation") == 4
    assert node.sample("treadle_agent_last_apply_success") == 1
    assert node.sample("treadle_agent_resources", type="file", status="in_sync") == 1
    assert node.sample("treadle_agent_lifecycle", state="production") == 1
    assert node.sample("treadle_agent_manifest_expiry_timestamp_seconds") == kit.NOW + 86400


def test_unchanged_manifest_is_answered_304_and_changes_nothing(node, kit):
    node.start()
    node.serve(kit.manifest_doc())
    assert node.cycle().ok
    before = node.snapshot()
    etag = node.server.routes[kit.MANIFEST_PATH].etag
    assert node.cycle().ok
    assert node.server.requests[-1] == (kit.MANIFEST_PATH, etag)
    assert node.snapshot() == before


def test_restarted_agent_sends_the_stored_etag_and_enforces_without_refetching(node, kit):
    node.start()
    node.serve(kit.manifest_doc())
    assert node.cycle().ok
    node.start()
    assert node.agent.trusted.manifest is not None
    assert node.cycle().ok
    assert node.server.requests[-1][1] == node.server.routes[kit.MANIFEST_PATH].etag


def test_new_generation_replaces_the_old_and_drops_removed_files(node, kit):
    node.start()
    node.serve(kit.manifest_doc(generation=1, files={"/etc/a": "a\n", "/etc/b": "b\n"}))
    assert node.cycle().ok
    node.serve(kit.manifest_doc(generation=2, files={"/etc/a": "a2\n"}))
    assert node.cycle().ok
    assert (node.tmp / "root/etc/a").read_text() == "a2\n" and not (
        node.tmp / "root/etc/b"
    ).exists()
    assert node.sample("treadle_agent_manifest_generation") == 2


def test_unreachable_server_still_enforces_the_last_good_manifest_and_counts_failures(node, kit):
    node.start()
    node.serve(kit.manifest_doc(files={"/etc/motd": "good\n"}))
    assert node.cycle().ok
    node.start(manifest_urls=[_dead_url()])
    (node.tmp / "root/etc/motd").write_text("hand edited\n")
    result = node.cycle()
    assert result.fetch_failed == "connect" and result.apply_ok
    assert (node.tmp / "root/etc/motd").read_text() == "good\n"
    assert node.sample("treadle_agent_fetch_failures_total", reason="connect") == 1
    node.cycle()
    assert node.sample("treadle_agent_fetch_failures_total", reason="connect") == 2


def test_report_policy_counts_drift_without_healing_while_offline(node, kit):
    node.start()
    node.serve(kit.manifest_doc(files={"/etc/motd": "good\n"}))
    assert node.cycle().ok
    node.start(manifest_urls=[_dead_url()], drift_policy="report")
    (node.tmp / "root/etc/motd").write_text("hand edited\n")
    node.cycle()
    assert (node.tmp / "root/etc/motd").read_text() == "hand edited\n"
    assert node.sample("treadle_agent_resources", type="file", status="drifted") == 1


def test_second_url_serves_when_the_first_is_down(node, kit):
    node.start(manifest_urls=[_dead_url(), node.server.url()])
    node.serve(kit.manifest_doc())
    result = node.cycle()
    assert result.generation == 1 and result.apply_ok
    assert node.sample("treadle_agent_fetch_failures_total", reason="connect") == 1


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'{"generation": "seven"}'])
def test_corrupt_state_file_at_start_up_is_set_aside_and_the_agent_refetches(
    node, kit, garbage, caplog
):
    state = node.tmp / "state"
    state.mkdir()
    (state / STATE).write_bytes(garbage)
    (state / ENVELOPE).write_bytes(garbage[:3])
    node.start()
    assert sorted(p.name.split(".corrupt-")[0] for p in state.glob("*.corrupt-*")) == sorted(
        {ENVELOPE, STATE}
    )
    node.serve(kit.manifest_doc(generation=3))
    assert node.cycle().ok
    assert node.agent.trusted.highest_generation == 3


def test_rollback_protection_survives_a_restart(node, kit):
    node.start()
    node.serve(kit.manifest_doc(generation=5))
    assert node.cycle().ok
    node.start()
    node.serve(kit.manifest_doc(generation=4))
    assert node.cycle().refused == "rollback"


def test_stored_manifest_is_reverified_when_the_trust_root_changes(node, kit, make_keys):
    node.start()
    node.serve(kit.manifest_doc(generation=2))
    assert node.cycle().ok
    node.keys = make_keys()
    node.start(trust_root=str(node.keys.trust_root))
    assert node.agent.trusted.manifest is None  # its signer is no longer trusted
    assert list((node.tmp / "state").glob(f"{ENVELOPE}.corrupt-*"))
    node.serve(kit.manifest_doc(generation=2), signers=node.keys.signers)
    assert node.cycle().ok  # generation 2 again is fine: the old one's bytes are gone


def test_nothing_accepted_and_server_down_reports_nothing_to_enforce(node, kit):
    node.start(manifest_urls=[_dead_url()])
    result = node.cycle()
    assert not result.ok and result.generation is None and result.fetch_failed == "connect"


def test_health_checks_become_metrics(node, kit):
    node.start()
    doc = kit.manifest_doc()
    doc["health"] = [
        {"name": "motd", "type": "file", "path": "/etc/motd", "timeout_s": 1},
        {"name": "nothing", "type": "file", "path": "/etc/nothing", "timeout_s": 1},
    ]
    node.serve(doc)
    result = node.cycle()
    assert result.apply_ok and not result.healthy
    assert node.sample("treadle_agent_health_check_up", check="motd") == 1
    assert node.sample("treadle_agent_health_check_up", check="nothing") == 0
    assert node.sample("treadle_agent_healthy") == 0


def test_a_scrape_sees_generation_apply_result_and_health_of_one_cycle_together(node, kit):
    """Generation, apply result and health change in one step: no scrape pairs a new generation with old health."""
    from treadle_agent.metrics import AgentMetrics

    seen: list[tuple[float | None, ...]] = []

    class Scraped(AgentMetrics):
        """Scrapes after every update the agent makes, as a Prometheus server might at any moment."""

        def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
            attr = super().__getattribute__(name)
            if (
                callable(attr)
                and not name.startswith("_")
                and name not in ("sample", "registry", "exposition", "serve")
            ):

                def scraped(*args, **kwargs):  # type: ignore[no-untyped-def]
                    out = attr(*args, **kwargs)
                    seen.append(
                        tuple(
                            self.sample(n)
                            for n in (
                                "treadle_agent_applied_generation",
                                "treadle_agent_last_apply_success",
                                "treadle_agent_healthy",
                            )
                        )
                    )
                    return out

                return scraped
            return attr

    agent = node.start()
    agent.metrics = Scraped(agent.metrics.node)
    healthy = kit.manifest_doc(generation=1)
    healthy["health"] = [{"name": "motd", "type": "file", "path": "/etc/motd", "timeout_s": 1}]
    node.serve(healthy)
    assert node.cycle().healthy
    sick = kit.manifest_doc(generation=2)
    sick["health"] = [{"name": "nothing", "type": "file", "path": "/etc/nothing", "timeout_s": 1}]
    node.serve(sick)
    assert not node.cycle().healthy
    assert seen[-1] == (2, 1, 0)
    assert (2, 1, 1) not in seen  # generation 2 beside generation 1's health: never visible
