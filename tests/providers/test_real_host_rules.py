"""What a real host needs from the package and service providers, on the exact command lines.

The same behaviours run against a real booted Debian node in tests/realnode/;
these pin the command lines and the edge cases cheaply.
"""

from __future__ import annotations

import os
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from support.providers import directory, file, make_env, manifest, package, service
from treadle_agent.errors import HostError
from treadle_agent.host import AptPackages, CommandResult, apt_failure
from treadle_agent.host_sim import SimulatedRunner, Unit

UPDATE = ("apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300")


def _apt(
    tmp_path, runner: SimulatedRunner, age_s: float | None, max_age_s: float = 3600
) -> AptPackages:
    lists = tmp_path / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    if age_s is not None:
        f = lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
        f.write_text("")
        os.utime(f, (time.time() - age_s, time.time() - age_s))
    return AptPackages(runner, lists_dir=lists, lists_max_age_s=max_age_s)


def test_no_package_lists_are_refreshed_before_an_install(tmp_path):
    runner = SimulatedRunner(upstream={"cron": "3.0pl1-162"})
    _apt(tmp_path, runner, None).install("cron", None)
    assert [c[:2] for c in runner.commands] == [("apt-get", "update"), ("apt-get", "install")]
    assert runner.commands[0] == UPDATE and runner.installed == {"cron": "3.0pl1-162"}


def test_lists_older_than_the_configured_age_are_refreshed_and_fresh_ones_are_not(tmp_path):
    runner = SimulatedRunner(available={"cron": "1"})
    _apt(tmp_path, runner, 7200, max_age_s=3600).install("cron", None)
    assert runner.commands[0] == UPDATE
    fresh = SimulatedRunner(available={"cron": "1"})
    _apt(tmp_path / "fresh", fresh, 60, max_age_s=3600).install("cron", None)
    assert [c[1] for c in fresh.commands] == ["install"]


def test_an_unknown_package_refreshes_the_lists_once_and_retries(tmp_path):
    runner = SimulatedRunner(upstream={"hello": "2.10-3"})
    _apt(tmp_path, runner, 60).install("hello", None)
    assert [c[1] for c in runner.commands] == ["install", "update", "install"]
    assert runner.installed == {"hello": "2.10-3"}
    # Still unknown after a refresh: one failure, and no second refresh right away.
    apt = _apt(tmp_path, SimulatedRunner(), 60)
    for _ in range(2):
        try:
            apt.install("no-such-package", None)
        except HostError as e:
            assert "Unable to locate package no-such-package" in str(e)
    assert [c[1] for c in apt.runner.commands] == ["install", "update", "install", "install"]


def test_the_failure_message_carries_dpkg_s_reason_not_only_apt_s_last_line():
    stdout = (
        "Selecting previously unselected package hello.\nUnpacking hello (2.10-3) ...\n"
        "dpkg: error processing archive /var/cache/apt/archives/hello_2.10-3_amd64.deb (--unpack):\n"
        " unable to install new version of '/usr/bin/hello': Is a directory\n"
        "Errors were encountered while processing:\n /var/cache/apt/archives/hello_2.10-3_amd64.deb\n"
    )
    stderr = "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
    message = str(
        apt_failure(
            CommandResult(("apt-get", "install", "hello"), 100, stdout, stderr), "installing hello"
        )
    )
    assert "unable to install new version of '/usr/bin/hello': Is a directory" in message
    assert "E: Sub-process /usr/bin/dpkg returned an error code (1)" in message
    assert "Unpacking" not in message and message.startswith(
        "installing hello: `apt-get install hello` exited 100"
    )


def test_the_failure_message_finds_dpkg_s_error_after_a_conffile_prompt():
    stdout = (
        "Setting up logrotate (3.21.0-1) ...\n\nConfiguration file '/etc/logrotate.conf'\n"
        "*** logrotate.conf (Y/I/N/O/D/Z) [default=N] ? dpkg: error processing package logrotate (--configure):\n"
        " end of file on stdin at conffile prompt\nProcessing triggers for libc-bin (2.36-9) ...\n"
    )
    message = str(
        apt_failure(
            CommandResult(("apt-get", "install", "logrotate"), 100, stdout, "E: Sub-process\n"), "x"
        )
    )
    assert (
        "dpkg: error processing package logrotate (--configure):\n end of file on stdin at conffile prompt"
        in message
    )
    assert "***" not in message and "Processing triggers" not in message


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=3000), st.text(max_size=3000), st.integers(1, 255))
def test_the_failure_message_of_any_output_is_a_bounded_host_error(stdout, stderr, code):
    e = apt_failure(
        CommandResult(("apt-get", "install", "x"), code, stdout, stderr), "installing x"
    )
    assert isinstance(e, HostError) and str(e).startswith(
        "installing x: `apt-get install x` exited"
    )
    assert len(str(e)) < 2200


