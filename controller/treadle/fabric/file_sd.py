"""Prometheus file_sd targets of a fabric's agents: one entry per node that is not retired.

Each entry is the agent's metrics address (``<address>:<agent.metrics_port>``,
the default port when the node file sets none) with the labels node, site,
cluster and lifecycle, sorted by node name so that an unchanged fabric writes
the same bytes; the file is replaced atomically, so a Prometheus watching it
never reads half of it. The command is :mod:`treadle.commands.targets`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from treadle.errors import FabricError, UsageError


def file_sd_entries(src: Any) -> list[dict[str, Any]]:
    """The file_sd entries of every non-retired node of ``src``, sorted by node name.

    Raises:
        FabricError: the fabric is invalid (its diagnostics, all of them).
    """
    from treadle.fabric import ParseCache, render_fabric
    from treadle.fabric.nodefile import node_settings
    from treadle_agent.contract.names import DEFAULT_METRICS_PORT

    cache = ParseCache()
    result = render_fabric(src, cache)
    if not result.ok:
        raise FabricError(result.diagnostics)
    live = [node for _, node in sorted(result.nodes.items()) if node.lifecycle != "retired"]
    settings = node_settings(
        src, cache, result.fabric, live
    )  # node files already parsed by the render
    entries = []
    for node in live:
        name, port = node.name, settings[node.name].metrics_port or DEFAULT_METRICS_PORT
        host = f"[{node.address}]" if ":" in node.address else node.address
        entries.append(
            {
                "targets": [f"{host}:{port}"],
                "labels": {
                    "node": name,
                    "site": node.site,
                    "cluster": node.cluster,
                    "lifecycle": node.lifecycle,
                },
            }
        )
    return entries


def write_targets(out: Path, entries: list[dict[str, Any]]) -> None:
    """Replace ``out`` atomically with ``entries`` as JSON.

    Raises:
        UsageError: the directory does not exist or cannot be written.
    """
    from treadle_agent.contract.errors import StateError
    from treadle_agent.contract.files import write_atomic

    if not out.parent.is_dir():
        raise UsageError(
            f"--out {out}: the directory {out.parent} does not exist; create it or choose another path"
        )
    data = (json.dumps(entries, indent=2, sort_keys=True) + "\n").encode()
    try:
        write_atomic(out, data, mode=0o644)
    except StateError as e:
        raise UsageError(f"--out {out}: {e}; choose a writable path") from e
