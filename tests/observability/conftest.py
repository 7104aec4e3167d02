"""Fixtures: a real fleet (controller and agents) and a real Prometheus scraping it.

Both are session-scoped: one fleet and one Prometheus serve every test of
this directory, and are stopped at the end. Prometheus is started from the
shipped example config (support.prometheus.derived_config) with 1 s scrape and
evaluation intervals and the shipped rule files, and is handed the agents
through a file_sd JSON file written here, as `treadle targets` would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from support.obs_fleet import Fleet, start
from support.prometheus import PrometheusError, PrometheusServer, binary, derived_config, free_port

#: What must hold before the tests read anything: every daemon scraped, the
#: trusted agents applied, and the recording rules evaluated (rates need two
#: scrapes).
READY_WHEN = (
    'count(up{job="treadle-agents"} == 1) == {agents}',
    'up{job="treadle-controller"} == 1',
    "count(treadle_agent_applied_generation > 0) >= {trusted}",
    "site_cluster:treadle_agent_verify_failures:rate5m > 0",
    "site_cluster:treadle_agent_apply_duration_seconds_bucket:rate5m > 0",
    "site_cluster:treadle_agent_manifest_expiry_timestamp_seconds:min",
)


@pytest.fixture(scope="session")
def promtool() -> str:
    try:
        return binary("promtool")
    except PrometheusError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def prometheus_port() -> int:
    """Chosen before the fleet starts: the controller's health source points at it."""
    return free_port()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory, prometheus_port: int) -> Iterator[Fleet]:
    fleet = start(tmp_path_factory.mktemp("fleet"), f"http://127.0.0.1:{prometheus_port}")
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="session")
def prometheus(
    fleet: Fleet, prometheus_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    try:
        binary("prometheus")
    except PrometheusError as e:
        pytest.fail(str(e))
    work = tmp_path_factory.mktemp("prometheus")
    targets = work / "treadle-agents.json"
    targets.write_text(json.dumps([a.file_sd_entry() for a in fleet.agents], indent=2))
    server = PrometheusServer.start(
        work, derived_config(fleet.controller, targets), prometheus_port
    )
    try:
        trusted = sum(a.trusted for a in fleet.agents)
        for expr in READY_WHEN:
            promql = expr.replace("{agents}", str(len(fleet.agents))).replace(
                "{trusted}", str(trusted)
            )
            server.wait_for(
                lambda q=promql: fleet.check_alive() or bool(server.vector(q)),
                40,
                f"data: {promql}",
            )
        yield server
    finally:
        server.stop()
