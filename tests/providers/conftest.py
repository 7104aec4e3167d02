"""Fixtures: a managed root, a state dir and a /proc/sys look-alike in a temp dir, and a simulated host."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from treadle_agent.apply import Applier  # noqa: E402
from treadle_agent.host import SimulatedHost, Unit  # noqa: E402

PROC_SYS = {"net/ipv4/ip_forward": "0", "vm/swappiness": "60", "kernel/ostype": "Linux",
            "net/ipv4/ip_local_port_range": "32768\t60999"}


@dataclass
class Env:
    root: Path
    state: Path
    proc: Path
    host: SimulatedHost

    def applier(self, policy: str = "heal") -> Applier:
        return Applier(self.root, self.state, self.host, policy)

    def sysctl_value(self, key: str) -> str:
        return (self.proc / key.replace(".", "/")).read_text()

    def set_sysctl(self, key: str, value: str) -> None:
        (self.proc / key.replace(".", "/")).write_text(value + "\n")


def make_env(base: Path, **host_kwargs) -> Env:
    root, state, proc = base / "root", base / "state", base / "proc_sys"
    root.mkdir()
    for key, value in PROC_SYS.items():
        (proc / key).parent.mkdir(parents=True, exist_ok=True)
        (proc / key).write_text(value + "\n")
    host_kwargs.setdefault("available", {"chrony": "4.3-2", "nginx": "1.22.1-9", "curl": "7.88.1-10"})
    host_kwargs.setdefault("units", {"chronyd": Unit(enabled=True, active=True), "nginx": Unit()})
    return Env(root, state, proc, SimulatedHost(proc_sys=proc, **host_kwargs))


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)