def test_a_changed_unit_file_is_reloaded_before_the_restart_it_notifies(tmp_path):
    env = make_env(tmp_path, units={"probe": Unit(enabled=True, active=True)})
    m = manifest(
        file("/etc/systemd/system/probe.service", "v1\n", notify=["probe"]),
        service("probe", state="running"),
    )
    env.applier().apply(m)
    env.host.sim.units[
        "probe"
    ].need_reload = True  # what systemd says once the file changed on disk
    del env.host.commands[:]
    env.applier().apply(
        manifest(
            file("/etc/systemd/system/probe.service", "v2\n", notify=["probe"]),
            service("probe", state="running"),
        )
    )
    assert env.host.changes() == [("systemctl", "daemon-reload"), ("systemctl", "restart", "probe")]
    assert not env.host.sim.units["probe"].need_reload


def test_a_new_or_removed_drop_in_reloads_systemd_even_when_it_does_not_say_so(tmp_path):
    # systemd's NeedDaemonReload misses a drop-in directory it has not seen (its path cache is stale).
    env = make_env(tmp_path, units={"probe": Unit(enabled=True, active=True)})
    dropin = file("/etc/systemd/system/probe.service.d/10-x.conf", "[Service]\n", notify=["probe"])
    applier = env.applier()
    applier.apply(
        manifest(
            directory("/etc/systemd/system/probe.service.d"),
            dropin,
            service("probe", state="running"),
        )
    )
    assert env.host.changes() == [("systemctl", "daemon-reload"), ("systemctl", "restart", "probe")]
    del env.host.commands[:]
    applier.apply(manifest(service("probe", state="running")))
    assert env.host.changes() == [("systemctl", "daemon-reload")]
    del env.host.commands[:]
    applier.apply(manifest(service("probe", state="running")))
    assert env.host.changes() == []


def test_a_start_without_effect_fails_with_systemd_s_reason_and_is_not_healed(tmp_path):
    env = make_env(tmp_path, units={"cond": Unit(condition_fails=True)})
    report = env.applier().apply(manifest(service("cond", state="running")))
    assert report.results[0].status == "failed"
    assert (
        "start cond had no effect" in report.results[0].message
        and "Condition" in report.results[0].message
    )


def test_static_masked_and_alias_units_are_handled_explicitly(tmp_path):
    env = make_env(
        tmp_path,
        units={
            "static": Unit(file_state="static", active=True),
            "masked": Unit(file_state="masked"),
            "sshd": Unit(file_state="alias", alias_of="ssh.service", enabled=True, active=True),
        },
    )
    m = manifest(
        service("static", enabled=True, state="running"),
        service("masked", enabled=True),
        service("sshd", enabled=True),
    )
    applier = env.applier()
    results = {r.id: r for r in applier.apply(m).results}
    assert results["service:static"].status == "in_sync"
    assert (
        results["service:masked"].status == "failed"
        and "does not unmask" in results["service:masked"].message
    )
    assert (
        results["service:sshd"].status == "failed"
        and "alias of ssh.service" in results["service:sshd"].message
    )
    assert not any(c[1] in ("enable", "disable") for c in env.host.changes())
    assert applier.apply(
        manifest(service("static", enabled=True), service("masked", enabled=False))
    ).ok
    report = applier.apply(manifest(service("static", enabled=False)))
    assert (
        report.results[0].status == "failed" and "cannot be disabled" in report.results[0].message
    )


def test_an_enable_that_leaves_the_unit_disabled_fails(tmp_path):
    # A unit whose [Install] section is empty: enable succeeds and enables nothing.
    env = make_env(tmp_path, units={"noinstall": Unit(file_state="disabled")})
    report = env.applier().apply(manifest(service("noinstall", enabled=True)))
    assert report.results[0].status == "failed" and "had no effect" in report.results[0].message


