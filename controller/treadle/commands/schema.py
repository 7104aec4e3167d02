"""``treadle schema export DIR``: write every JSON Schema Treadle ships, for editors and other tools.

The files are the ones inside the installed package (treadle_schemas), so an
editor pointed at DIR (or at the published ``https://treadle.dev/schemas/v1/``
copies) checks what ``treadle validate`` checks, with one addition: in
overlay.json every key of the overlay body may also be empty, which is what an
editor's YAML language server makes of ``key: !delete``
(:func:`treadle_schemas.for_editors`). Existing files of the same name are
replaced.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import treadle_schemas
from treadle.errors import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "schema",
        help="JSON Schemas of every file format",
        epilog="example:\n  treadle schema export .schemas",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="schema_command", metavar="ACTION", required=True)
    e = actions.add_parser(
        "export",
        help="write every schema file into DIR",
        description="Write every JSON Schema shipped with Treadle into DIR (created if missing), "
        "e.g. for an editor's YAML language server.",
        epilog="example:\n  treadle schema export .schemas",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("dir", type=Path, metavar="DIR")
    e.set_defaults(func=cmd_export)


def export(target: Path) -> list[Path]:
    """Write each schema file into ``target``; returns the paths written, sorted.

    Raises:
        UsageError: ``target`` cannot be created or written.
    """
    try:
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for name in treadle_schemas.names():
            path = target / name
            path.write_text(
                json.dumps(treadle_schemas.for_editors(name), indent=2) + "\n", encoding="utf-8"
            )
            written.append(path)
    except OSError as e:
        raise UsageError(
            f"{target}: cannot write schemas: {e.strerror} (give a writable directory)"
        ) from e
    return written


def cmd_export(args: argparse.Namespace) -> int:
    for path in export(args.dir):
        print(path)
    return 0
