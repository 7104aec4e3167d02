"""The rollout fleet in one process, on a clock the test moves: the rollout scenarios without waiting.

The same fabric as :mod:`support.fleet` (the ``app`` profile, the canary,
half of each cluster, the rest), pushed with the git CLI to a bare
repository; the controller is the real one wired by
``treadle.daemon.process.build`` (git mirror, renderer, SQLite state, signer,
publish store, rollout service), and every node runs the real agent
(``treadle_agent.agent.Agent``: verify, apply into its own temp root, health
checks, metrics). What the processes would do over time, a test does in
steps: :meth:`LocalFleet.step` moves the clock, runs one cycle of every agent
that is up, then one rollout tick of the controller, which reads the agents'
real metrics pages through the real exposition parser.

Only two edges are not the processes': an agent fetches its envelope from the
publish directory instead of over HTTP (the bytes are the same), and a push
reaches the controller as a call of its cycle instead of through the ref
watcher. Soaks and timeouts pass in fake seconds, so a scenario costs the
renders and applies it makes, not the time it describes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from support.api_server import serving
from support.clock import Clock
from support.fleet import (
    AgentHome,
    FabricRepo,
    FleetView,
    NodeSpec,
    controller_toml,
    git,
)
from treadle.daemon import config as controller_config
from treadle.daemon import process
from treadle.rollout.machine import Observation
from treadle.rollout.observe import HealthSource, Target, parse_exposition
from treadle.rollout.service import RolloutService
from treadle_agent import config as agent_config
from treadle_agent.agent import Agent
from treadle_agent.errors import FetchError
from treadle_agent.fetch import Fetcher, FetchResult

#: 2027-01-15 08:00 UTC, a Friday: every scenario starts at the same moment, so change windows are exact.
EPOCH = 1_800_000_000.0
#: How far one step moves the clock: the agents' poll interval and the controller's health interval.
STEP_S = 0.5


class StoreFetcher(Fetcher):
    """The node's envelope from the controller's publish directory (what its API serves), with an ETag."""

    def __init__(self, publish_dir: Path, node: str) -> None:
        self.path = publish_dir / "nodes" / node / "manifest"

    async def fetch(self, etag: str | None) -> FetchResult:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as e:
            raise FetchError("http_status", f"{self.path}: not published") from e
        tag = hashlib.sha256(data).hexdigest()
        return FetchResult(str(self.path), None if tag == etag else data, tag)


@dataclass
class LocalAgent(AgentHome):
    """One node's real agent, its state dir and applied root under ``home``; ``up`` while it runs."""

    agent: Agent | None = None

    @property
    def up(self) -> bool:
        return self.agent is not None

    def page(self) -> str:
        """The agent's /metrics page."""
        assert self.agent is not None, f"{self.spec.name}'s agent is down"
        return self.agent.metrics.exposition().decode()

    def metrics(self) -> dict[str, float]:
        """The treadle_agent_* gauges (no labels) of its page."""
        out = {}
        for line in self.page().splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("treadle_agent_") and "{" not in name and value:
                out[name] = float(value)
        return out


class AgentPages:
    """The health source of a fleet whose agents are in-process: each up agent's page, parsed as a scrape parses it."""

    def __init__(self, agents: Mapping[str, LocalAgent]) -> None:
        self.agents = agents

    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        out = {}
        for t in targets:
            agent = self.agents.get(t.node)
            if agent is not None and agent.up:
                obs = parse_exposition(agent.page(), t.node)
                if obs is not None:
                    out[t.node] = obs
        return out