def test_check_predicts_a_start_not_a_restart_for_a_stopped_service_a_changed_file_notifies(
    tmp_path,
):
    env = make_env(tmp_path, units={"probe": Unit(enabled=True, active=True)})
    env.applier().apply(
        manifest(
            file("/etc/probe.conf", "v1\n", notify=["probe"]), service("probe", state="running")
        )
    )
    env.host.sim.units["probe"].active = False
    report = env.applier().check(
        manifest(
            file("/etc/probe.conf", "v2\n", notify=["probe"]), service("probe", state="running")
        )
    )
    assert [(r.id, r.status) for r in report.results] == [
        ("file:/etc/probe.conf", "would_change"),
        ("service:probe", "drifted"),
    ]
    done = env.applier().apply(
        manifest(
            file("/etc/probe.conf", "v2\n", notify=["probe"]), service("probe", state="running")
        )
    )
    assert done.restarted == () and ("systemctl", "start", "probe") in env.host.commands


def test_a_failed_install_stays_recorded_as_created_by_the_agent(tmp_path):
    env = make_env(tmp_path, available={})
    env.applier().apply(manifest(package("ghost")))
    assert env.applier().inventory.get("package:ghost") == {"want": None, "created": True}


def test_the_lists_age_is_an_agent_setting(tmp_path):
    import pytest

    from treadle_agent.config import from_dict
    from treadle_agent.errors import ConfigError
    from treadle_agent.host import SystemHost

    (tmp_path / "trust-root.json").write_text("{}")
    raw = {
        "node": "n1",
        "manifest_urls": ["http://127.0.0.1:1/m"],
        "trust_root": "trust-root.json",
        "state_dir": "state",
        "package_manager": "apt",
        "service_manager": "none",
    }
    config = from_dict({**raw, "package_lists_max_age_s": 600}, tmp_path / "agent.toml")
    assert SystemHost.from_config(config.host).packages.lists_max_age_s == 600
    assert (
        SystemHost.from_config(
            from_dict(raw, tmp_path / "agent.toml").host
        ).packages.lists_max_age_s
        == 86400
    )
    with pytest.raises(ConfigError, match="package_lists_max_age_s"):
        from_dict({**raw, "package_lists_max_age_s": 0}, tmp_path / "agent.toml")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
            max_size=60,
        ),
        max_size=8,
    )
)
def test_dpkg_query_output_of_any_shape_reads_as_states_of_the_names_asked_only(lines):
    class Canned:
        def run(self, argv, *, timeout_s, env=None):
            return CommandResult(tuple(argv), 1, "".join(line + "\n" for line in lines), "")

    states = AptPackages(Canned(), lists_dir=None).query(["cron", "hello"])
    assert set(states) == {"cron", "hello"}
    for name, state in states.items():
        assert not (state.installed and state.partial)
        assert state.installed == any(
            line.split(" ", 4)[:1] == [name] and line.split(" ", 4)[3:4] == ["installed"]
            for line in lines
        )


def test_a_failed_refresh_of_stale_lists_does_not_stop_an_install_the_lists_at_hand_allow(tmp_path):
    class MirrorDown(SimulatedRunner):
        def run(self, argv, *, timeout_s, env=None):
            if argv[:2] == ["apt-get", "update"]:
                self.commands.append(tuple(argv))
                return CommandResult(
                    tuple(argv), 100, "", "E: Failed to fetch http://deb.debian.org/...\n"
                )
            return super().run(argv, timeout_s=timeout_s, env=env)

    runner = MirrorDown(available={"cron": "1"})
    _apt(tmp_path, runner, 7200, max_age_s=3600).install("cron", None)
    assert runner.installed == {"cron": "1"} and [c[1] for c in runner.commands] == [
        "update",
        "install",
    ]
    apt = _apt(tmp_path / "b", MirrorDown(), 7200, max_age_s=3600)
    try:
        apt.install("hello", None)
        raise AssertionError("installed an unknown package")
    except HostError as e:
        assert "Unable to locate package hello" in str(e) and "Failed to fetch" in str(e)
