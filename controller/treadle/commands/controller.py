"""``treadle controller run`` and ``treadle status``.

``status`` talks to a running controller over its HTTP API (``--url``, or
``TREADLE_URL``, default ``http://127.0.0.1:8080``) and prints ``/v1/status``
as a table; ``--format json`` prints the document itself for scripts. It
exits 1 while a rewritten history waits for ``treadle rollout accept-history``
(a check a script should notice), 2 when the controller cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from treadle.daemon.client import DEFAULT_URL, api_call

EXIT_OK, EXIT_PROBLEM = 0, 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = sub.add_parser(
        "controller",
        help="run the controller daemon",
        epilog="example:\n  treadle controller run --config /etc/treadle/controller.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl_sub = ctl.add_subparsers(dest="controller_command", metavar="ACTION", required=True)
    run = ctl_sub.add_parser(
        "run",
        help="watch git, render, sign and publish; serve the API",
        description="Watch git, render, sign and publish; serve the API until SIGTERM.",
        epilog="example:\n  treadle controller run --config /etc/treadle/controller.toml --log-format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", required=True, help="path of controller.toml")
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="one line per event, as text or JSON",
    )
    run.set_defaults(func=_run)

    status = sub.add_parser(
        "status",
        help="show the controller's deployed commit, refusals and node counts",
        epilog="examples:\n  treadle status --url http://treadle.example.org:8080\n"
        "  treadle status --node batch-001\n  treadle status --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_url_argument(status)
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.add_argument(
        "--node",
        metavar="N",
        help="one node: what it runs, since when, its rollout wave and what its agent "
        "reports now (exit 1 when it is not in sync and healthy)",
    )
    status.set_defaults(func=_status)

    history = sub.add_parser(
        "history",
        help="the generations published for a node: commit, author, time, why",
        epilog="example:\n  treadle history batch-001 --url http://treadle.example.org:8080",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    history.add_argument("node", metavar="N")
    add_url_argument(history)
    history.add_argument("--format", choices=("table", "json"), default="table")
    history.set_defaults(func=_history)


def add_url_argument(parser: argparse.ArgumentParser, *, operator: bool = False) -> None:
    """``--url`` and, for operator actions, ``--token-file`` (the controller's admin_token_file)."""
    parser.add_argument(
        "--url",
        default=os.environ.get("TREADLE_URL", DEFAULT_URL),
        help=f"controller API base URL (default $TREADLE_URL or {DEFAULT_URL})",
    )
    if operator:
        parser.add_argument(
            "--token-file",
            default=os.environ.get("TREADLE_TOKEN_FILE"),
            help="file with the controller's admin token (default $TREADLE_TOKEN_FILE; "
            "not needed on the controller's own machine without admin_token_file)",
        )


def _run(args: argparse.Namespace) -> int:
    from treadle import log
    from treadle.daemon import config
    from treadle.daemon import process as daemon

    log.configure(as_json=args.log_format == "json")
    daemon.run(config.load(args.config))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    if args.node:
        return _node_status(args)
    doc = api_call("GET", args.url, "/v1/status")
    if args.format == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print_status(doc)
    return EXIT_PROBLEM if doc.get("pending_history_acceptance") else EXIT_OK


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _node_status(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    doc = api_call("GET", args.url, f"/v1/nodes/{quote(args.node, safe='')}")
    obs = doc.get("observation") or {}
    published = doc["published"]
    in_sync = bool(
        obs.get("reachable")
        and obs.get("healthy")
        and obs.get("applied_generation") == published["generation"]
        and obs.get("last_apply_success")
    )
    if args.format == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
        return EXIT_OK if in_sync else EXIT_PROBLEM
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"node {doc['node']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row(
        "lifecycle", doc["lifecycle"] + ("" if doc["present"] else " (removed from the fabric)")
    )
    table.add_row(
        "where",
        f"site {doc.get('site')}, cluster {doc.get('cluster')}, address {doc.get('address')}",
    )
    table.add_row("labels", ", ".join(f"{k}={v}" for k, v in sorted(doc["labels"].items())) or "-")
    table.add_row(
        "published",
        f"generation {published['generation']} of commit {published['commit'] or '-'}, "
        f"since {_when(published.get('since'))}",
    )
    rollout = doc.get("rollout")
    if rollout:
        table.add_row(
            "rollout",
            f"{rollout['id']} of {rollout['commit'][:12]} ({rollout['state']}): wave {rollout['wave']}, "
            f"{rollout['status']}" + (f": {rollout['reason']}" if rollout.get("reason") else ""),
        )
    if not obs:
        table.add_row("agent", "-")
    elif not obs.get("reachable"):
        table.add_row("agent", f"unreachable at {_when(obs.get('at'))}: {obs.get('error')}")
    else:
        checks = (
            ", ".join(
                f"{c} {'up' if up else 'DOWN'}" for c, up in sorted(obs["health_checks"].items())
            )
            or "none"
        )
        res = obs["resources"]
        table.add_row(
            "agent",
            f"applied generation {obs.get('applied_generation')} "
            f"({'ok' if obs.get('last_apply_success') else 'FAILED'} at {_when(obs.get('last_apply_at'))}), "
            f"{'healthy' if obs.get('healthy') else 'UNHEALTHY'}; agent {obs.get('version')}",
        )
        table.add_row("health checks", checks)
        table.add_row(
            "resources",
            f"{res['in_sync']} in sync, {res['drifted']} drifted, {res['failed']} failed",
        )
    Console(file=sys.stdout, soft_wrap=True).print(table)
    return EXIT_OK if in_sync else EXIT_PROBLEM


def _history(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    doc = api_call("GET", args.url, f"/v1/nodes/{quote(args.node, safe='')}/history")
    if args.format == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"generations published for {doc['node']}, newest first")
    for column in ("generation", "commit", "author", "published", "why"):
        table.add_column(column)
    for h in doc["history"]:
        table.add_row(
            str(h["generation"]),
            (h["commit"] or "-")[:12],
            h["author"] or "-",
            _when(h["at"]),
            h["why"],
        )
    Console(file=sys.stdout, soft_wrap=True).print(table)
    return EXIT_OK


def print_status(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, soft_wrap=True)
    table = Table(title="Treadle controller", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("repository", f"{doc.get('repository')} ({doc.get('branch')})")
    table.add_row("deployed commit", doc.get("deployed_commit") or "(none yet)")
    nodes = doc.get("nodes", {})
    by = ", ".join(f"{k} {v}" for k, v in nodes.get("by_lifecycle", {}).items())
    table.add_row("nodes", f"{nodes.get('total', 0)}" + (f" ({by})" if by else ""))
    rollout = doc.get("rollout")
    if rollout:
        text = f"{rollout['id']} of {rollout['commit'][:12]}: {rollout['state']}" + (
            " (paused)" if rollout["paused"] else ""
        )
        if rollout.get("reason"):
            text += f"\n{rollout['reason']}"
        if rollout.get("revert_branch"):
            text += f"\nrevert branch: {rollout['revert_branch']}"
        if rollout.get("hint"):
            text += f"\nnext: {rollout['hint']}"
        table.add_row(
            "rollout",
            text
            + f"\n(`treadle rollout show {rollout['id']}` for the wave table and failed nodes)",
        )
    if doc.get("pending_history_acceptance"):
        sha = doc["pending_history_acceptance"]
        table.add_row(
            "pending",
            f"history rewrite to {sha}: `treadle rollout accept-history {sha}` to deploy it",
        )
    refusal = doc.get("last_refusal")
    if refusal:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(refusal["at"]))
        table.add_row(
            "last refusal",
            f"{refusal['commit']} ({refusal['reason']}, {when} UTC)\n{refusal['message']}",
        )
        if refusal.get("diagnostics"):
            table.add_row("diagnostics", "\n".join(refusal["diagnostics"]))
    cycle = doc.get("last_cycle") or {}
    if cycle:
        table.add_row("last cycle", f"{cycle.get('result')} {cycle.get('commit') or ''}".strip())
    console.print(table)
