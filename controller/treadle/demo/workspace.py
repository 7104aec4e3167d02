"""The demo's workspace: a fabric grown from the template, a bare repository, keys and daemon configs.

Everything lives under one directory, so that a newcomer can look at every
file the demo used, and removing that directory removes the demo::

    fabric.git/          the bare repository the controller tracks (branch main)
    admin/               an admin's clone: the story commits and pushes here
    keys/                the signing key and the agents' trust root
    controller/          controller.toml, state/, publish/
    nodes/<node>/        agent.toml, root/ (the node's "/"), state/, proc/sys/
    logs/                one log per process
    prometheus/          treadle-agents.json: the agents as file_sd targets (`treadle targets`)
    summary.json         the outcome of every scene, for scripts and tests

The fabric is the template's, adapted to one machine: every node gets its own
loopback address (127.0.0.x) and a free port for its agent's /metrics, and
its ``agent-metrics`` health check points there; the agents run the
``simulated`` host mode (packages and services are managed as on a real
node, but only in each agent's ``state/simulated-host.json``: nothing
touches this machine); the rollout policy gets short soak times and a 25 %
middle wave, so that a fabric of a few dozen nodes shows all three waves.

Raises (all functions):
    UsageError: the workspace cannot be created, a tool is missing, or git failed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treadle.demo import grow
from treadle.demo.grow import DemoNode
from treadle.errors import UsageError

MIN_NODES, MAX_NODES = 8, 200
#: The first host part of the nodes' loopback addresses (127.0.0.1 is the controller's).
FIRST_ADDRESS = 11
BRANCH = "main"
#: Who commits in the story; the controller signs its revert commits itself.
ADMIN_ENV = {
    "GIT_AUTHOR_NAME": "Fabric Admin",
    "GIT_AUTHOR_EMAIL": "admin@fabric.example.org",
    "GIT_COMMITTER_NAME": "Fabric Admin",
    "GIT_COMMITTER_EMAIL": "admin@fabric.example.org",
}
#: Clusters of the grown fabric: (site, cluster, share of the nodes). Batch gets the rest.
CLUSTERS = (("meyrin", "login", 1 / 6), ("wigner", "storage", 1 / 3), ("meyrin", "batch", None))


@dataclass(frozen=True, slots=True)
class Timing:
    """How fast the demo runs; ``fast()`` is for CI."""

    soak_s: int = 4
    agent_interval_s: float = 2.0
    agent_jitter_s: float = 1.0
    health_interval_s: float = 1.0
    wave_timeout_s: int = 60

    @classmethod
    def fast(cls) -> Timing:
        return cls(
            soak_s=2,
            agent_interval_s=1.0,
            agent_jitter_s=0.5,
            health_interval_s=0.5,
            wave_timeout_s=45,
        )


@dataclass
class Workspace:
    root: Path
    nodes: list[DemoNode]
    controller_port: int
    timing: Timing
    sysctl_keys: list[str] = field(default_factory=list)

    @property
    def bare(self) -> Path:
        return self.root / "fabric.git"

    @property
    def admin(self) -> Path:
        return self.root / "admin"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def node_root(self, node: str) -> Path:
        return self.node_dir(node) / "root"

    @property
    def targets_file(self) -> Path:
        return self.root / "prometheus" / "treadle-agents.json"

    def controller_config(self) -> Path:
        return self.root / "controller" / "controller.toml"

    def agent_config(self, node: str) -> Path:
        return self.node_dir(node) / "agent.toml"


def cluster_sizes(total: int) -> dict[tuple[str, str], int]:
    """How many nodes each cluster gets: at least one each, batch large enough for a 25 % wave.

    Raises:
        UsageError: ``total`` is outside MIN_NODES..MAX_NODES.
    """
    if not MIN_NODES <= total <= MAX_NODES:
        raise UsageError(
            f"--nodes {total}: give between {MIN_NODES} and {MAX_NODES} nodes "
            f"(fewer leave no node for the partial wave; more run out of loopback addresses)"
        )
    sizes = {(s, c): max(1, int(total * share)) for s, c, share in CLUSTERS if share is not None}
    sizes[("meyrin", "batch")] = total - sum(sizes.values())
    return sizes


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free now (all held open at once, so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def git(cwd: Path, *args: str, check: bool = True) -> str:
    """Run the git CLI as the demo's admin; returns stdout.

    Raises:
        UsageError: git is missing or the command failed.
    """
    env = {**os.environ, **ADMIN_ENV}
    try:
        done = subprocess.run(
            ["git", "-c", "core.hooksPath=/dev/null", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError as e:
        raise UsageError(
            "git is not installed; the demo needs the git command line (apt install git)"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise UsageError(f"git {' '.join(args)} did not finish within 60 s in {cwd}") from e
    if check and done.returncode != 0:
        raise UsageError(
            f"git {' '.join(args)} failed in {cwd}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def build(root: Path, node_count: int, timing: Timing) -> Workspace:
    """Create the whole workspace under ``root`` (which must be empty or absent).

    Raises:
        UsageError: see the module docstring.
    """
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"--workspace {root}: not empty; give a new or empty directory")
    sizes = cluster_sizes(node_count)
    # The agents refuse a config, trust root or state dir others can write (README, "Security"): keep group and
    # others from writing anything the demo creates, whatever the user's umask (002 is common).
    os.umask(os.umask(0o022) | 0o022)
    root.mkdir(parents=True, exist_ok=True)
    ports = free_ports(node_count + 1)
    ws = Workspace(root=root.resolve(), nodes=[], controller_port=ports[0], timing=timing)
    _treadle(ws.root, "init", str(ws.admin))
    ws.nodes = grow.grow(ws.admin, sizes, ports[1:], FIRST_ADDRESS)
    grow.adapt(ws.admin, timing)
    ws.sysctl_keys = grow.check_and_list_sysctl(ws.admin)
    git(ws.admin, "add", "-A")
    git(
        ws.admin,
        "commit",
        "-q",
        "-m",
        f"Demo fabric: {node_count} nodes on loopback addresses, short soak times",
    )
    git(ws.root, "clone", "-q", "--bare", str(ws.admin), str(ws.bare))
    git(ws.admin, "remote", "add", "origin", str(ws.bare))
    git(ws.admin, "fetch", "-q", "origin")
    git(ws.admin, "branch", "-q", "--set-upstream-to", f"origin/{BRANCH}")
    from treadle.keygen import generate

    generate(ws.root / "keys")
    _write_controller_config(ws)
    _write_targets(ws)
    for node in ws.nodes:
        _write_agent(ws, node)
    ws.logs.mkdir()
    return ws


def _treadle(cwd: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "treadle.cli", *args],
        cwd=cwd,
        env={**os.environ, **ADMIN_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise UsageError(f"treadle {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")


def _toml(values: dict[str, Any]) -> str:
    """A flat TOML document (strings, numbers, lists of strings, one level of tables)."""
    import json

    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append(f"\n[{key}]\n" + _toml(value))
        else:
            # JSON strings are valid TOML basic strings for the paths and URLs written here.
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n" + "".join(tables)


def _write_controller_config(ws: Workspace) -> None:
    d = ws.root / "controller"
    d.mkdir()
    ws.controller_config().write_text(
        _toml(
            {
                "repository": str(ws.bare),
                "branch": BRANCH,
                "state_dir": "state",
                "publish_dir": "publish",
                "signing_key": str(ws.root / "keys" / "treadle.key"),
                "listen": f"127.0.0.1:{ws.controller_port}",
                "poll_interval_s": 30,
                "health": {
                    "source": "scrape",
                    "interval_s": ws.timing.health_interval_s,
                    "scrape_timeout_s": 2,
                },
            }
        )
    )


def _write_targets(ws: Workspace) -> None:
    """The agents as Prometheus file_sd targets, as `treadle targets` writes them for a real fabric."""
    from treadle.fabric import GitRevisionSource
    from treadle.fabric.file_sd import file_sd_entries, write_targets

    (ws.root / "prometheus").mkdir()
    write_targets(ws.targets_file, file_sd_entries(GitRevisionSource(str(ws.bare), BRANCH)))


def _write_agent(ws: Workspace, node: DemoNode) -> None:
    d = ws.node_dir(node.name)
    (d / "root").mkdir(parents=True)
    proc_sys = d / "proc" / "sys"
    # The agents' kernel is a directory: each sysctl key the fabric sets exists as a file, as under /proc/sys.
    for key in ws.sysctl_keys:
        path = proc_sys.joinpath(*key.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("0\n")
    ws.agent_config(node.name).write_text(
        _toml(
            {
                "node": node.name,
                "manifest_urls": [f"{ws.controller_url}/v1/nodes/{{node}}/manifest"],
                "trust_root": str(ws.root / "keys" / "trust-root.json"),
                "state_dir": "state",
                "root": "root",
                "interval_s": ws.timing.agent_interval_s,
                "jitter_s": ws.timing.agent_jitter_s,
                "metrics_listen": f"{node.address}:{node.metrics_port}",
                "package_manager": "simulated",
                "service_manager": "simulated",
                "proc_sys": str(proc_sys),
                "retries": 1,
                "backoff_base_s": 0.5,
                "backoff_max_s": 2,
            }
        )
    )
