"""The dashboard, the recording rules and the alert rules against a real Prometheus scraping a real fleet."""

from __future__ import annotations

import subprocess

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.obs_fleet import Fleet
from support.prometheus import PrometheusError, PrometheusServer
from support.promql import (
    SYNTHETIC,
    dashboard_expressions,
    metric_names,
    recorded_names,
    rule_expressions,
)

DASHBOARD = dashboard_expressions()
RULES = rule_expressions()

#: Panel queries that are empty in a healthy test fleet, and why.
EMPTY_IN_TEST_FLEET = {
    "panel 'Current rollout: nodes per wave' target A": "no rollout is in flight after the first deployment",
    "panel 'Commits by result' target B": "no commit is refused",
    "panel 'Rollout state' target A": "no rollout has run",
    "panel 'Rollout' target A": "no rollout has run",
}
#: Alerts the test fleet triggers for real: the "rogue" agent refuses every
#: manifest (verify failures) and never applies (behind); manifests live 12 h.
TRIGGERED_ALERTS = (
    "TreadleManifestVerifyFailures",
    "TreadleNodesBehind",
    "TreadleManifestExpiringSoon",
)


def _ids(expressions):  # type: ignore[no-untyped-def]
    return [e.where for e in expressions]


@pytest.mark.parametrize("expression", DASHBOARD, ids=_ids(DASHBOARD))
def test_dashboard_expression_returns_a_vector(prometheus: PrometheusServer, expression) -> None:  # type: ignore[no-untyped-def]
    result = prometheus.query(expression.promql)
    assert result["resultType"] == "vector", f"{expression.where}: {expression.promql}"
    if expression.where not in EMPTY_IN_TEST_FLEET:
        assert result["result"], f"{expression.where} returned no data: {expression.promql}"


@pytest.mark.parametrize("expression", RULES, ids=_ids(RULES))
def test_rule_expression_returns_a_vector(prometheus: PrometheusServer, expression) -> None:  # type: ignore[no-untyped-def]
    result = prometheus.query(expression.promql)
    assert result["resultType"] == "vector", f"{expression.where}: {expression.promql}"


def test_an_expression_with_a_typo_is_reported_by_prometheus(prometheus: PrometheusServer) -> None:
    with pytest.raises(PrometheusError, match="bad_data"):
        prometheus.query("sum by (site (site_cluster:treadle_agent_info:count)")


def test_every_recording_rule_records_data(prometheus: PrometheusServer) -> None:
    empty = {"job:treadle_controller_rejected_commits:rate5m": "no commit is refused"}
    missing = [n for n in sorted(recorded_names()) if n not in empty and not prometheus.vector(n)]
    assert not missing, f"recording rules without data: {missing}"


def test_prometheus_evaluates_every_rule_without_error(prometheus: PrometheusServer) -> None:
    groups = prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(RULES)
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken


def test_alerts_whose_condition_holds_become_active_and_name_site_and_cluster(
    prometheus: PrometheusServer,
) -> None:
    active = prometheus.api("alerts")["alerts"]
    by_name = {a["labels"]["alertname"]: a for a in active}
    for name in TRIGGERED_ALERTS:
        assert name in by_name, f"{name} is not pending or firing; active: {sorted(by_name)}"
    expiring = by_name["TreadleManifestExpiringSoon"]
    assert expiring["labels"]["severity"] == "critical"
    assert (
        f"{expiring['labels']['site']}/{expiring['labels']['cluster']}"
        in expiring["annotations"]["summary"]
    )


def test_healthy_controller_raises_no_controller_alert(prometheus: PrometheusServer) -> None:
    names = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert not names & {
        "TreadleControllerDown",
        "TreadleControllerRefusingCommits",
        "TreadleRolloutHalted",
    }


def test_rollout_health_source_reads_every_agent_through_this_prometheus(
    prometheus: PrometheusServer, fleet: Fleet
) -> None:
    from treadle.rollout.observe import PrometheusSource, Target

    targets = [Target(a.node, "127.0.0.1", a.port) for a in fleet.agents]
    observed = anyio.run(PrometheusSource(prometheus.url).observe, targets)
    assert set(observed) == {a.node for a in fleet.agents}
    for agent in fleet.agents:
        seen = observed[agent.node]
        if agent.trusted:
            assert seen.generation is not None and seen.generation >= 1 and seen.healthy is not None
        else:  # refuses every manifest: it never reports applying one
            assert seen.generation == 0


def _exposition(url: str) -> str:
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    return response.text


_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def _exported_names(text: str) -> set[str]:
    """Sample names in an exposition, and those its HELP/TYPE lines declare.

    A labelled counter with no child yet (no refused commit so far) has
    no sample but is declared; a rule over it is still right.
    """
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


def test_every_metric_the_dashboard_and_rules_use_is_exported(fleet: Fleet) -> None:
    exported = _exported_names(_exposition(f"http://{fleet.controller}/metrics"))
    for agent in fleet.agents:
        exported |= _exported_names(_exposition(f"http://127.0.0.1:{agent.port}/metrics"))
    recorded = recorded_names()
    used = {name: e.where for e in [*DASHBOARD, *RULES] for name in metric_names(e.promql)}
    unknown = {
        name: where for name, where in used.items() if name not in exported | recorded | SYNTHETIC
    }
    assert not unknown, (
        f"metrics neither exported by an agent or the controller nor recorded: {unknown}"
    )
    assert {n for n in used if n.startswith("treadle_agent_")} and {
        n for n in used if n.startswith("treadle_controller_")
    }


@pytest.mark.parametrize("who", ["agent", "controller"])
def test_promtool_check_metrics_finds_no_problem(fleet: Fleet, promtool: str, who: str) -> None:
    url = (
        f"http://{fleet.controller}/metrics"
        if who == "controller"
        else f"http://127.0.0.1:{fleet.agents[0].port}/metrics"
    )
    body = _exposition(url)
    assert "treadle_" in body
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )
