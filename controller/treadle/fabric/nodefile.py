"""Settings of a node file that are not part of its manifest: its pinned rollout wave and its agent's metrics port.

The rollout (which wave a node joins, where its agent reports) needs them, the
manifest does not, so they are read from the node files themselves through
the parse cache: a file already parsed for the render is not parsed again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from treadle.fabric.cache import ParseCache
from treadle.fabric.layout import SITE_DIR
from treadle.fabric.render import RenderedNode
from treadle.fabric.source import Source, entries_of
from treadle.fabric.yamlload import Limits


@dataclass(frozen=True, slots=True)
class NodeSettings:
    pinned_wave: str | None = None
    metrics_port: int | None = None


def node_path(site: str, cluster: str, name: str) -> str:
    """The node file of a node (DESIGN.md's layout)."""
    return f"{SITE_DIR}{site}/{cluster}/nodes/{name}.yaml"


def node_settings(
    src: Source, cache: ParseCache, fabric: Mapping[str, Any], nodes: Iterable[RenderedNode]
) -> dict[str, NodeSettings]:
    """``rollout.wave`` and ``agent.metrics_port`` of each node's file (defaults where unset)."""
    entries = entries_of(src)  # a push's few nodes: no copy of the whole listing
    limits = Limits.from_fabric(fabric)
    found: dict[str, NodeSettings] = {}
    for node in nodes:
        path = node_path(node.site, node.cluster, node.name)
        doc: Any = None
        if path in entries:
            doc = cache.parse(entries[path], lambda p=path: src.read(p), limits).doc  # type: ignore[misc]
        doc = doc if isinstance(doc, dict) else {}
        rollout, agent = doc.get("rollout"), doc.get("agent")
        wave = rollout.get("wave") if isinstance(rollout, dict) else None
        port = agent.get("metrics_port") if isinstance(agent, dict) else None
        found[node.name] = NodeSettings(
            wave if isinstance(wave, str) else None, port if type(port) is int else None
        )
    return found