@dataclass
class LocalFleet(FabricRepo, FleetView):
    """The fabric's repositories, the in-process controller and agents of one scenario."""

    workdir: Path
    keys: Path
    nodes: list[NodeSpec]
    clock: Clock = field(default_factory=lambda: Clock(EPOCH))
    #: The controller's health source (default: the agents' pages).
    health: HealthSource | None = None
    bare: Path = field(init=False)
    work: Path = field(init=False)
    agents: dict[str, LocalAgent] = field(default_factory=dict)
    controller: process.Controller | None = None
    first: dict[str, int] = field(default_factory=dict)

    # -- the controller --------------------------------------------------------

    @property
    def rollouts(self) -> RolloutService:
        assert self.controller is not None and self.controller.pipeline.rollouts is not None
        return self.controller.pipeline.rollouts

    @property
    def publish_dir(self) -> Path:  # type: ignore[override]
        return self.workdir / "controller" / "publish"

    def start_controller(self) -> None:
        """Wire the controller from its controller.toml (as `treadle controller run` does), on the fake clock;
        then its first cycle, as a starting controller runs at once."""
        d = self.workdir / "controller"
        d.mkdir(exist_ok=True)
        path = d / "controller.toml"
        path.write_text(controller_toml(self.bare, self.keys))
        config = controller_config.load(path)
        controller = process.build(config, clock=self.clock)
        # The same service, on the fake clock and asking the health source in the ticking thread.
        assert controller.pipeline.rollouts is not None
        controller.pipeline.rollouts.close()
        controller.pipeline.rollouts = RolloutService(
            config.store.state_dir / process.STATE_DB,
            self.health or AgentPages(self.agents),
            metrics=controller.pipeline.metrics,
            clock=self.clock,
        )
        controller.api.rollouts = controller.pipeline.rollouts
        self.controller = controller
        self.cycle()

    @contextmanager
    def serving(self) -> Iterator[str]:
        """The controller's HTTP API on 127.0.0.1 while the block runs (the CLI's way in); its URL."""
        assert self.controller is not None
        with serving(self.controller.api) as url:
            yield url

    def kill_controller(self) -> None:
        """The controller is gone: what it committed to its state stays, nothing else is written."""
        assert self.controller is not None
        self.controller.close()
        self.controller = None

    def cycle(self) -> None:
        """The controller's full cycle: fetch the head, render, plan, publish or start a rollout, tick."""
        assert self.controller is not None
        self.controller.pipeline.run_once()

    def push(self, content: str, **change: Any) -> str:
        """Commit and push a new content of the app file, and the controller's cycle that the push triggers."""
        sha = self.change_app(content, **change)
        self.cycle()
        return sha

    def push_head(self) -> str:
        """Push the work clone's HEAD as it is (a commit made with git itself), and the cycle it triggers."""
        git(self.work, "push", "-q", "origin", "HEAD:main")
        self.cycle()
        return git(self.work, "rev-parse", "HEAD")

    # -- agents ------------------------------------------------------------------

    def start_agents(self, names: Iterable[str] | None = None) -> None:
        """Start these agents (default: all): each takes up its state dir, as a started agent does."""
        wanted = None if names is None else set(names)
        for n in self.nodes:
            if wanted is not None and n.name not in wanted:
                continue
            local = self.agents.get(n.name) or self._agent_home(n)
            self.agents[n.name] = local
            config = agent_config.load(local.home / "agent.toml", remember=False)
            agent = Agent.from_config(
                config, fetcher=StoreFetcher(self.publish_dir, n.name), clock=self.clock
            )
            agent.start()
            local.agent = agent

    def _agent_home(self, n: NodeSpec) -> LocalAgent:
        url = "http://127.0.0.1:9/v1/nodes/{node}/manifest"  # never fetched: see StoreFetcher
        local = LocalAgent.create(self.workdir, n, url, self.keys, STEP_S)
        local.home.chmod(0o700)
        return local

    def stop_agent(self, name: str) -> None:
        self.agents[name].agent = None

    # -- time ----------------------------------------------------------------------

    def step(self, seconds: float = STEP_S) -> None:
        """``seconds`` pass: every agent that is up runs a cycle, then the controller ticks its rollout."""
        self.clock.advance(seconds)

        async def cycles() -> None:
            for local in self.agents.values():
                if local.agent is not None:
                    await local.agent.cycle()

        anyio.run(cycles)
        if self.controller is not None:
            self.controller.pipeline.tick()

    def run_until(self, condition: Callable[[], bool], max_s: float, what: str) -> None:
        """Step until ``condition`` holds, at most ``max_s`` fake seconds.

        Raises:
            AssertionError: it never held (with the rollout's document).
        """
        end = self.clock.now + max_s
        while not condition():
            if self.clock.now >= end:
                raise AssertionError(f"{what}: not within {max_s} s\n{self._diagnostics()}")
            self.step()

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` pass, step by step (what would wrongly happen meanwhile has happened after it)."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.step()

    # -- what the controller and agents say -------------------------------------------

    def rollout(self, rid: int | str = "current") -> dict[str, Any]:
        found = self.rollouts.latest_id() if rid == "current" else int(rid)
        assert found is not None, "no rollout"
        return self.rollouts.document(found)

    def documents(self) -> list[dict[str, Any]]:
        return self.rollouts.documents()

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """In fake seconds: see :meth:`run_until`."""
        self.run_until(condition, timeout_s, what)

    def stop(self) -> None:
        if self.controller is not None:
            self.kill_controller()

    def _diagnostics(self) -> str:
        try:
            return json.dumps(self.rollout(), indent=1)[-3000:]
        except AssertionError as e:
            return f"(no rollout document: {e})"


def start_local_fleet(
    workdir: Path,
    keys: Path,
    nodes: list[NodeSpec],
    rollout: str,
    *,
    health: HealthSource | None = None,
) -> LocalFleet:
    """Push the fabric, start the controller (its first publication), start every agent and step until each
    applied the first content ("v1")."""
    fleet = LocalFleet(workdir, keys, nodes, health=health)
    try:
        fleet.init_repo(rollout)
        fleet.start_controller()
        fleet.start_agents()
        fleet.wait_applied("v1", [n.name for n in nodes])
        fleet.first = fleet.published_generations()
    except BaseException:
        fleet.stop()
        raise
    return fleet
