"""Packages and services: real dpkg-query here, exact command lines against the simulated host."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from support.providers import file, make_env, manifest, package, service
from treadle_agent.errors import HostError
from treadle_agent.host import AptPackages, NoPackages, NoServices, ProcessRunner, SystemHost
from treadle_agent.host_sim import Unit

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
#: No question ever (keep a changed conffile, take the default otherwise), wait for the dpkg lock.
APT_OPTS = (
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    "-o",
    "DPkg::Lock::Timeout=300",
)


@pytest.mark.skipif(not shutil.which("dpkg-query"), reason="needs a Debian host")
def test_real_dpkg_query_reports_dpkg_installed_and_a_made_up_package_absent():
    states = AptPackages(ProcessRunner()).query(["dpkg", "treadle-no-such-package"])
    assert (
        states["dpkg"].installed and states["dpkg"].version and states["dpkg"].version[0].isdigit()
    )
    assert not states["treadle-no-such-package"].installed


def test_system_host_from_config_picks_the_configured_parts(tmp_path):
    config = SimpleNamespace(
        package_manager="none",
        service_manager="none",
        proc_sys=str(tmp_path),
        sysctl_dir="/etc/sysctl.d",
    )
    host = SystemHost.from_config(config)
    assert isinstance(host.packages, NoPackages) and isinstance(host.services, NoServices)
    assert host.sysctl.proc_sys == tmp_path
    apt = SystemHost.from_config(
        SimpleNamespace(
            package_manager="apt",
            service_manager="systemd",
            proc_sys="/proc/sys",
            sysctl_dir="/etc/sysctl.d",
        )
    )
    assert apt.packages.name == "apt" and apt.services.name == "systemd"


def test_apt_install_and_remove_use_the_exact_command_lines(env):
    env.host.sim.installed["nginx"] = "1.22.1-9"
    report = env.applier().apply(
        manifest(
            package("chrony", version="4.3-2"), package("curl"), package("nginx", ensure="absent")
        )
    )
    assert report.ok, report
    assert env.host.changes() == [
        ("apt-get", "install", "-y", "--no-install-recommends", *APT_OPTS, "chrony=4.3-2"),
        ("apt-get", "install", "-y", "--no-install-recommends", *APT_OPTS, "curl"),
        ("apt-get", "remove", "-y", *APT_OPTS, "nginx"),
    ]
    assert env.host.commands[0] == (
        "dpkg-query",
        "-W",
        "-f=${Package} ${Status} ${Version}\n",
        "chrony",
        "curl",
        "nginx",
    )
    assert [
        e for c, e in zip(env.host.commands, env.host.sim.envs, strict=False) if c[0] == "apt-get"
    ] == [APT_ENV] * 3


def test_dnf_install_and_remove_use_the_exact_command_lines(tmp_path):
    env = make_env(tmp_path, package_manager="dnf", installed={"nginx": "1.20.1-14.el9"})
    report = env.applier().apply(
        manifest(package("chrony", version="4.3"), package("nginx", ensure="absent"))
    )
    assert report.ok, report
    assert env.host.commands[0] == (
        "rpm",
        "-q",
        "--qf",
        "%{NAME} %{VERSION}-%{RELEASE}\n",
        "chrony",
        "nginx",
    )
    assert env.host.changes() == [
        ("dnf", "install", "-y", "chrony-4.3"),
        ("dnf", "remove", "-y", "nginx"),
    ]


def test_installed_packages_in_sync_run_one_query_and_nothing_else(env):
    m = manifest(package("chrony"), package("curl"))
    applier = env.applier()
    applier.apply(m)
    del env.host.commands[:]
    assert {r.status for r in applier.apply(m).results} == {"in_sync"}
    assert env.host.commands == [
        ("dpkg-query", "-W", "-f=${Package} ${Status} ${Version}\n", "chrony", "curl")
    ]


def test_wrong_version_is_a_change_and_uninstallable_package_fails_with_apt_output(env):
    env.host.sim.installed["chrony"] = "4.0-1"
    report = env.applier().apply(
        manifest(package("chrony", version="4.3-2"), package("no-such-pkg"))
    )
    results = {r.id: r for r in report.results}
    assert results["package:chrony"].message == "version 4.0-1 installed, want 4.3-2"
    assert results["package:no-such-pkg"].status == "failed"
    assert "Unable to locate package no-such-pkg" in results["package:no-such-pkg"].message


def test_dropped_package_is_removed_only_if_the_agent_installed_it(env):
    env.host.sim.installed["curl"] = "7.88.1-10"
    applier = env.applier()
    applier.apply(manifest(package("chrony"), package("curl")))
    report = applier.apply(manifest())
    assert ("apt-get", "remove", "-y", *APT_OPTS, "chrony") in env.host.commands
    assert not any(c[0] == "apt-get" and c[-1] == "curl" for c in env.host.commands)
    assert env.host.sim.installed == {"curl": "7.88.1-10"}
    assert {r.id: r.message.split(" ")[0].rstrip(":") for r in report.removed} == {
        "package:chrony": "removed",
        "package:curl": "forgotten",
    }


def test_package_names_that_look_like_options_are_refused(env):
    report = env.applier().apply(manifest(package("-oAPT::Get::Foo=1")))
    assert (
        report.results[0].status == "failed" and "invalid package name" in report.results[0].message
    )
    assert not any(c[0] == "apt-get" for c in env.host.commands)


def test_no_package_manager_fails_package_resources_with_the_reason(tmp_path):
    env = make_env(tmp_path, package_manager="none")
    report = env.applier().apply(manifest(package("chrony"), file("/etc/x", "x\n")))
    results = {r.id: r for r in report.results}
    assert (
        results["package:chrony"].status == "failed"
        and "no package manager" in results["package:chrony"].message
    )
    assert results["file:/etc/x"].status == "changed"


def test_service_enable_and_start_use_the_exact_command_lines(env):
    env.host.sim.units["chronyd"] = Unit(enabled=True, active=True)
    m = manifest(
        service("nginx", enabled=True, state="running"),
        service("chronyd", enabled=False, state="stopped"),
    )
    applier = env.applier()
    assert applier.apply(m).ok
    assert env.host.changes() == [
        ("systemctl", "disable", "chronyd"),
        ("systemctl", "stop", "chronyd"),
        ("systemctl", "enable", "nginx"),
        ("systemctl", "start", "nginx"),
    ]
    del env.host.commands[:]
    assert {r.status for r in applier.apply(m).results} == {"in_sync"}
    assert env.host.changes() == []


def test_stopped_service_is_healed_or_reported(env):
    m = manifest(service("nginx", state="running"))
    env.applier().apply(m)
    env.host.sim.units["nginx"].active = False
    report = env.applier("report").apply(m)
    assert (report.results[0].status, report.results[0].message) == (
        "drifted",
        "stopped, want running",
    )
    assert env.applier().apply(m).results[0].status == "healed"
    assert env.host.sim.units["nginx"].active


def test_changed_notified_file_restarts_the_service_once_and_a_no_op_run_does_not(env):
    applier = env.applier()
    m1 = manifest(
        file("/etc/chrony.conf", "v1\n", notify=["chronyd"]),
        file("/etc/chrony.keys", "k1\n", notify=["chronyd"]),
        service("chronyd", state="running"),
    )
    assert applier.apply(m1).restarted == ("chronyd",)
    del env.host.commands[:]
    assert applier.apply(m1).restarted == ()
    assert ("systemctl", "restart", "chronyd") not in env.host.commands
    m2 = manifest(
        file("/etc/chrony.conf", "v2\n", notify=["chronyd"]),
        file("/etc/chrony.keys", "k2\n", notify=["chronyd"]),
        service("chronyd", state="running"),
    )
    assert applier.apply(m2).restarted == ("chronyd",)
    assert env.host.commands.count(("systemctl", "restart", "chronyd")) == 1


def test_healed_notified_file_restarts_but_reported_drift_does_not(env):
    m = manifest(file("/etc/chrony.conf", "v1\n", notify=["chronyd"]))
    env.applier().apply(m)
    (env.root / "etc/chrony.conf").write_text("hand edit\n")
    assert env.applier("report").apply(m).restarted == ()
    assert env.applier().apply(m).restarted == ("chronyd",)


def test_no_restart_for_a_service_meant_to_be_stopped_or_just_started(env):
    m = manifest(
        file("/etc/a", "a\n", notify=["chronyd", "nginx"]),
        service("chronyd", state="stopped"),
        service("nginx", state="running"),
    )
    report = env.applier().apply(m)
    assert report.restarted == ()
    assert ("systemctl", "start", "nginx") in env.host.commands


def test_failed_restart_fails_the_service_and_is_retried_next_run(env):
    env.host.sim.units["chronyd"].broken = True
    applier = env.applier()
    report = applier.apply(manifest(file("/etc/chrony.conf", "v1\n", notify=["chronyd"])))
    assert not report.ok
    assert (
        report.results[-1].id == "service:chronyd"
        and "retried next run" in report.results[-1].message
    )
    env.host.sim.units["chronyd"].broken = False
    report = env.applier().apply(manifest(file("/etc/chrony.conf", "v1\n", notify=["chronyd"])))
    assert report.ok and report.restarted == ("chronyd",)


def test_unknown_service_name_with_leading_dash_is_refused():
    from treadle_agent.host import Systemd
    from treadle_agent.host_sim import SimulatedRunner

    with pytest.raises(HostError, match="invalid service name"):
        Systemd(SimulatedRunner()).restart("--now")
