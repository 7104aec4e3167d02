"""Changes to the fabric, seen through the real Prometheus: a refused commit, a rollout that halts.

These tests commit to the session's fabric repository, so they live in the
module pytest runs after the read-only live tests (test_prometheus_live.py).
"""

from __future__ import annotations

from support import TEMPLATE
from support.obs_fleet import Fleet
from support.prometheus import PrometheusServer
from support.promql import dashboard_expressions

SETTLE_S = 30


def _alert_states(prometheus: PrometheusServer, name: str) -> set[str]:
    return {
        a["state"] for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == name
    }


def test_refused_commit_is_counted_by_reason_and_raises_the_refusing_alert(
    fleet: Fleet, prometheus: PrometheusServer
) -> None:
    fleet.commit(
        "sites/meyrin/site.yaml",
        "apiVersion: treadle.dev/v1\nkind: Site\ndata: [unclosed\n",
        "a broken site file",
    )
    prometheus.wait_for(
        lambda: bool(prometheus.vector("treadle_controller_rejected_commits_total > 0")),
        SETTLE_S,
        "the controller's refusal in Prometheus",
    )
    prometheus.wait_for(
        lambda: bool(_alert_states(prometheus, "TreadleControllerRefusingCommits")),
        SETTLE_S,
        "TreadleControllerRefusingCommits to become active",
    )
    refused = next(
        e for e in dashboard_expressions() if e.where == "panel 'Commits by result' target B"
    )
    prometheus.wait_for(
        lambda: bool(prometheus.vector(refused.promql)),
        SETTLE_S,
        "the refused commits panel to show data",
    )


def test_failing_canary_halts_the_rollout_and_the_rollout_panels_and_alert_show_it(
    fleet: Fleet, prometheus: PrometheusServer
) -> None:
    # Start from the template's file, whatever an earlier test committed. The
    # canary (batch-001) applies the change, reports a failed apply (the test
    # agents have no package manager) and is unhealthy: the canary wave fails.
    site = (TEMPLATE / "sites/meyrin/site.yaml").read_text()
    fleet.commit(
        "sites/meyrin/site.yaml",
        site.replace("ntp.meyrin.example.org", "ntp2.meyrin.example.org"),
        "a new NTP server",
    )
    prometheus.wait_for(
        lambda: bool(prometheus.vector('treadle_rollout_state{state="halted"} == 1')),
        SETTLE_S,
        "the rollout to halt in Prometheus",
    )
    waves = prometheus.vector('treadle_rollout_wave_nodes{status="failed"} > 0')
    assert {w["metric"]["wave"] for w in waves} == {"canary"}
    prometheus.wait_for(
        lambda: bool(_alert_states(prometheus, "TreadleRolloutHalted")),
        SETTLE_S,
        "TreadleRolloutHalted",
    )
    for e in dashboard_expressions():
        if "rollout" in e.promql:
            assert prometheus.vector(e.promql), f"{e.where} has no data during a halted rollout"
