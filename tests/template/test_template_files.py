"""The example fabric (fabric-repo-template/) is valid, complete and shows what it claims to show."""

from __future__ import annotations

import ipaddress
import re

import pytest

import treadle_schemas
from support import TEMPLATE

YAML_FILES = sorted(
    p.relative_to(TEMPLATE).as_posix()
    for p in TEMPLATE.rglob("*.yaml")
    if not any(part.startswith(".") for part in p.relative_to(TEMPLATE).parts)
)
NODE_FILES = sorted(TEMPLATE.glob("sites/*/*/nodes/*.yaml"))
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def _expected_kind(relpath: str) -> str:
    parts = relpath.split("/")
    if relpath == "fabric.yaml":
        return "Fabric"
    if relpath == "rollout.yaml":
        return "RolloutPolicy"
    if parts[0] == "profiles":
        return "Profile"
    if parts[0] == "sites" and len(parts) == 3 and parts[2] == "site.yaml":
        return "Site"
    if parts[0] == "sites" and len(parts) == 4 and parts[3] == "cluster.yaml":
        return "Cluster"
    if parts[0] == "sites" and len(parts) == 5 and parts[3] == "nodes":
        return "Node"
    raise AssertionError(f"{relpath}: not a place for a fabric file")


def _nodes(fabric_files) -> dict[str, dict]:
    return {
        p.stem: fabric_files.load(p) | {"_site": p.parts[-4], "_cluster": p.parts[-3]}
        for p in NODE_FILES
    }


def test_template_has_the_layout_of_a_fabric_repository():
    assert (TEMPLATE / "fabric.yaml").is_file() and (TEMPLATE / "rollout.yaml").is_file()
    assert {p.parent.name + "/" + p.name for p in TEMPLATE.glob("sites/*/*/cluster.yaml")} == {
        "batch/cluster.yaml",
        "login/cluster.yaml",
        "storage/cluster.yaml",
    }
    assert len(NODE_FILES) == 12
    assert {p.stem for p in (TEMPLATE / "profiles").glob("*.yaml")} >= {
        "base",
        "batch",
        "storage",
        "login",
        "canary",
    }
    assert {p.stem for p in (TEMPLATE / "profiles" / "lifecycle").glob("*.yaml")} == {
        "draining",
        "maintenance",
    }


@pytest.mark.parametrize("relpath", YAML_FILES)
def test_every_yaml_file_validates_against_the_schema_of_its_kind(relpath, fabric_files):
    doc = fabric_files.load(TEMPLATE / relpath)
    assert doc["kind"] == _expected_kind(relpath)
    assert fabric_files.errors(TEMPLATE / relpath) == []


@pytest.mark.parametrize("relpath", YAML_FILES)
def test_every_yaml_file_starts_with_the_language_server_line_naming_its_schema(
    relpath, fabric_files
):
    first = (TEMPLATE / relpath).read_text(encoding="utf-8").splitlines()[0]
    schema = treadle_schemas.KIND_SCHEMAS[fabric_files.load(TEMPLATE / relpath)["kind"]]
    assert first == f"# yaml-language-server: $schema={treadle_schemas.BASE_URI}{schema}"


def test_schema_check_of_these_tests_reports_a_broken_copy(tmp_path, fabric_files):
    # Guards the check itself: a check that accepted everything would pass every test above.
    broken = tmp_path / "batch-001.yaml"
    text = (TEMPLATE / "sites/meyrin/batch/nodes/batch-001.yaml").read_text(encoding="utf-8")
    broken.write_text(
        text.replace("lifecycle: production", "lifecycle: productoin\nadress: 192.0.2.99"),
        encoding="utf-8",
    )
    errors = fabric_files.errors(broken)
    assert any("lifecycle" in e for e in errors) and any("adress" in e for e in errors)


def test_every_merge_tag_is_used_somewhere(fabric_files):
    used = set().union(*(fabric_files.tags(TEMPLATE / p) for p in YAML_FILES))
    assert used == {"!append", "!delete", "!replace"}


