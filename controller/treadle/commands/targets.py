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
from pathlib import Path

from treadle.fabric.file_sd import file_sd_entries, write_targets


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "targets",
        help="write the agents' Prometheus file_sd targets from the fabric",
        description="Write Prometheus file_sd JSON with one entry per non-retired node: its agent's\n"
        "metrics address and the labels node, site, cluster and lifecycle.\n"
        "The file is replaced atomically.",
        epilog="examples:\n  treadle targets --out /etc/prometheus/treadle-agents.json\n"
        "  treadle targets fabric --rev main --out treadle-agents.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "repo", nargs="?", default=".", metavar="REPO", help="the fabric repository (default: .)"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the file_sd JSON file to write")
    p.add_argument(
        "--rev", metavar="REV", help="a git revision (branch, tag, sha) instead of the work tree"
    )
    p.set_defaults(func=cmd_targets)


def cmd_targets(args: argparse.Namespace) -> int:
    from treadle.fabric import GitRevisionSource, WorkTreeSource

    src = GitRevisionSource(args.repo, args.rev) if args.rev else WorkTreeSource(args.repo)
    entries = file_sd_entries(src)
    write_targets(Path(args.out), entries)
    print(f"wrote {len(entries)} targets to {args.out}")
    return 0
