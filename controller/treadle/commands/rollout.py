"""``treadle rollout ...``: operator actions on the controller, over its HTTP API.

    treadle rollout accept-history SHA [--url URL] [--token-file F]   deploy a rewritten history ending at SHA

Operator actions need the controller's admin token (``--token-file``) unless
they come from the controller's own machine and it has no admin_token_file.
"""

from __future__ import annotations

import argparse

from treadle.commands.controller import add_url_argument, api_call


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rollout = sub.add_parser("rollout", help="operator actions on the controller's rollouts")
    actions = rollout.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    accept = actions.add_parser("accept-history", help="accept a rewritten (force-pushed) history ending at SHA")
    accept.add_argument("sha", metavar="SHA", help="the new head commit (full id, or a prefix of the pending one)")
    add_url_argument(accept, operator=True)
    accept.set_defaults(func=_accept_history)


def _accept_history(args: argparse.Namespace) -> int:
    doc = api_call("POST", args.url, "/v1/history/accept", {"commit": args.sha}, token_file=args.token_file)
    print(f"accepted the history ending at {doc['accepted']}; the controller deploys it on its next cycle")
    return 0
