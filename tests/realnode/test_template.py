"""The example fabric as `treadle init` ships it, applied by the agent on a real Debian node.

The node is login-001 (site Meyrin, whose OS family is Debian: profiles/os/debian.yaml).
Adapted only where a container cannot be a real machine, in the fabric as an
operator would: no vm.*/kernel.* sysctls (the container shares the host's
kernel), no smartmontools (no disks), and chrony told to run without the
right to set the clock (``-x``, and its unit's ConditionCapability lifted).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.fleet import Fleet, git
from support.nodefleet import RealNode, boot_real_node

NODE = "login-001"
CONTAINER = """
packages:
  smartmontools: !delete
services:
  smartmontools: !delete
files:
  /etc/default/chrony:
    content: "DAEMON_OPTS=\\"-F 1 -x\\"\\n"
    mode: "0644"
    notify: [chrony]
  /etc/systemd/system/chrony.service.d/10-container.conf:
    content: "[Unit]\\nConditionCapability=\\n"
    mode: "0644"
    notify: [chrony]
"""


def template_fabric(fleet: Fleet) -> None:
    fleet.workdir.mkdir(parents=True, exist_ok=True)
    git(fleet.workdir, "init", "-q", "--bare", "-b", "main", str(fleet.bare))
    subprocess.run(
        [str(Path(sys.executable).parent / "treadle"), "init", str(fleet.work)],
        check=True,
        capture_output=True,
    )
    for profile in (fleet.work / "profiles").rglob("*.yaml"):
        text = re.sub(r"(?m)^  (vm|kernel)\.[a-z_.]+: .*\n", "", profile.read_text())
        profile.write_text(re.sub(r"(?m)^sysctl:\n(?!  )", "", text))  # a section left empty
    node_file = fleet.work / "sites/meyrin/login/nodes" / f"{NODE}.yaml"
    node_file.write_text(node_file.read_text() + CONTAINER)
    git(fleet.work, "remote", "add", "origin", str(fleet.bare))
    fleet.commit_and_push("the example fabric, adapted to a container")


@pytest.fixture(scope="module")
def rn(
    tmp_path_factory: pytest.TempPathFactory, realnode_cache: tuple[Path, Path], realnode_keys: Path
) -> Iterator[RealNode]:
    yield from boot_real_node(
        tmp_path_factory,
        realnode_cache,
        realnode_keys,
        None,
        node_name=NODE,
        make_fabric=template_fabric,
    )


def test_the_example_fabric_converges_a_debian_node_as_shipped(rn: RealNode) -> None:
    out = rn.once()
    failed = {
        rid: msg for rid, (status, msg) in out.resources.items() if status in ("failed", "skipped")
    }
    assert failed == {}, out.output
    for package in ("chrony", "openssh-server", "prometheus-node-exporter", "tmux", "git"):
        assert rn.dpkg_status(package) == "install ok installed", package
    for unit in ("chrony", "ssh", "prometheus-node-exporter"):
        assert rn.active(unit) == "active" and rn.enabled(unit) == "enabled", unit
    assert (
        "server ntp.meyrin.example.org iburst"
        in rn.node.path("/etc/chrony/chrony.conf").read_text()
    )
    # The drop-in is read by Debian's sshd (ssh.service runs `sshd -t` before it starts): 3 tries, not 6.
    assert "maxauthtries 3" in rn.sh("sshd -T").splitlines()
    assert rn.once().resources == {}