def test_node_addresses_are_unique_documentation_addresses(fabric_files):
    addresses = [n["address"] for n in _nodes(fabric_files).values()]
    assert len(set(addresses)) == len(addresses)
    for address in addresses:
        assert any(ipaddress.ip_address(address) in net for net in DOC_NETS), address


def test_node_names_follow_cluster_and_number(fabric_files):
    for name, node in _nodes(fabric_files).items():
        assert re.fullmatch(rf"{node['_cluster']}-\d{{3}}", name), name


def test_lifecycle_states_vary_within_the_out_of_production_limit(fabric_files):
    fabric = fabric_files.load(TEMPLATE / "fabric.yaml")
    limit = fabric["lifecycle"]["max_out_of_production"]
    nodes = _nodes(fabric_files)
    assert {n.get("lifecycle", "production") for n in nodes.values()} == {
        "production",
        "draining",
        "maintenance",
        "provisioning",
    }
    clusters: dict[str, list[str]] = {}
    for node in nodes.values():
        clusters.setdefault(node["_cluster"], []).append(node.get("lifecycle", "production"))
    for cluster, states in clusters.items():
        live = [s for s in states if s != "retired"]
        out = sum(s != "production" for s in live)
        assert out / len(live) < limit, f"{cluster}: {out} of {len(live)} out of production"


def test_lifecycle_transitions_reach_every_state_and_retired_is_final(fabric_files):
    transitions = fabric_files.load(TEMPLATE / "fabric.yaml")["lifecycle"]["transitions"]
    assert transitions["retired"] == []
    reachable = {"provisioning"}
    for _ in range(len(transitions)):
        reachable |= {t for s in reachable for t in transitions.get(s, [])}
    assert reachable == {"provisioning", "production", "draining", "maintenance", "retired"}
    for state in ("draining", "maintenance"):
        assert (TEMPLATE / "profiles" / "lifecycle" / f"{state}.yaml").is_file()


def test_referenced_profiles_and_templates_exist(fabric_files):
    profiles = {
        p.relative_to(TEMPLATE / "profiles").with_suffix("").as_posix()
        for p in (TEMPLATE / "profiles").rglob("*.yaml")
    }
    templates = {p.name for p in (TEMPLATE / "templates").iterdir()}
    used_templates = set()
    for relpath in YAML_FILES:
        doc = fabric_files.load(TEMPLATE / relpath)
        body = doc.get("defaults", doc)
        assert set(body.get("profiles", [])) <= profiles, relpath
        used_templates |= {f["template"] for f in body.get("files", {}).values() if "template" in f}
    assert used_templates == templates


def test_each_agent_listens_on_its_own_port_and_no_check_needs_the_daemon(fabric_files):
    nodes = _nodes(fabric_files)
    ports = [n["agent"]["metrics_port"] for n in nodes.values()]
    assert len(set(ports)) == len(ports)
    for name, node in nodes.items():
        # `treadle-agent once` serves no metrics: a check on the port would fail every first test.
        assert all(
            c.get("tcp") != node["agent"]["metrics_port"] for c in node.get("health", {}).values()
        ), name


def test_rollout_starts_with_the_canaries_the_canary_profile_marks(fabric_files):
    rollout = fabric_files.load(TEMPLATE / "rollout.yaml")
    canary_labels = fabric_files.load(TEMPLATE / "profiles" / "canary.yaml")["labels"]
    waves = {w["name"]: w for w in rollout["waves"]}
    assert [w["name"] for w in rollout["waves"]] == ["canary", "ten-percent", "rest"]
    assert waves["canary"]["selector"]["labels"] == canary_labels == {"canary": "true"}
    assert (waves["ten-percent"]["fraction"], waves["rest"]["fraction"]) == (0.1, 1.0)
    text = (TEMPLATE / "rollout.yaml").read_text(encoding="utf-8")
    assert "# windows:" in text and "windows" not in rollout


def test_template_ships_no_python_files():
    # It is installed as the data package treadle_template; code in it would be importable.
    assert [p for p in TEMPLATE.rglob("*.py")] == []
