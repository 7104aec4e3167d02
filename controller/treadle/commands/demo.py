"""``treadle demo``: the whole system on one machine, on its own.

    treadle demo [--nodes N] [--keep-running] [--workspace DIR] [--fast]

Builds a workspace (a fabric grown from the template, a bare repository,
keys, configs), starts a real controller and N real agents, plays the story
of :mod:`treadle.demo.story`, prints a summary and stops every process it
started (also on Ctrl-C and SIGTERM). ``--keep-running`` leaves the fabric up
until Ctrl-C. The outcome is also written to ``summary.json`` in the
workspace.

Exit 0 when every scene passed, 1 when one failed, 2 on a usage or
environment error (a non-empty workspace, git missing, a process that could
not start).
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import tempfile
from pathlib import Path

EXIT_OK, EXIT_FAILED = 0, 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run a whole fabric on this machine and play a short story",
        description="Start a real controller and N real agents on loopback addresses, each agent\n"
        "applying into its own directory, then show a change rolling out wave by\n"
        "wave, a bad change rolled back, and a node going to maintenance.\n"
        "Exit 0 when every scene passed, 1 otherwise, 2 on an environment error.",
        epilog="examples:\n  treadle demo\n  treadle demo --nodes 8 --fast\n"
        "  treadle demo --keep-running --workspace /tmp/fabric-demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--nodes", type=int, default=24, metavar="N", help="how many nodes (default 24, 8..200)"
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the fabric running after the story, until Ctrl-C",
    )
    p.add_argument(
        "--workspace",
        metavar="DIR",
        help="where to build everything (default: a new temporary directory)",
    )
    p.add_argument("--fast", action="store_true", help="shorter soak times and intervals (for CI)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from treadle.demo import workspace
    from treadle.demo.play import play
    from treadle.demo.processes import sigterm_as_interrupt

    workspace.cluster_sizes(args.nodes)  # a bad --nodes is a usage error before anything is created
    root = (
        Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="treadle-demo-"))
    )
    timing = workspace.Timing.fast() if args.fast else workspace.Timing()
    faulthandler.register(
        signal.SIGUSR1, all_threads=True
    )  # every thread's stack to stderr, if it seems stuck
    with sigterm_as_interrupt():
        return EXIT_OK if play(root, args.nodes, timing, args.keep_running) else EXIT_FAILED
