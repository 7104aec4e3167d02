"""``treadle init | validate | render | explain``: the fabric repository from the command line.

Exit codes (DESIGN.md): 0 success; 1 the fabric is invalid, every problem
printed as ``file:line:col: message (hint: ...)``; 2 usage or environment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from treadle.errors import FabricError, UsageError
from treadle.fabric import (
    GitRevisionSource,
    ParseCache,
    RenderResult,
    WorkTreeSource,
    explain,
    keyscan,
    render_fabric,
)
from treadle.fabric.scaffold import new_fabric
from treadle.fabric.source import Source


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init",
        help="create a new fabric repository from the example template",
        description="Copy the example fabric into DIR (which must be empty or absent).\n"
        "When git is installed, DIR becomes a git repository with the template\n"
        "as its first commit (branch main).",
        epilog="example:\n  treadle init my-fabric && treadle validate my-fabric",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "validate",
        help="check a fabric repository: every problem, located",
        description="Load, render and check every node of the fabric; print every problem as\n"
        "file:line:col: message (hint: ...).\n"
        "Exit 0 valid, 1 invalid, 2 usage or environment error.",
        epilog="examples:\n  treadle validate                       # the work tree in .\n"
        "  treadle validate fabric --rev HEAD~1   # a committed revision\n"
        "  treadle validate --rev HEAD --base origin/main --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _repo_args(p)
    p.add_argument(
        "--base", metavar="REV", help="base revision: also check lifecycle transitions from it"
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: one report on standard output",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "render",
        help="print one node's manifest, or write all of them",
        description="Render the fabric and print one node's canonical manifest JSON, or write\n"
        "<node>.json for every node into a directory. An invalid fabric is\n"
        "refused with every problem (exit 1).",
        epilog="examples:\n  treadle render --node batch-001\n  treadle render fabric --all --out /tmp/manifests --rev main",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _repo_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--node", metavar="N", help="the node to print")
    which.add_argument("--all", action="store_true", help="every node (with --out)")
    p.add_argument("--out", metavar="DIR", help="directory for --all")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "explain",
        help="which overlays set a node's value, and who committed them",
        usage="treadle explain [-h] [--rev REV] [REPO] NODE KEYPATH",
        description="Show the chain of overlays that set KEYPATH for NODE, the winner first,\n"
        "each with file:line:col and, inside a git repository, the commit, author\n"
        "and date that last changed that line. KEYPATH starts with an overlay field\n"
        "(data, labels, files, directories, symlinks, packages, services, sysctl,\n"
        "health) or a node field (address, lifecycle).",
        epilog="examples:\n  treadle explain batch-001 files./etc/chrony.conf.mode\n"
        "  treadle explain fabric batch-001 data.ntp.servers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "args",
        nargs="+",
        metavar="[REPO] NODE KEYPATH",
        help="the fabric repository (default: .), the node, the key path",
    )
    p.add_argument("--rev", metavar="REV", help="explain a git revision instead of the work tree")
    p.set_defaults(func=cmd_explain)


def _repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "repo", nargs="?", default=".", metavar="REPO", help="the fabric repository (default: .)"
    )
    p.add_argument(
        "--rev", metavar="REV", help="a git revision (branch, tag, sha) instead of the work tree"
    )


def _source(repo: str, rev: str | None) -> Source:
    return GitRevisionSource(repo, rev) if rev else WorkTreeSource(repo)


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    committed = new_fabric(
        target, warn=lambda line: print(f"treadle: warning: {line}", file=sys.stderr)
    )
    print(
        f"created fabric repository {target}"
        + (" (git repository, first commit made)" if committed else "")
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    cache = ParseCache()
    base = GitRevisionSource(args.repo, args.base) if args.base else None
    source = _source(args.repo, args.rev)
    result = render_fabric(source, cache, base=base)
    diagnostics = sorted({*result.diagnostics, *keyscan.scan(source)})
    if args.format == "json":
        print(
            json.dumps(
                {
                    "ok": not diagnostics,
                    "commit": result.commit,
                    "nodes": len(result.nodes),
                    "unchecked": sorted(result.unchecked),
                    "diagnostics": [d.as_dict() for d in diagnostics],
                },
                indent=2,
            )
        )
        return 0 if not diagnostics else 1
    if diagnostics:
        for d in diagnostics:
            print(d, file=sys.stderr)
        print(
            f"invalid: {len(diagnostics)} problem(s); {len(result.nodes)} node(s) rendered and checked, "
            f"{len(result.unchecked)} not rendered because a file they use has errors",
            file=sys.stderr,
        )
        return 1
    print(f"ok: {len(result.nodes)} nodes valid")
    return 0


def _rendered(args: argparse.Namespace) -> RenderResult:
    result = render_fabric(_source(args.repo, args.rev))
    if not result.ok:
        raise FabricError(result.diagnostics)
    return result


def cmd_render(args: argparse.Namespace) -> int:
    if args.all and not args.out:
        raise UsageError("--all needs --out DIR")
    if args.node and args.out:
        raise UsageError("--out goes with --all; --node prints to standard output")
    result = _rendered(args)
    if args.node:
        node = result.nodes.get(args.node)
        if node is None:
            raise UsageError(
                f"no node {args.node!r} (nodes: {', '.join(sorted(result.nodes)[:20])})"
            )
        sys.stdout.buffer.write(node.canonical + b"\n")
        sys.stdout.flush()
        return 0
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, node in sorted(result.nodes.items()):
            (out / f"{name}.json").write_bytes(node.canonical)
    except OSError as e:
        raise UsageError(f"{out}: cannot write: {e.strerror}") from e
    print(f"wrote {len(result.nodes)} manifests to {out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    if len(args.args) not in (2, 3):
        raise UsageError("usage: treadle explain [REPO] NODE KEYPATH")
    repo, node, keypath = (".", *args.args) if len(args.args) == 2 else args.args
    chain = explain(_source(repo, args.rev), node, keypath)
    if not chain:
        print(f"{keypath} is not set for {node}", file=sys.stderr)
        return 1
    print(f"{node} {keypath}, set by (winner first):")
    for p in chain:
        verb = {"set": "=", "append": "+=", "merge": "merges", "replace": "replaces with"}[p.how]
        print(f"  {p.file}:{p.line}:{p.col}  {verb} {_show(p.value)}")
        if p.blame is not None:
            print(
                f"      {p.blame.commit or 'uncommitted'}  {p.blame.author}  {p.blame.date or ''}".rstrip()
            )
    return 0


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
