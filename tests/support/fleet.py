"""A real fleet for the rollout tests: a fabric in a bare git repository, one controller, many agents.

Everything is a real process or a real file: the fabric is pushed with the git
CLI to a bare repository the controller watches; the controller is ``treadle
controller run``; every node is a ``treadle-agent run`` process applying into
its own temp root with no package or service manager, so the fabric holds no
packages, services or sysctls. Each node has its own loopback address
(127.x.y.z; all of 127/8 is loopback) where its agent serves /metrics on the
port its node file declares, which is where the controller's scrape health
source finds it.

The fabric is written here, small and by hand: one profile ``app`` puts
``/etc/app.conf`` on every node with a health check that the file exists. A
"good" change edits the file's content; a "bad" one also points the health
check at a file that no node has, so every node that applies it turns
unhealthy.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from support import git as _git
from support.git import Repo
from support.net import free_port
from support.procs import Proc, listening_port, spawn, spawn_controller, wait_until

PY = sys.executable
#: Who commits the fabric (the node history tests read it back).
IDENTITY = ("Fabric Admin", "admin@example.org")
APP_FILE = "/etc/app.conf"
MISSING_FILE = "/etc/app-health-probe-never-written"
CANARY_MARKER = "/etc/canary-marker"
#: The canary of a fleet made by :func:`node_specs` with one canary.
CANARY = "c1-n01"
#: The states a rollout ends in.
TERMINAL = {"complete", "halted", "rolled_back", "superseded", "aborted"}

#: Three waves: the canary, half of every cluster, the rest. ``{...}`` fields are filled per test.
ROLLOUT_YAML = """\
apiVersion: treadle.dev/v1
kind: RolloutPolicy
failure_policy: {failure_policy}
waves:
  - name: canary
    selector: {{labels: {{canary: "true"}}}}
    soak_s: {canary_soak_s}
    timeout_s: {canary_timeout_s}
    failure_budget: {{count: 0}}
  - name: half
    fraction: 0.5
    soak_s: {half_soak_s}
    timeout_s: {half_timeout_s}
    failure_budget: {{count: {half_budget}}}
    approval: {half_approval}
  - name: rest
    fraction: 1.0
    soak_s: {rest_soak_s}
    timeout_s: {rest_timeout_s}
    failure_budget: {{count: 0}}
{extra}"""

ROLLOUT_DEFAULTS: dict[str, Any] = {
    "failure_policy": "halt",
    "canary_soak_s": 1,
    "canary_timeout_s": 60,
    "half_soak_s": 1,
    "half_timeout_s": 60,
    "half_budget": 0,
    "half_approval": "false",
    "rest_soak_s": 1,
    "rest_timeout_s": 60,
    "extra": "",
}


class FleetError(AssertionError):
    """A daemon died or a condition never held; the message carries the relevant logs."""


def rollout_yaml(**overrides: Any) -> str:
    unknown = set(overrides) - set(ROLLOUT_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown rollout.yaml settings {sorted(unknown)}")
    return ROLLOUT_YAML.format(**{**ROLLOUT_DEFAULTS, **overrides})


def git(cwd: Path, *args: str) -> str:
    """git as the fabric's admin."""
    return _git.git(cwd, *args, identity=IDENTITY)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    site: str
    cluster: str
    address: str
    port: int
    canary: bool = False


def node_specs(clusters: int, per_cluster: int, canaries: int = 1) -> list[NodeSpec]:
    """Nodes c<i>-n<j> on site s1, each on its own loopback address; the first ``canaries`` of cluster 1 are canaries."""
    net = f"127.{random.randint(20, 250)}.{random.randint(0, 250)}"
    specs = []
    for c in range(1, clusters + 1):
        for j in range(1, per_cluster + 1):
            address = f"{net}.{len(specs) + 2}"
            specs.append(
                NodeSpec(
                    f"c{c}-n{j:02d}",
                    "s1",
                    f"c{c}",
                    address,
                    free_port(address),
                    canary=c == 1 and j <= canaries,
                )
            )
    return specs


