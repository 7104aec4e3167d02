"""The example fabric and a generated one render cleanly, and the template's overlays do what its README says."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import treadle.fabric as fabric_api
import treadle_schemas
from support import TEMPLATE
from support.bench import BENCH


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    result = fabric_api.render_fabric(
        fabric_api.WorkTreeSource(TEMPLATE), cache=fabric_api.ParseCache()
    )
    assert result.ok, "\n".join(map(str, result.diagnostics))
    return {name: json.loads(node.canonical) for name, node in result.nodes.items()}


def _resources(manifest: dict, kind: str) -> dict[str, dict]:
    key = (
        "path"
        if kind in ("file", "directory", "symlink")
        else "key"
        if kind == "sysctl"
        else "name"
    )
    return {r[key]: r for r in manifest["resources"] if r["type"] == kind}


def _file(manifest: dict, path: str) -> str:
    return _resources(manifest, "file")[path]["content"]


def test_validate_command_accepts_the_template():
    done = subprocess.run(
        [sys.executable, "-m", "treadle.cli", "validate", str(TEMPLATE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_small_fabric_renders_every_node_without_diagnostics(tmp_path, gen_fabric):
    fabric = gen_fabric.generate(tmp_path / "f", 2, 2, 5, seed=1)
    result = fabric_api.render_fabric(
        fabric_api.WorkTreeSource(fabric.root), cache=fabric_api.ParseCache()
    )
    assert list(result.diagnostics) == [] and result.ok
    assert sorted(result.nodes) == sorted(ref.name for ref in fabric.nodes)


def test_every_template_node_renders_a_manifest_valid_under_its_schema(manifests):
    assert len(manifests) == 12
    for name, manifest in manifests.items():
        assert treadle_schemas.errors("manifest.json", manifest) == [], name


def test_site_appends_its_ntp_server_after_the_fabric_ones(manifests):
    meyrin = _file(
        manifests["batch-002"], "/etc/chrony/chrony.conf"
    )  # Debian (profiles/os/debian.yaml)
    wigner = _file(manifests["storage-002"], "/etc/chrony.conf")  # RHEL (profiles/os/rhel.yaml)
    servers = [line.split()[1] for line in meyrin.splitlines() if line.startswith("server ")]
    assert servers == ["ntp1.example.org", "ntp2.example.org", "ntp.meyrin.example.org"]
    assert "server ntp.wigner.example.org iburst" in wigner and "meyrin" not in wigner


def test_node_delete_removes_the_package_and_service_only_on_that_node(manifests):
    assert "smartmontools" not in _resources(manifests["login-002"], "package")
    assert "smartmontools" not in _resources(manifests["login-002"], "service")
    assert "smartmontools" in _resources(manifests["login-001"], "package")


def test_cluster_replace_drops_inherited_limits_while_merge_keeps_them(manifests):
    storage = _file(manifests["storage-001"], "/etc/security/limits.d/90-treadle.conf")
    batch = _file(manifests["batch-001"], "/etc/security/limits.d/90-treadle.conf")
    assert "@users" not in storage and "1048576" in storage
    assert "@users" in batch and "memlock" in batch and "4096" in batch


def test_lifecycle_profiles_follow_the_node_state(manifests):
    assert _resources(manifests["batch-004"], "service")["slurmd"]["state"] == "stopped"
    assert "draining" in _file(manifests["batch-004"], "/etc/motd")
    assert _resources(manifests["batch-005"], "service")["slurmd"]["enabled"] is False
    assert "/etc/nologin" in _resources(manifests["batch-005"], "file")
    assert _resources(manifests["batch-001"], "service")["slurmd"]["state"] == "running"
    assert "/etc/nologin" not in _resources(manifests["batch-001"], "file")


def test_canary_profile_labels_one_node_per_cluster(manifests):
    canaries = sorted(
        n for n, m in manifests.items() if m["metadata"]["labels"].get("canary") == "true"
    )
    assert canaries == ["batch-001", "login-001", "storage-001"]


def test_site_changes_one_field_of_an_inherited_symlink(manifests):
    assert _resources(manifests["storage-001"], "symlink")["/etc/localtime"]["target"].endswith(
        "Europe/Budapest"
    )
    assert _resources(manifests["batch-001"], "symlink")["/etc/localtime"]["target"].endswith(
        "Europe/Zurich"
    )


def test_render_benchmark_reports_a_small_fabric_beside_the_targets(tmp_path, gen_fabric):
    fabric = gen_fabric.generate(tmp_path / "f", 1, 2, 5, seed=1)
    bench = BENCH / "render.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--fabric", str(fabric.root)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("f "))
    assert row.split()[1] == "10"
    assert "ansible-inventory" in done.stdout


def test_each_site_gets_the_names_and_paths_of_its_os_family(manifests):
    debian, rhel = manifests["login-001"], manifests["storage-001"]
    assert {"chrony", "ssh", "smartmontools"} <= set(_resources(debian, "service"))
    assert not {"chronyd", "sshd", "smartd"} & set(_resources(debian, "service"))
    assert {"chronyd", "sshd", "smartd"} <= set(_resources(rhel, "service"))
    assert _resources(debian, "file")["/etc/chrony/chrony.conf"]["notify"] == ["chrony"]
    assert "/etc/chrony.conf" not in _resources(debian, "file")
    assert _resources(debian, "file")["/etc/ssh/sshd_config.d/50-treadle.conf"]["notify"] == ["ssh"]
    assert _resources(rhel, "file")["/etc/ssh/sshd_config.d/50-treadle.conf"]["notify"] == ["sshd"]
    assert (debian["metadata"]["labels"]["os_family"], rhel["metadata"]["labels"]["os_family"]) == (
        "debian",
        "rhel",
    )
