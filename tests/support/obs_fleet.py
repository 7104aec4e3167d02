"""A small real fabric for the observability tests: one controller, a few agents.

The controller is ``treadle controller run`` over a git repository copied from
fabric-repo-template; the agents are ``treadle-agent run``, each applying into
its own directory with no package or service manager and a private proc_sys,
so nothing touches this machine. One more agent ("rogue") pins a trust root
that does not match the signing key: every manifest it fetches is refused,
which gives the verify-failure series and alerts real data. The controller's
rollout health source is the tests' Prometheus, so a rollout is gated on
what the shipped scrape config collects.

"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from support import (
    TEMPLATE,  # noqa: E402
    copy_template,
)
from support.git import git
from support.net import free_port
from support.procs import Proc, spawn, wait_until

BIN = Path(sys.executable).parent
#: (node, trusts the signing key); nodes from three clusters on two sites.
NODES = (
    ("batch-001", True),
    ("login-001", True),
    ("storage-001", True),
    ("storage-002", True),
    ("batch-002", False),
)
#: Short-lived manifests, so the expiry alert has something to say (< 24 h).
MANIFEST_LIFETIME_S = 43200


class FleetError(RuntimeError):
    """A daemon of the fleet did not start; the message carries its log."""


@dataclass(frozen=True, slots=True)
class AgentTarget:
    node: str
    site: str
    cluster: str
    port: int
    trusted: bool

    def file_sd_entry(self) -> dict[str, object]:
        """This agent as a Prometheus file_sd entry, as `treadle targets` writes it."""
        labels = {
            "node": self.node,
            "site": self.site,
            "cluster": self.cluster,
            "lifecycle": lifecycle(self.node),
        }
        return {"targets": [f"127.0.0.1:{self.port}"], "labels": labels}


@dataclass
class Fleet:
    workdir: Path
    prometheus_url: str  # the controller's rollout health source
    controller_port: int = 0
    agents: list[AgentTarget] = field(default_factory=list)
    processes: list[Proc] = field(default_factory=list)

    @property
    def controller(self) -> str:
        return f"127.0.0.1:{self.controller_port}"

    @property
    def repo(self) -> Path:
        return self.workdir / "fabric"

    def commit(self, path: str, text: str, message: str) -> None:
        """Write ``path`` in the fabric repository and commit it; the controller reacts within a second."""
        (self.repo / path).write_text(text)
        git(self.repo, "commit", "-q", "-a", "-m", message)

    def spawn(self, name: str, argv: list[str]) -> Proc:
        proc = spawn(name, argv, self.workdir / f"{name}.log", self.workdir)
        self.processes.append(proc)
        return proc

    def check_alive(self) -> None:
        """Raises FleetError naming the first daemon that exited, with its log."""
        for p in self.processes:
            if not p.alive():
                raise FleetError(
                    f"{p.name} exited with {p.popen.returncode}:\n{p.log.read_text()[-4000:]}"
                )

    def stop(self) -> None:
        for p in self.processes:
            if p.alive():
                p.popen.terminate()
        for p in self.processes:
            p.stop()


def place(node: str) -> tuple[str, str]:
    """(site, cluster) of a template node, from its path sites/<site>/<cluster>/nodes/<node>.yaml."""
    path = next(TEMPLATE.glob(f"sites/*/*/nodes/{node}.yaml"))
    return path.parts[-4], path.parts[-3]


def lifecycle(node: str) -> str:
    """A template node's lifecycle, as its file states it."""
    text = next(TEMPLATE.glob(f"sites/*/*/nodes/{node}.yaml")).read_text()
    match = re.search(r"^lifecycle:\s*(\w+)", text, re.MULTILINE)
    assert match, f"{node}.yaml states no lifecycle"
    return match.group(1)


def wait_for(fleet: Fleet, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` (an HTTP error counts as false) while every daemon lives.

    Raises:
        FleetError: a daemon exited, or ``condition`` stayed false for ``timeout_s``.
    """

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log.read_text()[-2000:]}" for p in fleet.processes)

    try:
        wait_until(
            condition,
            timeout_s,
            what,
            check=fleet.check_alive,
            ignore=(httpx.HTTPError,),
            interval_s=0.2,
            describe=logs,
        )
    except AssertionError as e:
        raise FleetError(str(e)) from None


def start(workdir: Path, prometheus_url: str) -> Fleet:
    """Start the controller and the agents; return once every one serves /metrics.

    The controller's rollout health source is the Prometheus at
    ``prometheus_url``, which may start later (missing data never passes).

    Raises:
        FleetError: a daemon exited or did not serve in time.
    """
    fleet = Fleet(workdir, prometheus_url)
    try:
        _start_real(fleet)
    except BaseException:
        fleet.stop()
        raise
    return fleet


def _port_from(fleet: Fleet, port_file: Path, what: str) -> int:
    wait_for(
        fleet,
        lambda: port_file.exists() and port_file.read_text().strip().isdigit(),
        30,
        f"{what} to serve /metrics",
    )
    return int(port_file.read_text())


def _start_real(fleet: Fleet) -> None:
    work = fleet.workdir
    repo = work / "fabric"
    copy_template(repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fabric")
    for keys in ("keys", "rogue-keys"):
        subprocess.run(
            [str(BIN / "treadle"), "keys", "generate", str(work / keys)],
            check=True,
            capture_output=True,
        )
    fleet.controller_port = free_port()
    (work / "controller.toml").write_text(
        f'repository = "{repo}"\nstate_dir = "state"\npublish_dir = "publish"\n'
        f'signing_key = "keys/treadle.key"\nlisten = "{fleet.controller}"\npoll_interval_s = 1\n'
        f"manifest_lifetime_s = {MANIFEST_LIFETIME_S}\nresign_before_s = 600\n"
        f'[health]\nsource = "prometheus"\nprometheus_url = "{fleet.prometheus_url}"\ninterval_s = 1\n'
    )
    fleet.spawn(
        "controller",
        [str(BIN / "treadle"), "controller", "run", "--config", str(work / "controller.toml")],
    )
    base = f"http://{fleet.controller}"
    first = NODES[0][0]
    wait_for(
        fleet,
        lambda: httpx.get(f"{base}/v1/nodes/{first}/manifest", timeout=2).status_code == 200,
        60,
        f"the controller to publish {first}'s manifest",
    )
    for node, trusted in NODES:
        site, cluster = place(node)
        fleet.agents.append(
            AgentTarget(node, site, cluster, _start_agent(fleet, node, trusted, base), trusted)
        )


def _start_agent(fleet: Fleet, node: str, trusted: bool, base: str) -> int:
    home = fleet.workdir / "nodes" / node
    (home / "root").mkdir(parents=True)
    (home / "proc_sys").mkdir()
    trust_root = fleet.workdir / ("keys" if trusted else "rogue-keys") / "trust-root.json"
    config = home / "agent.toml"
    config.write_text(
        f'node = "{node}"\nmanifest_urls = ["{base}/v1/nodes/{{node}}/manifest"]\n'
        f'trust_root = "{trust_root}"\nstate_dir = "state"\nroot = "root"\n'
        f'proc_sys = "{home / "proc_sys"}"\ninterval_s = 1\njitter_s = 0\nretries = 0\n'
        'metrics_listen = "127.0.0.1:0"\npackage_manager = "none"\nservice_manager = "none"\n'
    )
    port_file = home / "metrics.port"
    fleet.spawn(
        node,
        [
            str(BIN / "treadle-agent"),
            "run",
            "--config",
            str(config),
            "--metrics-port-file",
            str(port_file),
        ],
    )
    return _port_from(fleet, port_file, node)
