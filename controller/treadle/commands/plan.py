"""``treadle plan [REPO] BASE HEAD``: what merging HEAD onto BASE does to which nodes, and how it rolls out.

Prints the plan as Markdown (a pull-request comment) or JSON (schemas/plan.json).
Exit codes (DESIGN.md): 0 HEAD is valid; 1 HEAD is invalid or refused (the
report is still printed, with every error); 2 usage error (no such revision,
not a git repository).
"""

from __future__ import annotations

import argparse
import sys

from treadle.errors import UsageError
from treadle.review.jsonreport import render_json
from treadle.review.markdown import MarkdownLimits, render_markdown
from treadle.review.plan import PlanSettings, build_plan


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan",
        help="the plan a reviewer approves: changed nodes, diffs, sources, rollout waves",
        description="Render BASE and HEAD and report what the change does: nodes changed, added and "
        "removed by site and cluster, lifecycle transitions, nodes grouped by identical "
        "change with a diff, where each changed value comes from in HEAD, HEAD's errors "
        "and refusals, and the rollout waves. Exit 0 HEAD valid, 1 invalid, 2 usage error.",
        epilog="examples:\n  treadle plan origin/main HEAD\n"
        "  treadle plan fabric main feature --format json\n"
        "  treadle plan origin/main HEAD --max-nodes 50 > plan.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="+", metavar="[REPO] BASE HEAD")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown")
    p.add_argument(
        "--max-nodes",
        type=_positive,
        default=20,
        metavar="N",
        help="node names listed per group before the list is collapsed (default 20)",
    )
    p.add_argument(
        "--full-render",
        action="store_true",
        help="render every node of both revisions, not only those the change can affect, so that the "
        "verdict also covers problems of untouched nodes (as `treadle validate` does)",
    )
    p.set_defaults(func=cmd_plan)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number (give a positive integer)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1 (give a positive integer)")
    return value


def cmd_plan(args: argparse.Namespace) -> int:
    if len(args.args) not in (2, 3):
        raise UsageError(
            f"plan takes [REPO] BASE HEAD, got {len(args.args)} argument(s): {' '.join(args.args)}"
        )
    repo, base, head = args.args if len(args.args) == 3 else (".", *args.args)
    plan = build_plan(repo, base, head, PlanSettings(full_render=args.full_render))
    if args.format == "json":
        sys.stdout.write(render_json(plan))
    else:
        sys.stdout.write(render_markdown(plan, MarkdownLimits(max_nodes=args.max_nodes)))
    return 0 if plan.ok else 1
