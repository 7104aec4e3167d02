"""A fresh real node converges, stays in sync, heals drift and follows the controller; packages for real.

One node for the whole module, in scenario order: the first convergence (from
a tree with no package lists at all), a no-op run, drift healed, a new
generation from a commit, then the package defects a real dpkg shows: a
conffile written before its package, dpkg's reason in a failure, and a failed
install pruned when the manifest drops it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.nodefleet import RealNode, boot_real_node

HEAD = "apiVersion: treadle.dev/v1\nkind: Profile\n"


def base(content: str = "v1", extra: str = "") -> str:
    """cron installed, a file in /etc/cron.d that notifies it, cron enabled and running, a net.* sysctl."""
    return (
        HEAD
        + "packages:\n  cron: {ensure: present}\n"
        + "files:\n  /etc/cron.d/treadle-probe:\n"
        + f'    content: "# {content}\\n"\n    mode: "0644"\n    notify: [cron]\n    requires: ["package:cron"]\n'
        + 'services:\n  cron: {enabled: true, state: running, requires: ["package:cron"]}\n'
        + "sysctl:\n  net.ipv4.ip_forward: 1\n"
        + extra
    )


@pytest.fixture(scope="module")
def rn(
    tmp_path_factory: pytest.TempPathFactory, realnode_cache: tuple[Path, Path], realnode_keys: Path
) -> Iterator[RealNode]:
    yield from boot_real_node(tmp_path_factory, realnode_cache, realnode_keys, base())


def test_a_fresh_node_converges_from_no_package_lists(rn: RealNode) -> None:
    host_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    # As in container images and minimal installs: no package lists at all.
    rn.sh("rm -rf /var/lib/apt/lists/* && apt-cache policy cron | grep -q 'Candidate: (none)'")
    out = rn.once()
    assert out.returncode == 0, out.output
    assert out.status("package:cron") == "changed"
    assert rn.dpkg_status("cron") == "install ok installed"
    assert rn.active("cron") == "active" and rn.enabled("cron") == "enabled"
    assert rn.node.path("/etc/cron.d/treadle-probe").read_text() == "# v1\n"
    assert rn.sh("cat /proc/sys/net/ipv4/ip_forward") == "1"
    assert "net.ipv4.ip_forward = 1" in rn.sh("grep -rh ip_forward /etc/sysctl.d/")
    # The node's network namespace is its own: the host's value did not move.
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host_forward


def test_a_second_run_changes_nothing(rn: RealNode) -> None:
    out = rn.once()
    assert out.returncode == 0 and out.resources == {} and out.done["restarted"] == [], out.output
    rc, report = rn.check()
    assert rc == 0 and report["in_sync"], report


def test_drift_is_healed(rn: RealNode) -> None:
    rn.sh(
        "echo edited > /etc/cron.d/treadle-probe && systemctl disable --now cron"
        " && DEBIAN_FRONTEND=noninteractive apt-get remove -y -q cron >/dev/null 2>&1"
    )
    assert rn.dpkg_status("cron") != "install ok installed"
    rc, report = rn.check()
    assert rc == 1 and not report["in_sync"]
    out = rn.once()
    assert out.returncode == 0, out.output
    assert {
        out.status(r) for r in ("package:cron", "file:/etc/cron.d/treadle-probe", "service:cron")
    } == {"healed"}
    assert rn.dpkg_status("cron") == "install ok installed"
    assert rn.active("cron") == "active" and rn.enabled("cron") == "enabled"
    assert rn.node.path("/etc/cron.d/treadle-probe").read_text() == "# v1\n"


def test_a_commit_on_the_controller_reaches_the_node_and_restarts_the_notified_service(
    rn: RealNode,
) -> None:
    before = rn.sh("systemctl show -p MainPID --value cron")
    generation = rn.publish(base("v2"))
    out = rn.once()
    assert out.returncode == 0, out.output
    assert out.done["generation"] == generation and out.done["restarted"] == ["cron"]
    assert rn.node.path("/etc/cron.d/treadle-probe").read_text() == "# v2\n"
    assert (
        rn.active("cron") == "active" and rn.sh("systemctl show -p MainPID --value cron") != before
    )


def test_a_package_installed_after_its_conffile_was_written_keeps_the_file_and_dpkg_stays_usable(
    rn: RealNode,
) -> None:
    # Files are applied before packages: /etc/logrotate.conf exists (differing from the package's) when dpkg
    # unpacks logrotate, which is dpkg's conffile prompt unless the agent says how to answer it.
    rn.publish(
        base("v2")
        .replace(
            "files:\n",
            'files:\n  /etc/logrotate.conf: {content: "# managed by treadle\\n", mode: "0644"}\n',
        )
        .replace("packages:\n", "packages:\n  logrotate: {ensure: present}\n")
    )
    out = rn.once()
    assert out.returncode == 0, out.output
    assert rn.dpkg_status("logrotate") == "install ok installed"
    assert rn.node.path("/etc/logrotate.conf").read_text() == "# managed by treadle\n"
    assert rn.sh("dpkg --audit") == ""
    assert rn.once().resources == {}


def test_a_failed_install_carries_dpkg_s_reason_and_leaves_dpkg_usable(rn: RealNode) -> None:
    # Another package already owns a file the package ships: dpkg refuses to unpack it and says why in its
    # own words (apt only says that dpkg returned an error).
    rn.sh(
        "mkdir -p /tmp/obstacle/DEBIAN /tmp/obstacle/usr/bin && touch /tmp/obstacle/usr/bin/hello"
        " && printf 'Package: treadle-obstacle\\nVersion: 1\\nArchitecture: all\\nMaintainer: t <t@example.org>\\n"
        "Description: owns /usr/bin/hello\\n' > /tmp/obstacle/DEBIAN/control"
        " && dpkg-deb -b /tmp/obstacle /tmp/obstacle.deb >/dev/null && dpkg -i /tmp/obstacle.deb >/dev/null"
    )
    try:
        rn.publish(base("v2").replace("packages:\n", "packages:\n  hello: {ensure: present}\n"))
        out = rn.once()
        assert out.returncode == 1 and out.status("package:hello") == "failed", out.output
        message = out.message("package:hello")
        assert (
            "trying to overwrite '/usr/bin/hello', which is also in package treadle-obstacle"
            in message
        ), message
        assert rn.sh("dpkg --audit") == ""
    finally:
        rn.sh("dpkg -r treadle-obstacle >/dev/null")


def test_a_failed_install_is_still_pruned_when_the_manifest_drops_it(rn: RealNode) -> None:
    # apt installs the package, then a post-invoke hook fails: apt-get exits 100 with the package on the node.
    rn.sh("echo 'DPkg::Post-Invoke { \"/bin/false\"; };' > /etc/apt/apt.conf.d/99treadle-test-fail")
    try:
        rn.publish(base("v2").replace("packages:\n", "packages:\n  tree: {ensure: present}\n"))
        out = rn.once()
        assert out.returncode == 1 and out.status("package:tree") == "failed", out.output
        assert rn.dpkg_status("tree") == "install ok installed"
    finally:
        rn.sh("rm -f /etc/apt/apt.conf.d/99treadle-test-fail")
    rn.publish(base("v2"))
    out = rn.once()
    assert out.returncode == 0, out.output
    assert rn.dpkg_status("tree") in (
        "",
        "deinstall ok config-files",
        "unknown ok not-installed",
    ), out.output
