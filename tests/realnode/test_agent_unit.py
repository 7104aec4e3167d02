"""The agent as nodes run it: systemd/treadle-agent.service under the node's systemd, hardening and all.

It converges the node on its own, serves /metrics to the host (where the
controller's health scrape reads it), and `systemctl stop` during a package
install lets the install finish: dpkg is left consistent.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from support.nodefleet import METRICS_PORT, RealNode, boot_real_node
from support.procs import wait_until
from support.realnode import REPO

HEAD = "apiVersion: treadle.dev/v1\nkind: Profile\n"
PROFILE = (
    HEAD + "packages:\n  cron: {ensure: present}\n"
    'files:\n  /etc/cron.d/treadle-probe: {content: "# v1\\n", mode: "0644", notify: [cron], requires: ["package:cron"]}\n'
    'services:\n  cron: {enabled: true, state: running, requires: ["package:cron"]}\n'
    "sysctl:\n  net.ipv4.conf.all.log_martians: 1\n"
)


@pytest.fixture(scope="module")
def rn(
    tmp_path_factory: pytest.TempPathFactory, realnode_cache: tuple[Path, Path], realnode_keys: Path
) -> Iterator[RealNode]:
    yield from boot_real_node(tmp_path_factory, realnode_cache, realnode_keys, PROFILE)


def metrics(rn: RealNode) -> dict[str, float]:
    text = httpx.get(
        f"http://{rn.node.address}:{METRICS_PORT}/metrics", timeout=5, trust_env=False
    ).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"(?m)^(treadle_agent_[a-z_]+) ([0-9.e+-]+)$", text)
    }


def wait(condition: Callable[[], bool], timeout_s: float, what: str, rn: RealNode) -> None:
    wait_until(
        condition,
        timeout_s,
        what,
        ignore=(httpx.HTTPError,),
        interval_s=0.2,
        describe=lambda: rn.sh("journalctl -u treadle-agent --no-pager | tail -40", check=False),
    )


def test_the_agent_unit_converges_the_node_and_serves_metrics_to_the_host(rn: RealNode) -> None:
    host_value = Path("/proc/sys/net/ipv4/conf/all/log_martians").read_text()
    shutil.copy(
        REPO / "systemd" / "treadle-agent.service",
        rn.node.path("/etc/systemd/system/treadle-agent.service"),
    )
    rn.sh("systemctl daemon-reload && systemctl enable --now treadle-agent")
    generation = rn.fleet.published_generation(rn.name)
    wait(
        lambda: (
            metrics(rn).get("treadle_agent_applied_generation") == generation
            and metrics(rn).get("treadle_agent_last_apply_success") == 1
        ),
        300,
        "the agent to apply its manifest",
        rn,
    )
    assert rn.dpkg_status("cron") == "install ok installed"
    assert rn.active("cron") == "active" and rn.enabled("cron") == "enabled"
    assert rn.sh("cat /proc/sys/net/ipv4/conf/all/log_martians") == "1"
    assert Path("/proc/sys/net/ipv4/conf/all/log_martians").read_text() == host_value
    props = dict(
        line.split("=", 1)
        for line in rn.sh(
            "systemctl show treadle-agent -p ActiveState,NoNewPrivileges,ProtectHome,PrivateTmp,ProtectControlGroups,"
            "ProtectKernelLogs,RestrictNamespaces,StateDirectory,ExecMainStatus"
        ).splitlines()
    )
    assert props["ActiveState"] == "active"
    assert (
        props["NoNewPrivileges"],
        props["ProtectHome"],
        props["PrivateTmp"],
        props["ProtectControlGroups"],
        props["ProtectKernelLogs"],
    ) == ("yes", "yes", "yes", "yes", "yes")
    assert props["StateDirectory"] == "treadle"
    assert oct(rn.node.path("/var/lib/treadle").stat().st_mode & 0o777) == "0o700"
    # The controller's health scrape reads the same endpoint: the node is healthy there too.
    assert metrics(rn)["treadle_agent_healthy"] == 1


def test_stopping_the_agent_during_an_install_lets_dpkg_finish(rn: RealNode) -> None:
    rn.publish(PROFILE.replace("packages:\n", "packages:\n  perl: {ensure: present}\n"))

    def dpkg_running() -> bool:
        return rn.sh("grep -lx dpkg /proc/[0-9]*/comm 2>/dev/null | head -1", check=False) != ""

    wait(dpkg_running, 300, "the agent to start dpkg", rn)
    rn.sh("systemctl stop treadle-agent")
    assert rn.active("treadle-agent") in ("inactive", "failed")
    assert not dpkg_running()
    assert rn.sh("dpkg --audit") == ""
    assert rn.dpkg_status("perl") == "install ok installed"
    rn.sh("systemctl start treadle-agent")