def profile_yaml(content: str, healthy: bool = True, probe: str | None = None) -> str:
    """The ``app`` profile; its health check probes ``probe`` (default: the app file, or a missing one)."""
    probe = probe or (APP_FILE if healthy else MISSING_FILE)
    return (
        f"apiVersion: treadle.dev/v1\nkind: Profile\nfiles:\n  {APP_FILE}:\n"
        f'    content: {json.dumps(content + chr(10))}\n    mode: "0644"\n'
        f"health:\n  app-config: {{file: {probe}}}\n"
    )


def write_fabric(work: Path, nodes: Iterable[NodeSpec], rollout: str, content: str) -> None:
    (work / "profiles").mkdir(parents=True)
    (work / "fabric.yaml").write_text(
        "apiVersion: treadle.dev/v1\nkind: Fabric\nname: rollout-e2e\n"
    )
    (work / "rollout.yaml").write_text(rollout)
    (work / "profiles" / "app.yaml").write_text(profile_yaml(content))
    for n in nodes:
        site = work / "sites" / n.site
        site.mkdir(parents=True, exist_ok=True)
        (site / "site.yaml").write_text("apiVersion: treadle.dev/v1\nkind: Site\nprofiles: [app]\n")
        cdir = site / n.cluster / "nodes"
        cdir.mkdir(parents=True, exist_ok=True)
        (site / n.cluster / "cluster.yaml").write_text(
            "apiVersion: treadle.dev/v1\nkind: Cluster\n"
        )
        # Canaries carry a marker file: a health check on it passes on canaries only.
        labels = (
            f'\nlabels: {{canary: "true"}}\nfiles: {{{CANARY_MARKER}: {{content: "canary"}}}}'
            if n.canary
            else ""
        )
        (cdir / f"{n.name}.yaml").write_text(
            f"apiVersion: treadle.dev/v1\nkind: Node\naddress: {n.address}\nlifecycle: production{labels}\n"
            f"agent: {{metrics_port: {n.port}}}\n"
        )


@dataclass
class AgentHome:
    """One node's agent directory, ``home``: its agent.toml, state and the root it applies into.

    Shared by the fleet of processes and the in-process one (:mod:`support.local_fleet`), whose agents
    write the same files.
    """

    spec: NodeSpec
    home: Path

    @classmethod
    def create(
        cls, workdir: Path, n: NodeSpec, manifest_url: str, keys: Path, interval_s: float
    ) -> Self:
        """``workdir``/agents/<node> with an empty root and proc_sys, and an agent.toml (see :func:`agent_toml`)."""
        home = workdir / "agents" / n.name
        (home / "root").mkdir(parents=True)
        (home / "proc_sys").mkdir()
        (home / "agent.toml").write_text(agent_toml(n, home, manifest_url, keys, interval_s))
        return cls(n, home)

    @property
    def app_file(self) -> Path:
        return self.home / "root" / APP_FILE.lstrip("/")

    def content(self) -> str | None:
        """What the agent applied to the app file (without its newline); None before it wrote one."""
        try:
            return self.app_file.read_text().rstrip("\n")
        except FileNotFoundError:
            return None


