"""agent.toml's host: the real machine, or the ``simulated`` one (``package_manager = "simulated"``).

Kept apart from host.py so that host_sim.py, built on host.py's parts, is
imported by this module and host.py imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from treadle_agent.host import Host, SystemHost
from treadle_agent.host_sim import SimulatedHost


def host_for(settings: Any, state_dir: Path) -> Host:
    """The host agent.toml describes: the real machine, or the ``simulated`` one (see host_sim.py).

    Raises:
        StateError: the simulated host's state file cannot be read.
    """
    if getattr(settings, "package_manager", "auto") == "simulated":
        return SimulatedHost.persistent(
            state_dir,
            proc_sys=getattr(settings, "proc_sys", "/proc/sys"),
            sysctl_dir=getattr(settings, "sysctl_dir", "/etc/sysctl.d"),
        )
    return SystemHost.from_config(settings)
