"""The shipped observability and systemd files, checked by the tools that consume them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import copy_template
from support.git import git
from support.prometheus import EXAMPLE_CONFIG, PROMETHEUS_DIR, REPO, RULE_FILES
from support.promql import (
    DASHBOARD,
    dashboard_expressions,
    metric_names,
    recorded_names,
    rule_expressions,
    rule_groups,
)

SYSTEMD = REPO / "systemd"
UNITS = ("treadle-agent.service", "treadle-controller.service")
EXAMPLE_TARGETS = PROMETHEUS_DIR / "treadle-agents.example.json"
# level:metric:operations, https://prometheus.io/docs/practices/rules/
RULE_NAME = re.compile(r"^[a-z_]+:[a-z_]+:[a-z0-9_]+$")


def test_rule_files_pass_promtool_check_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_example_config_with_its_targets_file_passes_promtool_check_config(
    promtool: str, tmp_path: Path
) -> None:
    for f in (EXAMPLE_CONFIG, *RULE_FILES):
        shutil.copy(f, tmp_path)
    shutil.copy(EXAMPLE_TARGETS, tmp_path / "treadle-agents.json")  # where the example looks for it
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output and "2 rule files found" in output, output


TARGET_LABELS = {"node", "site", "cluster", "lifecycle"}


def test_example_targets_file_has_one_entry_per_node_with_its_place_and_lifecycle() -> None:
    entries = json.loads(EXAMPLE_TARGETS.read_text())
    assert entries
    for entry in entries:
        assert len(entry["targets"]) == 1 and re.fullmatch(r"[^:]+:\d+", entry["targets"][0])
        assert set(entry["labels"]) == TARGET_LABELS


def test_dashboard_is_importable_with_datasource_site_and_cluster_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource"
        and variables["datasource"]["query"] == "prometheus"
    )
    for name in ("site", "cluster"):
        var = variables[name]
        assert (
            var["type"] == "query"
            and var["multi"]
            and var["includeAll"]
            and var["allValue"] == ".*"
        )
        assert f", {name})" in var["query"]["query"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel[
                "title"
            ]
            assert panel["targets"], panel["title"]


def test_every_agent_panel_follows_the_site_and_cluster_selection() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if "treadle_agent" in target["expr"]:
                assert '$site"' in target["expr"] and '$cluster"' in target["expr"], (
                    f"{panel['title']}: {target['expr']}"
                )


def test_dashboard_reads_agent_series_only_through_recording_rules_or_a_filtered_join() -> None:
    # A raw agent series in a panel means reading every node's series at each refresh.
    for e in dashboard_expressions():
        raw = {n for n in metric_names(e.promql) if n.startswith("treadle_agent_")}
        assert raw <= {"treadle_agent_info"}, f"{e.where} reads raw agent series {raw}"


def test_every_recording_rule_name_follows_level_metric_operations() -> None:
    bad = [n for n in recorded_names() if not RULE_NAME.match(n)]
    assert not bad


def test_every_rule_name_the_dashboard_and_alerts_use_is_recorded() -> None:
    recorded = recorded_names()
    used = {
        n: e.where
        for e in [*dashboard_expressions(), *rule_expressions()]
        for n in metric_names(e.promql)
        if ":" in n
    }
    assert set(used) <= recorded, {n: w for n, w in used.items() if n not in recorded}


def _alerts() -> list[dict]:  # type: ignore[type-arg]
    return [r for path in RULE_FILES for g in rule_groups(path) for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_duration_a_severity_and_a_summary_and_description() -> None:
    for alert in _alerts():
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert[
            "alert"
        ]


def test_every_per_cluster_alert_names_site_and_cluster_in_its_summary() -> None:
    for alert in _alerts():
        if "site_cluster:" in alert["expr"]:
            assert "{{ $labels.site }}/{{ $labels.cluster }}" in alert["annotations"]["summary"], (
                alert["alert"]
            )


def test_cluster_alerts_fire_on_a_share_of_the_cluster_not_on_one_node() -> None:
    by_name = {a["alert"]: a["expr"] for a in _alerts()}
    for name in (
        "TreadleClusterUnhealthy",
        "TreadleClusterUnhealthyCritical",
        "TreadleNodesBehind",
    ):
        assert ":ratio" in by_name[name], name


def test_readme_explains_every_alert() -> None:
    readme = (REPO / "observability" / "README.md").read_text()
    missing = [a["alert"] for a in _alerts() if f"### {a['alert']}" not in readme]
    assert not missing


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path is not None, (
        "systemd-analyze not installed: .ci/install-deps installs it (Debian package `systemd`)"
    )
    return path


#: Where the units' ExecStart commands live.
BIN_DIRS = ("/opt/treadle/bin/", "/usr/local/bin/")


def _verify(unit: Path, tmp_path: Path) -> str:
    """``systemd-analyze verify`` output for ``unit`` ("" when clean).

    The units name /opt/treadle/bin (the venv of a node install) or
    /usr/local/bin, where `pip install treadle` puts the commands; verify
    insists the command exists, so the copy checked here points at this
    checkout's installed command instead.
    """
    bin_dir = Path(sys.executable).parent
    copy = tmp_path / unit.name
    text = unit.read_text()
    for prefix in BIN_DIRS:
        text = text.replace(prefix, f"{bin_dir}/")
    copy.write_text(text)
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    return (result.stdout + result.stderr).strip() + (
        "" if result.returncode == 0 else f"\nexit {result.returncode}"
    )


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    text = (SYSTEMD / unit).read_text()
    assert (
        len(re.findall(r"^ExecStart=(?:/usr/local/bin|/opt/treadle/bin)/treadle", text, re.M)) == 1
    )
    assert _verify(SYSTEMD / unit, tmp_path) == ""


def test_systemd_analyze_verify_reports_a_misspelt_option(tmp_path: Path) -> None:
    bad = tmp_path / "src" / "treadle-controller.service"
    bad.parent.mkdir()
    bad.write_text(
        (SYSTEMD / "treadle-controller.service")
        .read_text()
        .replace("ProtectSystem=strict", "ProtectSytem=strict")
    )
    assert "Unknown key 'ProtectSytem'" in _verify(bad, tmp_path)


def _exposure(unit: str, tmp_path: Path) -> str:
    """systemd's rating of the unit's sandbox: OK, MEDIUM, EXPOSED or UNSAFE."""
    _systemd_analyze()
    copy = tmp_path / unit
    copy.write_text((SYSTEMD / unit).read_text())
    out = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    match = re.search(r"Overall exposure level for \S+: \d+\.\d+ (\w+)", out)
    assert match, out
    return match.group(1)


def test_controller_unit_is_rated_ok_by_systemd_analyze_security(tmp_path: Path) -> None:
    assert _exposure("treadle-controller.service", tmp_path) == "OK"


def test_agent_unit_is_sandboxed_as_far_as_its_job_allows(tmp_path: Path) -> None:
    assert (
        _exposure("treadle-agent.service", tmp_path) == "MEDIUM"
    )  # root that writes /usr and /etc: not better
    text = (SYSTEMD / "treadle-agent.service").read_text()
    settings = {
        line.split("=", 1)[0] for line in text.splitlines() if re.match(r"^[A-Z]\w+=", line)
    }
    assert {
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelLogs",
        "ProtectControlGroups",
    } <= settings
    # Options the agent must not have, each explained in the unit's header.
    for option in (
        "ProtectSystem",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "RestrictSUIDSGID",
        "MemoryDenyWriteExecute",
        "ProtectClock",
        "PrivateDevices",
    ):
        assert option not in settings and f"#   {option}" in text, option


def _fabric_nodes() -> dict[str, dict[str, object]]:
    """node -> its file_sd entry, from the template's node files."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    yaml.constructor.add_multi_constructor(
        "!", lambda _loader, _suffix, _node: None
    )  # !delete, !append: not needed here
    out = {}
    for path in (REPO / "fabric-repo-template").glob("sites/*/*/nodes/*.yaml"):
        doc = yaml.load(path.read_text())
        port = (doc.get("agent") or {}).get("metrics_port", 9731)
        address = f"[{doc['address']}]" if ":" in doc["address"] else doc["address"]
        labels = {
            "node": path.stem,
            "site": path.parts[-4],
            "cluster": path.parts[-3],
            "lifecycle": doc["lifecycle"],
        }
        out[path.stem] = {"targets": [f"{address}:{port}"], "labels": labels}
    return out


def test_treadle_targets_writes_one_file_sd_entry_per_node_not_retired(tmp_path: Path) -> None:
    treadle = str(Path(sys.executable).parent / "treadle")
    repo = tmp_path / "fabric"
    copy_template(repo)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "fabric"]):
        git(repo, *args)
    out = tmp_path / "treadle-agents.json"
    result = subprocess.run(
        [treadle, "targets", "--out", str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )  # as documented
    assert result.returncode == 0, result.stderr
    expected = [e for e in _fabric_nodes().values() if e["labels"]["lifecycle"] != "retired"]  # type: ignore[index]
    key = lambda e: e["labels"]["node"]  # noqa: E731
    assert sorted(json.loads(out.read_text()), key=key) == sorted(expected, key=key)
