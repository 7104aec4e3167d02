"""The ``treadle-agent`` command.

    treadle-agent run   --config agent.toml [--log-format text|json] [--metrics-port-file PATH]
    treadle-agent once  --config agent.toml [--log-format text|json]
    treadle-agent check --config agent.toml [--offline] [--format text|json]
    treadle-agent enroll --config agent.toml [--rotate]

``run`` cycles until SIGTERM or SIGINT and serves /metrics on
``metrics_listen``; with port 0 a free port is bound, logged
(``metrics.serving port=...``) and, with ``--metrics-port-file``, written to
that file once the server listens (for tests and supervisors).
``once`` runs one cycle (for cron, or to try a config) and serves nothing.
``check`` says what a cycle would change and changes nothing (see check.py);
it exits 0 when the node is in sync, 1 when it is not.
``enroll`` creates the node's age identity in the state dir and prints its
public part (see identity.py); it refuses (exit 2) when the node already has
one, unless ``--rotate`` is given.
The daemon checks each new envelope's signatures and schema, and a new or
changed agent.toml against its schema, in short-lived child processes (see
verify.py and config.py); ``once`` does both in-process.

Exit codes (DESIGN.md): 0 the cycle succeeded (``once``) or the daemon stopped
cleanly (``run``); 1 a check failed in the cycle (fetch, verification, an
applied resource, a health check); 2 usage or environment error (a bad
agent.toml, an unusable trust root, an unwritable state dir, a port in use).
Only the agent's own errors are caught; each becomes one line on stderr.
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from treadle_agent import __version__
from treadle_agent.errors import AgentError

if TYPE_CHECKING:
    from treadle_agent.agent import Agent
    from treadle_agent.config import AgentConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


_EXAMPLES = {
    "run": "example:\n  treadle-agent run --config /etc/treadle/agent.toml --log-format json",
    "once": "example:\n  treadle-agent once --config /etc/treadle/agent.toml   # one cycle; exit 0 in sync and healthy",
    "check": "examples:\n  treadle-agent check --config /etc/treadle/agent.toml\n"
    "  treadle-agent check --config /etc/treadle/agent.toml --offline --format json",
    "enroll": "examples:\n  treadle-agent enroll --config /etc/treadle/agent.toml   # prints age1..., for the node file\n"
    "  treadle-agent enroll --config /etc/treadle/agent.toml --rotate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadle-agent",
        description="The Treadle node agent.",
        epilog="example:\n  treadle-agent once --config /etc/treadle/agent.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"treadle-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in (
        ("run", "cycle until stopped, serving /metrics"),
        ("once", "run one cycle and exit"),
        ("check", "show what a cycle would change, changing nothing (exit 0: in sync, 1: not)"),
        (
            "enroll",
            "create this node's age identity and print its public part (identity: in the node file)",
        ),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=_EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", required=True, type=Path, help="path of agent.toml")
        p.add_argument("--log-format", choices=("text", "json"), default="text")
        if name == "run":
            p.add_argument(
                "--metrics-port-file",
                type=Path,
                help="write the bound metrics port here once serving",
            )
        if name == "check":
            p.add_argument(
                "--offline",
                action="store_true",
                help="do not fetch: check the last manifest the agent accepted",
            )
            p.add_argument(
                "--format", choices=("text", "json"), default="text", help="the report on stdout"
            )
        if name == "enroll":
            p.add_argument(
                "--rotate",
                action="store_true",
                help="replace an existing identity (the old one is kept as identity.previous.age)",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from treadle_agent import config as agent_config
    from treadle_agent.contract import log

    log.configure(args.log_format)
    try:
        # The daemon checks agent.toml's schema in a child process, so jsonschema-rs never stays loaded.
        config = agent_config.load(
            args.config,
            isolate_validation=args.command == "run",
            remember=args.command not in ("check", "enroll"),
        )
        if args.command == "enroll":
            return _enroll(config, rotate=args.rotate)
        if args.command == "check":
            return _check(config, args)
        return _run(config, args) if args.command == "run" else _once(config)
    except AgentError as e:
        for line in str(
            e
        ).splitlines():  # several config errors: one line each, each naming the file
            print(f"treadle-agent: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _enroll(config: AgentConfig, *, rotate: bool) -> int:
    from treadle_agent.identity import enroll

    done = enroll(config.state_dir, rotate=rotate)
    if done.rotated_from:
        print(
            f"treadle-agent: rotated: {done.rotated_from} replaced; the old identity is kept as "
            "identity.previous.age until every secret is re-encrypted",
            file=sys.stderr,
        )
    print(
        f"treadle-agent: enrolled: record `identity: {done.recipient}` in this node's file, "
        "then run `treadle secret rekey`",
        file=sys.stderr,
    )
    print(done.recipient)
    return EXIT_OK


def _once(config: AgentConfig) -> int:
    import anyio

    from treadle_agent.agent import Agent

    agent = Agent.from_config(config)
    agent.start()

    async def one() -> bool:
        try:
            return (await agent.cycle()).ok
        finally:
            await agent.fetcher.aclose()

    return EXIT_OK if anyio.run(one) else EXIT_FAILED


def _check(config: AgentConfig, args: argparse.Namespace) -> int:
    import anyio

    from treadle_agent.check import format_json, format_text, run_check

    outcome = anyio.run(lambda: run_check(config, offline=args.offline))
    sys.stdout.write(format_json(outcome) if args.format == "json" else format_text(outcome))
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _run(config: AgentConfig, args: argparse.Namespace) -> int:
    import anyio

    from treadle_agent.agent import Agent
    from treadle_agent.contract.files import write_atomic
    from treadle_agent.contract.log import get_logger

    log = get_logger("agent")
    faulthandler.register(
        signal.SIGUSR1, all_threads=True
    )  # every thread's stack to stderr, for a stuck daemon
    agent = Agent.from_config(config, isolate_verification=True)
    agent.start()
    try:
        server, port = agent.metrics.serve(config.metrics.host, config.metrics.port)
    except OSError as e:
        print(
            f"treadle-agent: error: {config.path}: metrics_listen {config.metrics.host}:{config.metrics.port}: {e.strerror}"
            " (fix: choose a free port, or 0 for any)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    log.info("metrics.serving", host=config.metrics.host, port=port)
    if args.metrics_port_file:
        write_atomic(args.metrics_port_file, f"{port}\n".encode(), mode=0o644)

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, agent)
            await agent.run()
            tg.cancel_scope.cancel()

    try:
        anyio.run(serve)
    finally:
        server.shutdown()
    log.info("agent.stopped")
    return EXIT_OK


async def _stop_on_signal(agent: Agent) -> None:
    import anyio

    from treadle_agent.contract.log import get_logger

    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            get_logger("agent").info("agent.stopping", signal=signal.Signals(signum).name)
            agent.request_stop()


if __name__ == "__main__":
    sys.exit(main())