@dataclass
class Agent(AgentHome):
    proc: Proc | None = None

    def metrics(self) -> dict[str, float]:
        """This agent's treadle_agent_* gauges (no labels), read from its /metrics."""
        text = httpx.get(
            f"http://{self.spec.address}:{self.spec.port}/metrics", timeout=5, trust_env=False
        ).text
        out = {}
        for line in text.splitlines():
            m = re.match(r"^(treadle_agent_[a-z_]+) ([0-9.e+-]+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out


class FabricRepo:
    """The fabric's upstream (``bare``) and the admin's work clone (``work``) under ``workdir``, for ``nodes``."""

    workdir: Path
    nodes: list[NodeSpec]
    bare: Path
    work: Path

    def __post_init__(self) -> None:
        """The repositories' places (the dataclasses that mix this in declare them ``init=False``)."""
        self.bare, self.work = self.workdir / "upstream.git", self.workdir / "fabric"

    def init_repo(self, rollout: str, content: str = "v1") -> str:
        """Both repositories, with the fabric (the ``app`` profile at ``content``) pushed; the commit."""
        Repo.create(self.bare, self.work, IDENTITY)
        write_fabric(self.work, self.nodes, rollout, content)
        return self.commit_and_push("fabric")

    def change_app(
        self,
        content: str,
        *,
        healthy: bool = True,
        probe: str | None = None,
        message: str | None = None,
    ) -> str:
        """Commit and push a new content of /etc/app.conf (and a failing health check when not ``healthy``)."""
        (self.work / "profiles" / "app.yaml").write_text(profile_yaml(content, healthy, probe))
        return self.commit_and_push(message or f"app {content}")

    def commit_and_push(self, message: str) -> str:
        return Repo(self.bare, self.work, IDENTITY).commit_and_push(message)


class FleetView:
    """What a fleet says, the same whether its daemons are processes (:class:`Fleet`) or in-process
    (:class:`support.local_fleet.LocalFleet`): rollout documents, published generations, the agents' files."""

    nodes: list[NodeSpec]
    agents: dict[str, Any]

    @property
    def publish_dir(self) -> Path:
        raise NotImplementedError

    def documents(self) -> list[dict[str, Any]]:
        """The newest rollouts' documents, as GET /v1/rollouts lists them."""
        raise NotImplementedError

    def rollout(self, rid: str | int = "current") -> dict[str, Any]:
        """One rollout's document, as GET /v1/rollouts/<rid> answers it."""
        raise NotImplementedError

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Until ``condition`` holds, at most ``timeout_s`` seconds (the fleet's own seconds)."""
        raise NotImplementedError

    def rollout_of(self, commit: str) -> dict[str, Any]:
        return next(d for d in self.documents() if d["commit"] == commit)

    def wait_rollout(
        self,
        commit: str,
        states: set[str],
        timeout_s: float = 60,
        also: Callable[[dict[str, Any]], bool] = lambda d: True,
    ) -> dict[str, Any]:
        """The rollout of ``commit`` once it is in one of ``states`` (and ``also`` holds)."""
        found: dict[str, Any] = {}

        def ready() -> bool:
            for doc in self.documents():
                if doc["commit"] == commit and doc["state"] in states and also(doc):
                    found.update(doc)
                    return True
            return False

        self.wait(ready, timeout_s, f"the rollout of {commit[:12]} to be {sorted(states)}")
        return self.rollout(found["id"])

    def wait_applied(self, content: str, names: Iterable[str], timeout_s: float = 30) -> None:
        names = list(names)
        self.wait(
            lambda: all(self.agents[n].content() == content for n in names),
            timeout_s,
            f"{names} to apply {content!r}",
        )

    def published_generation(self, node: str) -> int:
        """The generation of the manifest the controller publishes for ``node`` now."""
        from treadle.daemon.sign import manifest_from_envelope

        data = (self.publish_dir / "nodes" / node / "manifest").read_bytes()
        return int(manifest_from_envelope(data)["metadata"]["generation"])

    def published_generations(self) -> dict[str, int]:
        return {n.name: self.published_generation(n.name) for n in self.nodes}


@dataclass
class Fleet(FabricRepo, FleetView):
    """The fabric's repositories, the controller and the agents of one test."""

    workdir: Path
    keys: Path
    nodes: list[NodeSpec]
    controller_toml_extra: str = ""
    agent_interval_s: float = 0.5
    bare: Path = field(init=False)
    work: Path = field(init=False)
    url: str = ""
    controller: Proc | None = None
    agents: dict[str, Agent] = field(default_factory=dict)
    controller_starts: int = 0
    #: Each node's generation once every agent applied the first content: generations are clock-based
    #: (see treadle.daemon.generation), so tests compare with these instead of counting from 1.
    first: dict[str, int] = field(default_factory=dict)
    #: Fixed across restarts: the agents' manifest URLs name it.
    api_port: int = field(default_factory=lambda: free_port("127.0.0.1"))

    # -- the controller ------------------------------------------------------

    def start_controller(self) -> None:
        d = self.workdir / "controller"
        d.mkdir(exist_ok=True)
        config = d / "controller.toml"
        config.write_text(
            controller_toml(
                self.bare,
                self.keys,
                self.controller_toml_extra,
                listen=f"127.0.0.1:{self.api_port}",
            )
        )
        log = d / f"controller-{self.controller_starts}.log"
        self.controller_starts += 1
        self.controller = spawn_controller(config, log, d)
        try:
            port = listening_port(self.controller)
        except AssertionError as e:
            raise FleetError(str(e)) from None
        self.url = f"http://127.0.0.1:{port}"

    def kill_controller(self) -> None:
        assert self.controller is not None
        self.controller.stop(signal.SIGKILL)

    # -- agents --------------------------------------------------------------

    def start_agents(self, names: Iterable[str] | None = None) -> None:
        chosen = [n for n in self.nodes if names is None or n.name in set(names)]
        for n in chosen:
            agent = self.agents.get(n.name) or self._agent_home(n)
            self.agents[n.name] = agent
            argv = [
                str(Path(PY).parent / "treadle-agent"),
                "run",
                "--config",
                str(agent.home / "agent.toml"),
            ]
            agent.proc = spawn(n.name, argv, agent.home / "agent.log", agent.home)
        self.wait(
            lambda: all(self._serves(self.agents[n.name]) for n in chosen),
            90,
            "every agent to serve /metrics",
        )

    def _agent_home(self, n: NodeSpec) -> Agent:
        url = f"{self.url}/v1/nodes/{{node}}/manifest"
        return Agent.create(self.workdir, n, url, self.keys, self.agent_interval_s)

    @staticmethod
    def _serves(agent: Agent) -> bool:
        if agent.proc is not None and not agent.proc.alive():
            raise FleetError(
                f"agent {agent.spec.name} exited: {agent.proc.log.read_text()[-3000:]}"
            )
        try:
            agent.metrics()
            return True
        except httpx.HTTPError:
            return False

    def stop_agent(self, name: str) -> None:
        proc = self.agents[name].proc
        assert proc is not None
        proc.stop(signal.SIGKILL)

    def stop(self) -> None:
        for agent in self.agents.values():
            if agent.proc is not None and agent.proc.popen.poll() is None:
                agent.proc.popen.kill()
        for agent in self.agents.values():
            if agent.proc is not None:
                agent.proc.popen.wait()
        if self.controller is not None:
            self.controller.stop()

    # -- what the controller and agents say -------------------------------------

    def api(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=10, trust_env=False)
        response.raise_for_status()
        return response.json()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``treadle args --url`` this controller, its output at a width no table wraps at."""
        return subprocess.run(
            [PY, "-m", "treadle.cli", *args, "--url", self.url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "250"},
        )

    def rollout(self, rid: str | int = "current") -> dict[str, Any]:
        return self.api(f"/v1/rollouts/{rid}")

    def documents(self) -> list[dict[str, Any]]:
        return list(self.api("/v1/rollouts")["rollouts"])

    @property
    def publish_dir(self) -> Path:
        return self.workdir / "controller" / "publish"

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``condition`` (an HTTP error counts as false) while the controller lives."""

        def alive() -> None:
            if self.controller is not None and not self.controller.alive():
                raise FleetError(
                    f"controller exited while waiting for {what}:\n{self.controller.log.read_text()[-3000:]}"
                )

        try:
            wait_until(
                condition,
                timeout_s,
                what,
                check=alive,
                ignore=(httpx.HTTPError,),
                describe=self._diagnostics,
            )
        except FleetError:
            raise
        except AssertionError as e:
            raise FleetError(str(e)) from None

    def _diagnostics(self) -> str:
        parts: list[str] = []
        try:
            parts.append(json.dumps(self.rollout(), indent=1)[-3000:])
        except (httpx.HTTPError, ValueError) as e:
            parts.append(f"(no rollout document: {e})")
        if self.controller is not None:
            parts.append(self.controller.log.read_text()[-3000:])
        return "\n".join(parts)


def controller_toml(
    repository: Path, keys: Path, extra: str = "", listen: str = "127.0.0.1:0"
) -> str:
    """The fleet's controller.toml: state and publish dirs beside it; ``extra`` (default: scrape health every 0.5 s)."""
    return (
        f'repository = "{repository}"\nstate_dir = "state"\npublish_dir = "publish"\n'
        f'signing_key = "{keys / "treadle.key"}"\nlisten = "{listen}"\npoll_interval_s = 30\n'
        f"{extra or _HEALTH_SCRAPE}"
    )


def agent_toml(n: NodeSpec, home: Path, manifest_url: str, keys: Path, interval_s: float) -> str:
    """A node's agent.toml: it applies into ``home``/root with no package or service manager."""
    return (
        f'node = "{n.name}"\nmanifest_urls = ["{manifest_url}"]\n'
        f'trust_root = "{keys / "trust-root.json"}"\nstate_dir = "state"\nroot = "root"\n'
        f'proc_sys = "{home / "proc_sys"}"\ninterval_s = {interval_s}\njitter_s = 0\nretries = 0\n'
        f'metrics_listen = "{n.address}:{n.port}"\npackage_manager = "none"\nservice_manager = "none"\n'
    )


def write_agent_config(home: Path, node: str, base_url: str, trust_root: Path) -> Path:
    """``home``/agent.toml for one `treadle-agent once` against ``base_url`` (a controller or a mirror); its path.

    It applies into ``home``/root with no package or service manager and tries each URL once (``retries = 0``).
    """
    (home / "root").mkdir(parents=True)
    (home / "proc_sys").mkdir()
    config = home / "agent.toml"
    config.write_text(
        f'node = "{node}"\nmanifest_urls = ["{base_url}/v1/nodes/{{node}}/manifest"]\ntrust_root = "{trust_root}"\n'
        f'state_dir = "{home / "state"}"\nroot = "{home / "root"}"\npackage_manager = "none"\n'
        f'service_manager = "none"\nproc_sys = "{home / "proc_sys"}"\nretries = 0\n'
    )
    return config


_HEALTH_SCRAPE = '[health]\nsource = "scrape"\nscrape_timeout_s = 1\ninterval_s = 0.5\n'


def generate_keys(directory: Path) -> Path:
    """`treadle keys generate` into ``directory`` (the controller's key and the agents' trust root)."""
    subprocess.run(
        [str(Path(PY).parent / "treadle"), "keys", "generate", str(directory)],
        check=True,
        capture_output=True,
    )
    return directory


def start_fleet(
    workdir: Path,
    keys: Path,
    nodes: list[NodeSpec],
    rollout: str,
    *,
    controller_toml_extra: str = "",
    agent_interval_s: float = 0.5,
) -> Fleet:
    """Push the fabric, start the controller, wait for the first publication, start every agent and wait
    until each has applied the first content ("v1")."""
    fleet = Fleet(workdir, keys, nodes, controller_toml_extra, agent_interval_s)
    try:
        fleet.init_repo(rollout)
        fleet.start_controller()
        first = nodes[0].name
        fleet.wait(
            lambda: (
                httpx.get(
                    f"{fleet.url}/v1/nodes/{first}/manifest", timeout=5, trust_env=False
                ).status_code
                == 200
            ),
            60,
            "the first publication",
        )
        fleet.start_agents()
        fleet.wait_applied("v1", [n.name for n in nodes], 60)
        fleet.first = fleet.published_generations()
    except BaseException:
        fleet.stop()
        raise
    return fleet
