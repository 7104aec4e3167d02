"""``treadle targets``: the Prometheus file_sd targets of a fabric's agents.

    treadle targets [REPO] --out FILE [--rev REV]

One entry per node that is not retired: its agent's metrics address
(``<address>:<agent.metrics_port>``, port 9731 when the node file sets none)
and the labels node, site, cluster and lifecycle. The file is replaced
atomically (temp file, fsync, rename), so a Prometheus watching it never reads
half of it; nodes come sorted by name, so an unchanged fabric writes the same
bytes. Run it after every deployed commit (see
observability/prometheus/prometheus.yml).

Exit 0 written, 1 the fabric is invalid (every problem printed), 2 usage or
environment error (the file cannot be written).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from treadle.errors import FabricError, UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("targets", help="write the agents' Prometheus file_sd targets from the fabric",
                       description="Write Prometheus file_sd JSON with one entry per non-retired node: its agent's\n"
                                   "metrics address and the labels node, site, cluster and lifecycle.\n"
                                   "The file is replaced atomically.",
                       epilog="examples:\n  treadle targets --out /etc/prometheus/treadle-agents.json\n"
                              "  treadle targets fabric --rev main --out treadle-agents.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", nargs="?", default=".", metavar="REPO", help="the fabric repository (default: .)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file_sd JSON file to write")
    p.add_argument("--rev", metavar="REV", help="a git revision (branch, tag, sha) instead of the work tree")
    p.set_defaults(func=cmd_targets)


def cmd_targets(args: argparse.Namespace) -> int:
    from treadle.fabric import GitRevisionSource, WorkTreeSource

    src = GitRevisionSource(args.repo, args.rev) if args.rev else WorkTreeSource(args.repo)
    entries = file_sd_entries(src)
    write_targets(Path(args.out), entries)
    print(f"wrote {len(entries)} targets to {args.out}")
    return 0


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
    settings = node_settings(src, cache, result.fabric, live)  # node files already parsed by the render
    entries = []
    for node in live:
        name, port = node.name, settings[node.name].metrics_port or DEFAULT_METRICS_PORT
        host = f"[{node.address}]" if ":" in node.address else node.address
        entries.append({"targets": [f"{host}:{port}"],
                        "labels": {"node": name, "site": node.site, "cluster": node.cluster, "lifecycle": node.lifecycle}})
    return entries


def write_targets(out: Path, entries: list[dict[str, Any]]) -> None:
    """Replace ``out`` atomically with ``entries`` as JSON.

    Raises:
        UsageError: the directory does not exist or cannot be written.
    """
    from treadle_agent.contract.errors import StateError
    from treadle_agent.contract.files import write_atomic

    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the directory {out.parent} does not exist; create it or choose another path")
    data = (json.dumps(entries, indent=2, sort_keys=True) + "\n").encode()
    try:
        write_atomic(out, data, mode=0o644)
    except StateError as e:
        raise UsageError(f"--out {out}: {e}; choose a writable path") from e
