"""``treadle rollout ...``: operator actions on the controller, over its HTTP API.

    treadle rollout list                       the newest rollouts
    treadle rollout show [ID]                  one rollout (default: the newest) with its wave table and events
    treadle rollout pause|resume|approve|abort [ID]
    treadle rollout accept-history SHA         deploy a rewritten history ending at SHA
    (all take --url URL; operator actions also --token-file F)

Exit codes: 0 done; 1 the action does not apply to the rollout's state
(e.g. approving a finished rollout); 2 the controller cannot be reached or the
request is wrong.

Operator actions need the controller's admin token (``--token-file``) unless
they come from the controller's own machine and it has no admin_token_file.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from treadle.commands.controller import add_url_argument
from treadle.daemon.client import api_call
from treadle.errors import UsageError

if TYPE_CHECKING:  # rich loads only when a table is printed
    from rich.console import Console
    from rich.table import Table

STATUS_COLUMNS = ("pending", "applied", "healthy", "failed")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = sub.add_parser(
        "rollout",
        help="operator actions on the controller's rollouts",
        epilog="examples:\n  treadle rollout show\n  treadle rollout resume 12",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = rollout.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    accept = actions.add_parser(
        "accept-history",
        help="accept a rewritten (force-pushed) history ending at SHA",
        epilog="example:\n  treadle rollout accept-history 3f2a9c1d8e7b",
    )
    accept.add_argument(
        "sha", metavar="SHA", help="the new head commit (full id, or a prefix of the pending one)"
    )
    add_url_argument(accept, operator=True)
    accept.set_defaults(func=_accept_history)

    listing = actions.add_parser(
        "list",
        help="the newest rollouts",
        epilog="example: treadle rollout list --url http://ctl:8080",
    )
    add_url_argument(listing)
    listing.set_defaults(func=_list)
    show = actions.add_parser(
        "show",
        help="one rollout: wave table, current wave's nodes, events",
        epilog="example: treadle rollout show 12",
    )
    show.add_argument("id", nargs="?", default="current", help="rollout id (default: the newest)")
    add_url_argument(show)
    show.set_defaults(func=_show)
    for action, text in (
        ("pause", "stop advancing (nodes keep what they have)"),
        ("resume", "continue a paused rollout, or re-check the wave a halted one stopped at"),
        ("approve", "let a wave that waits for approval start"),
        ("abort", "end an active or halted rollout where it is (nodes keep what they have)"),
    ):
        p = actions.add_parser(
            action, help=text, description=text, epilog=f"example: treadle rollout {action} 12"
        )
        p.add_argument("id", nargs="?", default="current", help="rollout id (default: the newest)")
        add_url_argument(p, operator=True)
        p.set_defaults(func=_act, action=action)


def _accept_history(args: argparse.Namespace) -> int:
    doc = api_call(
        "POST", args.url, "/v1/history/accept", {"commit": args.sha}, token_file=args.token_file
    )
    print(
        f"accepted the history ending at {doc['accepted']}; the controller deploys it on its next cycle"
    )
    return 0


def _console() -> Console:
    from rich.console import Console

    return Console()


def _wave_table(doc: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(
        title=f"rollout {doc['id']} of {doc['commit'][:12]}: {doc['state']}"
        + (" (paused)" if doc["paused"] else "")
    )
    table.add_column("wave")
    table.add_column("nodes", justify="right")
    for column in STATUS_COLUMNS:
        table.add_column(column, justify="right")
    table.add_column("soak", justify="right")
    for i, wave in enumerate(doc["waves"]):
        marker = "▶ " if i == doc["wave"] and doc["state"] not in ("complete",) else "  "
        table.add_row(
            marker + wave["name"],
            str(len(wave["nodes"])),
            *(str(wave["status"].get(c, 0)) for c in STATUS_COLUMNS),
            f"{wave['soak_s']}s",
        )
    return table


def _list(args: argparse.Namespace) -> int:
    from rich.table import Table

    docs = api_call("GET", args.url, "/v1/rollouts")["rollouts"]
    table = Table(title="rollouts, newest first")
    for column in ("id", "commit", "state", "wave", "nodes", "reason"):
        table.add_column(column)
    for d in docs:
        wave = d["waves"][d["wave"]]["name"] if d["wave"] < len(d["waves"]) else "-"
        table.add_row(
            str(d["id"]),
            d["commit"][:12],
            d["state"] + (" (paused)" if d["paused"] else ""),
            wave,
            str(sum(len(w["nodes"]) for w in d["waves"])),
            d["reason"],
        )
    _console().print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    doc = api_call("GET", args.url, f"/v1/rollouts/{args.id}")
    console = _console()
    console.print(_wave_table(doc))
    if doc["reason"]:
        console.print(f"reason: {doc['reason']}")
    if doc.get("revert_branch"):
        console.print(
            f"revert branch: {doc['revert_branch']} (merge it to make git match the rollback)"
        )
    if doc.get("hint"):
        console.print(f"next: {doc['hint']}", soft_wrap=True)
    failed = {n: p for n, p in doc["progress"].items() if p["status"] == "failed"}
    for node, p in sorted(failed.items()):
        console.print(f"  failed {node}: {p['reason']}")
    for e in doc["events"][-10:]:
        console.print(f"  {e['at']:.0f}  {e['state']:<14} wave {e['wave']}  {e['reason']}")
    return 0


def _act(args: argparse.Namespace) -> int:
    try:
        doc = api_call(
            "POST",
            args.url,
            f"/v1/rollouts/{args.id}/{args.action}",
            {},
            token_file=args.token_file,
        )
    except UsageError as e:
        if "HTTP 409" in str(e):
            print(f"treadle: error: {e}", file=sys.stderr)
            return 1
        raise
    console = _console()
    console.print(_wave_table(doc))
    if doc.get("outcome"):
        console.print(doc["outcome"], soft_wrap=True)
    if doc.get("hint"):
        console.print(f"next: {doc['hint']}", soft_wrap=True)
    return 0
