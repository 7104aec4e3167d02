"""A stand-in for an agent or the controller that only serves their metrics.

Used when TREADLE_OBS_STANDIN=1, to work on the dashboard and rules without
the daemons; the suite's default, and CI, scrape the real
``treadle-agent run`` and ``treadle controller run``. The names are
DESIGN.md's contract, declared here independently of the daemons' code so a
rename there shows up as a failure of the live tests, not here.

    python standin_exporter.py agent NODE SITE CLUSTER trusted|rogue PORT_FILE
    python standin_exporter.py controller PORT_FILE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server

disable_created_metrics()
LIFECYCLES = ("provisioning", "production", "draining", "maintenance", "retired")


def _agent(registry: CollectorRegistry, node: str, site: str, cluster: str, rogue: bool):  # type: ignore[no-untyped-def]
    """Returns one cycle's update; a rogue agent (wrong trust root) refuses every manifest."""
    r = registry
    info = Gauge("treadle_agent_info", "Agent.", ["node", "site", "cluster", "version"], registry=r)
    gauges = {n: Gauge(n, n, registry=r) for n in (
        "treadle_agent_manifest_generation", "treadle_agent_applied_generation", "treadle_agent_last_apply_success",
        "treadle_agent_last_apply_timestamp_seconds", "treadle_agent_healthy", "treadle_agent_manifest_expiry_timestamp_seconds")}
    duration = Histogram("treadle_agent_apply_duration_seconds", "Apply.", registry=r)
    resources = Gauge("treadle_agent_resources", "Resources.", ["type", "status"], registry=r)
    checks = Gauge("treadle_agent_health_check_up", "Check.", ["check"], registry=r)
    verify = Counter("treadle_agent_verify_failures_total", "Refused.", ["reason"], registry=r)
    fetch = Counter("treadle_agent_fetch_failures_total", "Fetch.", ["reason"], registry=r)
    lifecycle = Gauge("treadle_agent_lifecycle", "Lifecycle.", ["state"], registry=r)
    fetch.labels("connect")
    for state in LIFECYCLES:
        lifecycle.labels(state).set(state == "production" and not rogue)
    info.labels(node, "" if rogue else site, "" if rogue else cluster, "0").set(1)

    def cycle() -> None:
        if rogue:
            verify.labels("signature").inc()
            return
        for name, value in (("manifest_generation", 3), ("applied_generation", 3), ("last_apply_success", 1),
                            ("last_apply_timestamp_seconds", time.time()), ("healthy", 1),
                            ("manifest_expiry_timestamp_seconds", time.time() + 43200)):
            gauges[f"treadle_agent_{name}"].set(value)
        duration.observe(0.02)
        resources.labels("file", "in_sync").set(2)
        resources.labels("package", "drifted").set(1)
        checks.labels("sshd").set(1)
        verify.labels("signature")

    return cycle


def _controller(registry: CollectorRegistry):  # type: ignore[no-untyped-def]
    r = registry
    Gauge("treadle_controller_deployed_commit_info", "Commit.", ["commit"], registry=r).labels("0" * 40).set(1)
    Counter("treadle_controller_commits_total", "Commits.", ["result"], registry=r).labels("deployed").inc()
    Counter("treadle_controller_rejected_commits_total", "Refused.", ["reason"], registry=r)
    Histogram("treadle_controller_render_duration_seconds", "Render.", registry=r).observe(0.2)
    nodes = Gauge("treadle_controller_nodes", "Nodes.", ["lifecycle"], registry=r)
    for state in LIFECYCLES:
        nodes.labels(state).set(4 if state == "production" else 0)
    Gauge("treadle_rollout_wave_nodes", "Waves.", ["wave", "status"], registry=r)
    Gauge("treadle_rollout_state", "Rollout.", ["state"], registry=r).labels("complete").set(0)
    return lambda: None


def main(argv: list[str]) -> None:
    registry = CollectorRegistry()
    if argv[0] == "agent":
        cycle = _agent(registry, argv[1], argv[2], argv[3], argv[4] == "rogue")
    else:
        cycle = _controller(registry)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    Path(argv[-1]).write_text(str(server.server_port))
    while True:
        cycle()
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])
