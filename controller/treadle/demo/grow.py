"""The demo's fabric: the template grown to N nodes on loopback, adapted to run on one machine.

Node files are copied from their neighbours in the template (the first node
of each cluster stays its canary), with YAML round-trip editing so that the
template's comments stay where a newcomer expects them. Packages and
services stay: the demo's agents manage them on a simulated host (see
:mod:`treadle.demo.workspace`).

Raises (all functions):
    UsageError: the template is missing a cluster, or the grown fabric is invalid.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treadle.errors import UsageError


@dataclass(frozen=True, slots=True)
class DemoNode:
    """One node of the grown fabric: where its agent listens, and its file in the repository.

    Defined here, where the nodes are made; the workspace (which imports this
    module, never the other way round) gives each its directory and agent.
    """

    name: str
    site: str
    cluster: str
    address: str
    metrics_port: int
    canary: bool
    file: str  # path in the fabric repository

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.metrics_port}/metrics"


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML()  # round-trip: comments and key order survive
    y.preserve_quotes = True
    y.width = 4096
    return y


def _load(path: Path) -> Any:
    return _yaml().load(path.read_text(encoding="utf-8"))


def _dump(doc: Any, path: Path) -> None:
    out = io.StringIO()
    _yaml().dump(doc, out)
    path.write_text(out.getvalue(), encoding="utf-8")


def _flow(mapping: Mapping[str, Any]) -> Any:
    from ruamel.yaml.comments import CommentedMap

    m = CommentedMap(mapping)
    m.fa.set_flow_style()
    return m


def grow(
    fabric: Path, sizes: Mapping[tuple[str, str], int], ports: list[int], first_address: int
) -> list[DemoNode]:
    """Write ``sizes[(site, cluster)]`` node files per cluster; returns the nodes, in address order.

    Raises:
        UsageError: the template has no node in one of the clusters.
    """
    nodes: list[DemoNode] = []
    for (site, cluster), count in sizes.items():
        directory = fabric / "sites" / site / cluster / "nodes"
        templates = sorted(directory.glob("*.yaml"))
        if not templates:
            raise UsageError(
                f"{directory}: the fabric template has no node here; the demo copies its neighbours"
            )
        docs = [_load(p) for p in templates]
        for p in templates:
            p.unlink()
        for i in range(1, count + 1):
            doc = docs[i - 1] if i <= len(docs) else _copy(docs[-1])
            k = len(nodes)
            node = DemoNode(
                name=f"{cluster}-{i:03d}",
                site=site,
                cluster=cluster,
                address=f"127.0.0.{first_address + k}",
                metrics_port=ports[k],
                canary=i == 1,
                file=f"sites/{site}/{cluster}/nodes/{cluster}-{i:03d}.yaml",
            )
            _make_node(doc, node, i)
            _dump(doc, fabric / node.file)
            nodes.append(node)
    return nodes


def _copy(doc: Any) -> Any:
    """A new node like ``doc``, in production (a copy of a draining node would break the fleet share rule)."""
    out = io.StringIO()
    _yaml().dump(doc, out)
    copy = _yaml().load(out.getvalue())
    copy["lifecycle"] = "production"
    return copy


def _make_node(doc: Any, node: DemoNode, index: int) -> None:
    """Point a copied node document at ``node``'s address and metrics port; only the first stays a canary."""
    doc["address"] = node.address
    doc.setdefault("agent", {})["metrics_port"] = node.metrics_port
    # The agent serves on the node's own loopback address, so the check must connect there (default 127.0.0.1).
    doc.setdefault("health", {})["agent-metrics"] = _flow(
        {"tcp": node.metrics_port, "host": node.address}
    )
    profiles = doc.get("profiles")
    if profiles is not None and not node.canary:
        while "canary" in profiles:
            profiles.remove("canary")  # in place: the list keeps its flow style
        if not profiles:
            del doc["profiles"]
    labels = doc.setdefault("labels", {})
    labels["rack"] = _double_quoted(f"{node.cluster[0]}{(index - 1) // 4 + 1:02d}")


def _double_quoted(text: str) -> Any:
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    return DoubleQuotedScalarString(text)


ROLLOUT_YAML = """\
# yaml-language-server: $schema=https://treadle.dev/schemas/v1/rollout.json
#
# The demo's rollout policy: the template's three waves with short soak
# times, and a quarter of each cluster in the middle wave, so that a fabric
# of a few dozen nodes shows all three. A failing canary rolls back.
apiVersion: treadle.dev/v1
kind: RolloutPolicy
description: Canaries first, then a quarter of every cluster, then the rest.

failure_policy: rollback

waves:
  - name: canary
    selector:
      labels:
        canary: "true"
    soak_s: {soak_s}
    timeout_s: {timeout_s}
    failure_budget:
      count: 0

  - name: quarter
    fraction: 0.25
    soak_s: {soak_s}
    timeout_s: {timeout_s}
    failure_budget:
      count: 0

  - name: rest
    fraction: 1.0
    soak_s: 0
    timeout_s: {timeout_s}
    failure_budget:
      count: 0
"""


def adapt(fabric: Path, timing: Any) -> None:
    """The demo's rollout policy: short soaks, and a middle wave large enough to see on a few dozen nodes."""
    (fabric / "rollout.yaml").write_text(
        ROLLOUT_YAML.format(soak_s=timing.soak_s, timeout_s=timing.wave_timeout_s)
    )


def check_and_list_sysctl(fabric: Path) -> list[str]:
    """Render the work tree; returns every sysctl key any node sets.

    Raises:
        UsageError: the grown fabric does not validate (a bug in the demo or the template).
    """
    from treadle.fabric import WorkTreeSource, render_fabric

    result = render_fabric(WorkTreeSource(fabric))
    if not result.ok:
        shown = "\n".join(str(d) for d in result.diagnostics[:10])
        raise UsageError(f"the demo fabric in {fabric} is invalid:\n{shown}")
    return sorted(
        {
            r["key"]
            for n in result.nodes.values()
            for r in n.manifest["resources"]
            if r["type"] == "sysctl"
        }
    )
