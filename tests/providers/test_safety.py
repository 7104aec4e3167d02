"""Path escapes refused with real symlinks; failures isolated; dependents skipped."""

from __future__ import annotations

import os

import pytest

from support.providers import directory, file, manifest, package, service, snapshot, symlink
from treadle_agent.errors import PathEscapeError
from treadle_agent.providers.paths import RootFS, split_path


def by_id(report) -> dict[str, tuple[str, str]]:
    return {r.id: (r.status, r.message) for r in report.results}


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    (d / "passwd").write_text("original\n")
    return d


def test_parent_symlink_pointing_outside_the_root_is_refused_and_nothing_is_written_outside(
    env, outside
):
    (env.root / "etc").symlink_to(outside)
    before = snapshot(outside)
    report = env.applier().apply(
        manifest(
            file("/etc/passwd", "pwned\n"),
            file("/etc/new.conf", "x\n"),
            directory("/etc/sub"),
            symlink("/etc/l", "x"),
            file("/ok.conf", "fine\n"),
        )
    )
    results = by_id(report)
    for rid in ("file:/etc/passwd", "file:/etc/new.conf", "directory:/etc/sub", "symlink:/etc/l"):
        assert results[rid][0] == "failed", rid
        assert "leads outside the managed root" in results[rid][1]
    assert results["file:/ok.conf"] == ("changed", "missing")
    assert snapshot(outside) == before


def test_relative_symlink_climbing_out_of_the_root_is_refused(env, outside):
    (env.root / "etc").mkdir()
    (env.root / "etc/conf").symlink_to("../../outside")
    report = env.applier().apply(manifest(file("/etc/conf/passwd", "pwned\n")))
    assert (
        report.results[0].status == "failed"
        and "outside the managed root" in report.results[0].message
    )
    assert (outside / "passwd").read_text() == "original\n"


def test_parent_symlink_inside_the_root_is_followed_within_the_root(env):
    (env.root / "run").mkdir()
    (env.root / "var").mkdir()
    (env.root / "var/run").symlink_to(env.root / "run")  # absolute, but inside the root
    (env.root / "etc").symlink_to("var/../run")
    report = env.applier().apply(manifest(file("/var/run/a.pid", "1\n"), file("/etc/b", "2\n")))
    assert report.ok
    assert (env.root / "run/a.pid").read_text() == "1\n" and (
        env.root / "run/b"
    ).read_text() == "2\n"


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("/etc/../../outside/passwd", "'..' component"),
        ("etc/passwd", "is relative"),
        ("/etc/./x", "'.' component"),
        ("/etc//x", "'empty' component"),
        ("/etc/x\0y", "NUL"),
        ("/", "the managed root itself"),
    ],
)
def test_unsafe_resource_paths_fail_with_a_path_escape_error(env, path, fragment):
    with pytest.raises(PathEscapeError, match=fragment if fragment != "NUL" else "NUL byte"):
        split_path(path)
    report = env.applier().apply(manifest(file(path, "x\n"), file("/ok", "ok\n"), validate=False))
    results = by_id(report)
    assert (
        results[f"file:{path}"][0] == "failed" and fragment.strip("'") in results[f"file:{path}"][1]
    )
    assert results["file:/ok"][0] == "changed"
    assert sorted(os.listdir(env.root)) == ["ok"]


def test_rootfs_never_opens_a_symlinked_final_component(env, outside):
    (env.root / "secret").symlink_to(outside / "passwd")
    with RootFS(env.root) as fs:
        assert fs.lstat("/secret") is not None
        with pytest.raises(Exception, match="secret"):
            fs.read("/secret")


def test_failing_resource_does_not_stop_unrelated_ones_and_dependents_are_skipped(env):
    (env.root / "etc").mkdir()
    (env.root / "etc/app").write_text("a file where a directory should be\n")
    m = manifest(
        directory("/etc/app"),
        file("/etc/app/a.conf", "a\n"),
        file("/etc/app/sub/b.conf", "b\n"),
        file("/etc/other.conf", "x\n"),
        package("chrony", requires=["file:/etc/app/a.conf"]),
        service("chronyd", state="running", requires=["package:chrony"]),
        package("curl"),
    )
    results = by_id(env.applier().apply(m))
    assert results["directory:/etc/app"][0] == "failed"
    assert "is a regular file" in results["directory:/etc/app"][1]
    assert results["file:/etc/app/a.conf"] == (
        "skipped",
        "its parent directory directory:/etc/app failed",
    )
    assert results["file:/etc/app/sub/b.conf"] == (
        "skipped",
        "its parent directory directory:/etc/app failed",
    )
    assert results["package:chrony"] == ("skipped", "requires file:/etc/app/a.conf, which skipped")
    assert results["service:chronyd"] == ("skipped", "requires package:chrony, which skipped")
    assert results["file:/etc/other.conf"][0] == "changed"
    assert results["package:curl"][0] == "changed"
    assert (
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "chrony",
    ) not in env.host.commands


def test_requires_pointing_at_a_later_resource_type_orders_the_apply(env):
    m = manifest(
        file("/etc/chrony.conf", "server x\n", requires=["package:chrony"]), package("chrony")
    )
    report = env.applier().apply(m)
    assert report.ok
    installs = [c for c in env.host.commands if c[0] == "apt-get"]
    assert installs and (env.root / "etc/chrony.conf").exists()


def test_unknown_requirement_and_cycles_fail_those_resources_only(env):
    m = manifest(
        file("/a", "a\n", requires=["package:nope"]),
        file("/b", "b\n", requires=["file:/c"]),
        file("/c", "c\n", requires=["file:/b"]),
        file("/d", "d\n"),
    )
    results = by_id(env.applier().apply(m))
    assert results["file:/a"] == ("failed", "requires package:nope, which is not in the manifest")
    assert results["file:/b"][0] == results["file:/c"][0] == "failed"
    assert "dependency cycle" in results["file:/b"][1]
    assert results["file:/d"][0] == "changed"


def test_a_resource_failing_every_run_does_not_rewrite_the_inventory(env):
    m = manifest(
        file("/etc/a.conf", "a\n", owner="no-such-user-treadle"), file("/etc/b.conf", "b\n")
    )
    applier = env.applier()
    applier.apply(m)
    inventory = env.state / "inventory.json"
    before = inventory.stat().st_mtime_ns
    report = applier.apply(m)
    assert [r.status for r in report.results] == ["failed", "in_sync"]
    assert inventory.stat().st_mtime_ns == before


def test_unknown_drift_policy_is_a_config_error_naming_the_choices(env):
    from treadle_agent.errors import ConfigError

    with pytest.raises(ConfigError, match='use "heal" or "report"'):
        env.applier("fix")


def test_missing_managed_root_is_a_host_error_and_nothing_is_recorded(env):
    from treadle_agent.apply import Applier
    from treadle_agent.errors import HostError

    applier = Applier(env.root / "missing", env.state, env.host, "heal")
    with pytest.raises(HostError, match="managed root .*missing: cannot open"):
        applier.apply(manifest(file("/a", "a\n")))
    assert not (env.state / "inventory.json").exists()
