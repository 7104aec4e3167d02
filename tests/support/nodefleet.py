"""A real node with the agent installed and a controller on the host serving its manifests (see realnode.py)."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import realnode
from support.fleet import Fleet, NodeSpec


def _free_index() -> int:
    """A node number whose veth (ve-rn<N>) and link-local /30 no other run on this machine uses right now."""
    taken = {
        int(m)
        for p in Path("/sys/class/net").iterdir()
        if (m := p.name.removeprefix("ve-rn")).isdigit()
    }
    free = sorted(set(range(100, 250)) - taken - _USED)
    if not free:
        raise realnode.NodeError("no free node number (ve-rn100 .. ve-rn249 all in use)")
    index = random.choice(free)
    _USED.add(index)
    return index


_USED: set[int] = set()

#: One wave: the node is its only member (it carries the canary label).
ROLLOUT = """\
apiVersion: treadle.dev/v1
kind: RolloutPolicy
failure_policy: halt
waves:
  - name: canary
    selector: {labels: {canary: "true"}}
    soak_s: 0
    timeout_s: 600
    failure_budget: {count: 0}
"""
METRICS_PORT = 9100


@dataclass(frozen=True)
class Outcome:
    """One agent cycle in the node: its exit code, each resource's (status, message), the cycle summary."""

    returncode: int
    resources: dict[str, tuple[str, str]]
    done: dict[str, Any]
    output: str

    def status(self, rid: str) -> str:
        return self.resources.get(rid, ("in_sync", ""))[0]

    def message(self, rid: str) -> str:
        return self.resources.get(rid, ("", ""))[1]


@dataclass
class RealNode:
    """A node, the agent in it, and the controller (with its fabric repository) that serves its manifests."""

    node: realnode.Node
    fleet: Fleet
    name: str

    def publish(self, profile: str) -> int:
        """Commit ``profile`` as the node's only profile, wait for the controller to publish it; its generation."""
        before = self.fleet.published_generation(self.name)
        (self.fleet.work / "profiles" / "app.yaml").write_text(profile)
        self.fleet.commit_and_push("realnode scenario")
        self.fleet.wait(
            lambda: self.fleet.published_generation(self.name) > before,
            120,
            "the controller to publish the new generation",
        )
        return self.fleet.published_generation(self.name)

    def once(self, *extra: str) -> Outcome:
        """`treadle-agent once` in the node, as root, with the node's agent.toml."""
        r = self.node.run(
            [
                "/opt/treadle/bin/treadle-agent",
                "once",
                "--config",
                "/etc/treadle/agent.toml",
                "--log-format",
                "json",
                *extra,
            ],
            check=False,
            timeout=900,
        )
        resources, done = {}, {}
        for line in r.stderr.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            name = event.get("event", "")
            if name.startswith("resource."):
                resources[event["id"]] = (name.partition(".")[2], event.get("message", ""))
            elif name == "cycle.done":
                done = event
        return Outcome(r.returncode, resources, done, r.stdout + r.stderr)

    def check(self) -> tuple[int, dict[str, Any]]:
        r = self.node.run(
            [
                "/opt/treadle/bin/treadle-agent",
                "check",
                "--config",
                "/etc/treadle/agent.toml",
                "--format",
                "json",
            ],
            check=False,
        )
        return r.returncode, json.loads(r.stdout)

    def sh(self, script: str, check: bool = True) -> str:
        return self.node.sh(script, check=check).stdout.strip()

    def active(self, unit: str) -> str:
        return self.sh(f"systemctl is-active {unit}", check=False)

    def enabled(self, unit: str) -> str:
        return self.sh(f"systemctl is-enabled {unit}", check=False)

    def dpkg_status(self, package: str) -> str:
        return self.sh(f"dpkg-query -W -f='${{Status}}' {package} 2>/dev/null", check=False)


def boot_real_node(
    tmp_path_factory: pytest.TempPathFactory,
    cache: tuple[Path, Path],
    keys: Path,
    first_profile: str | None,
    *,
    node_name: str | None = None,
    make_fabric: Callable[[Fleet], None] | None = None,
) -> Iterator[RealNode]:
    """Boot a node, install the agent, start a controller whose fabric gives the node ``first_profile``.

    ``make_fabric`` (instead of ``first_profile``) writes and pushes a whole fabric to ``fleet.bare``; the
    node's agent then fetches the manifest of ``node_name``.
    """
    tarball, wheelhouse = cache
    index = _free_index()
    name = node_name or f"rn{index}"
    work = tmp_path_factory.mktemp(f"rn{index}")
    node = realnode.make_node(f"rn{index}", index, work / "node", tarball)
    fleet = Fleet(
        work / "fleet",
        keys,
        [NodeSpec(name, "s1", "c1", node.address, METRICS_PORT, canary=True)],
        controller_toml_extra='[health]\nsource = "scrape"\nscrape_timeout_s = 1\ninterval_s = 1\n',
    )
    try:
        node.install_agent(wheelhouse)
        if make_fabric is not None:
            make_fabric(fleet)
        else:
            assert first_profile is not None
            fleet.init_repo(ROLLOUT)
            (fleet.work / "profiles" / "app.yaml").write_text(first_profile)
            fleet.commit_and_push("the real node's first profile")
        fleet.start_controller()
        port = int(fleet.url.rpartition(":")[2])
        url = f"http://{node.forward(port, ('127.0.0.1', port))}"
        publish = fleet.workdir / "controller" / "publish" / "nodes" / name / "manifest"
        fleet.wait(publish.exists, 120, f"the first publication of {name}")
        etc = node.path("/etc/treadle")
        etc.mkdir(parents=True)
        shutil.copy(keys / "trust-root.json", etc / "trust-root.json")
        (etc / "agent.toml").write_text(
            f'node = "{name}"\nmanifest_urls = ["{url}/v1/nodes/{{node}}/manifest"]\n'
            f'trust_root = "/etc/treadle/trust-root.json"\nstate_dir = "/var/lib/treadle"\nroot = "/"\n'
            f'package_manager = "apt"\nservice_manager = "systemd"\n'
            f'metrics_listen = "{node.address}:{METRICS_PORT}"\ninterval_s = 2\njitter_s = 0\nretries = 0\n'
        )
        yield RealNode(node, fleet, name)
    finally:
        fleet.stop()
        node.shutdown()
