"""The ``treadle`` command: one thin dispatcher over the command modules.

Each module in :mod:`treadle.commands` adds its subcommands with
``register(subparsers)``; a subcommand's handler returns the exit code. Only
Treadle's own errors are caught here and turned into one clear line and the
exit code DESIGN.md fixes: 0 success, 1 invalid input or failed check, 2 usage
or environment error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from treadle import __version__
from treadle.errors import FabricError, TreadleError, UsageError

#: Command modules, in the order their commands appear in ``--help``.
COMMAND_MODULES = (
    "treadle.commands.repo",
    "treadle.commands.plan",
    "treadle.commands.schema",
    "treadle.commands.keys",
    "treadle.commands.secret",
    "treadle.commands.bootstrap",
    "treadle.commands.controller",
    "treadle.commands.rollout",
    "treadle.commands.targets",
    "treadle.commands.demo",
)

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(
        self, message: str
    ) -> NoReturn:  # argparse exits 2 on usage errors already; keep its message short
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="treadle",
        description="GitOps controller for datacenter fabrics.",
        epilog="examples:\n  treadle validate my-fabric\n  treadle plan my-fabric origin/main HEAD\n"
        "  treadle status --url http://treadle.example.org:8080",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"treadle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command module is not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FabricError as e:
        for d in e.diagnostics:
            print(d, file=sys.stderr)
        return EXIT_INVALID
    except UsageError as e:
        print(f"treadle: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TreadleError as e:
        print(f"treadle: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
