"""sysctl: runtime values under a /proc/sys look-alike, the persistent file below the root, and the real /proc/sys."""

from __future__ import annotations

import platform

import pytest

from support.providers import file, manifest, sysctl
from treadle_agent.errors import HostError
from treadle_agent.host import SystemHost
from treadle_agent.inventory import FILE_NAME

CONF = "etc/sysctl.d/99-treadle.conf"
HEADER = "# Written by treadle-agent from this node's manifest; local edits are reverted.\n"


def test_sysctl_sets_the_runtime_value_and_persists_all_keys_sorted(env):
    m = manifest(
        sysctl("vm.swappiness", "10"),
        sysctl("net.ipv4.ip_forward", "1"),
        sysctl("net.ipv4.ip_local_port_range", "1024   65000"),
    )
    report = env.applier().apply(m)
    assert report.ok and {r.status for r in report.results} == {"changed"}
    assert env.sysctl_value("vm.swappiness") == "10\n"
    assert env.sysctl_value("net.ipv4.ip_local_port_range") == "1024 65000\n"
    assert (env.root / CONF).read_text() == HEADER + (
        "net.ipv4.ip_forward = 1\nnet.ipv4.ip_local_port_range = 1024 65000\nvm.swappiness = 10\n"
    )


def test_sysctl_no_op_run_writes_nothing(env):
    m = manifest(sysctl("vm.swappiness", "10"))
    applier = env.applier()
    applier.apply(m)
    conf, inv = (env.root / CONF).stat(), (env.state / FILE_NAME).stat()
    assert {r.status for r in applier.apply(m).results} == {"in_sync"}
    assert (env.root / CONF).stat().st_mtime_ns == conf.st_mtime_ns
    assert (env.state / FILE_NAME).stat().st_mtime_ns == inv.st_mtime_ns


def test_multi_value_kernel_output_with_tabs_is_in_sync(env):
    report = env.applier().apply(manifest(sysctl("net.ipv4.ip_local_port_range", "32768 60999")))
    assert report.results[0].message == "not persisted in /etc/sysctl.d/99-treadle.conf"
    assert env.sysctl_value("net.ipv4.ip_local_port_range") == "32768\t60999\n"  # runtime untouched


def test_changed_sysctl_is_detected_and_healed(env):
    m = manifest(sysctl("vm.swappiness", "10"))
    applier = env.applier()
    applier.apply(m)
    env.set_sysctl("vm.swappiness", "60")
    report = applier.apply(m)
    assert (report.results[0].status, report.results[0].message) == (
        "healed",
        "runtime value is '60', want '10'",
    )
    assert env.sysctl_value("vm.swappiness") == "10\n"
    assert report.counts()[("sysctl", "in_sync")] == 1


def test_changed_sysctl_is_only_reported_under_report_policy(env):
    m = manifest(sysctl("vm.swappiness", "10"), sysctl("net.ipv4.ip_forward", "1"))
    env.applier().apply(m)
    env.set_sysctl("vm.swappiness", "60")
    conf = (env.root / CONF).read_bytes()
    report = env.applier("report").apply(m)
    assert {r.id: r.status for r in report.results} == {
        "sysctl:vm.swappiness": "drifted",
        "sysctl:net.ipv4.ip_forward": "in_sync",
    }
    assert report.counts()[("sysctl", "drifted")] == 1
    assert env.sysctl_value("vm.swappiness") == "60\n"
    assert (env.root / CONF).read_bytes() == conf


def test_hand_edited_persistent_file_is_drift_healed_or_reported(env):
    m = manifest(sysctl("vm.swappiness", "10"))
    env.applier().apply(m)
    (env.root / CONF).write_text("vm.swappiness = 99\n")
    report = env.applier("report").apply(m)
    assert report.results[0].status == "drifted"
    assert report.results[0].message == "/etc/sysctl.d/99-treadle.conf has '99', want '10'"
    assert (env.root / CONF).read_text() == "vm.swappiness = 99\n"
    assert env.applier().apply(m).results[0].status == "healed"
    assert (env.root / CONF).read_text() == HEADER + "vm.swappiness = 10\n"


def test_dropped_keys_leave_the_file_and_the_file_goes_with_the_last_key(env):
    applier = env.applier()
    applier.apply(manifest(sysctl("vm.swappiness", "10"), sysctl("net.ipv4.ip_forward", "1")))
    applier.apply(manifest(sysctl("net.ipv4.ip_forward", "1")))
    assert (env.root / CONF).read_text() == HEADER + "net.ipv4.ip_forward = 1\n"
    assert env.sysctl_value("vm.swappiness") == "10\n"  # the runtime value stays
    applier.apply(manifest(file("/etc/x", "x\n")))
    assert not (env.root / CONF).exists()


def test_unknown_sysctl_key_fails_and_is_not_persisted(env):
    report = env.applier().apply(
        manifest(sysctl("net.ipv4.no_such_key", "1"), sysctl("vm.swappiness", "10"))
    )
    results = {r.id: r for r in report.results}
    assert results["sysctl:net.ipv4.no_such_key"].status == "failed"
    assert (
        "unknown sysctl key net.ipv4.no_such_key" in results["sysctl:net.ipv4.no_such_key"].message
    )
    assert (env.root / CONF).read_text() == HEADER + "vm.swappiness = 10\n"


@pytest.mark.parametrize("key", ["../../etc/passwd", "net..ipv4", "", "net.ipv4/../../x"])
def test_malformed_sysctl_keys_are_refused(env, key):
    with pytest.raises(HostError, match="invalid sysctl key"):
        env.host.sysctl.path(key)


def test_real_proc_sys_is_read_through_the_system_host():
    host = SystemHost(package_manager="none", service_manager="none")
    assert host.sysctl.read("kernel.ostype") == platform.system()
    assert host.sysctl.read("kernel.no_such_key_treadle") is None
