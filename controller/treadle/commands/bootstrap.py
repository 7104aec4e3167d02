"""``treadle bootstrap``: what a node's installer runs to hand a fresh node to its agent.

    treadle bootstrap [REPO] NODE  --manifest-url URL --trust-root FILE (--wheelhouse LOC | --agent-wheel LOC)
                                   [--format shell|cloud-init] [--out DIR] [--rev REV] [--agent-unit FILE]
    treadle bootstrap [REPO] --all --out DIR  (same options)

For a node of the fabric it renders one POSIX shell script and a cloud-init
user-data that runs that same script once (:mod:`treadle.provision` says what
the script does, and why nothing secret is in it). Problems of secret files a
new node's enrolment will fix are printed as notes and do not stop a bootstrap.

Exit codes (DESIGN.md): 0 written; 1 the fabric is invalid (every problem
printed); 2 usage or environment error (an unknown or retired node, a bad
trust root file, an unusable URL, no agent unit file).
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

from treadle.errors import UsageError
from treadle.provision import Sources, cloud_config, node_facts, shell_script

#: The unit in a checkout (controller/treadle/commands/ -> the repository root); a wheel does not ship it.
CHECKOUT_UNIT = Path(__file__).resolve().parents[3] / "systemd" / "treadle-agent.service"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bootstrap",
        help="a node's installer data: a shell script and cloud-init user-data",
        usage="treadle bootstrap [-h] [REPO] (NODE | --all --out DIR) --manifest-url URL "
        "--trust-root FILE (--wheelhouse LOC | --agent-wheel LOC) [options]",
        description="Render what hands a fresh node to its agent: a POSIX shell script (kickstart or\n"
        "preseed %post, PXE, by hand) and cloud-init user-data running the same script.\n"
        "It checks the embedded trust root against its pinned sha256, installs the agent\n"
        "into /opt/treadle, writes /etc/treadle/agent.toml and the trust root, enables\n"
        "treadle-agent.service and enrols the node, printing its identity: line.\n"
        "Exit 0 written, 1 the fabric is invalid, 2 usage or environment error.",
        epilog="examples:\n"
        "  treadle bootstrap fabric batch-001 --manifest-url 'https://treadle.example.org/v1/nodes/{node}/manifest' \\\n"
        "      --trust-root /etc/treadle/keys/trust-root.json --wheelhouse https://repo.example.org/treadle/ > batch-001.sh\n"
        "  treadle bootstrap fabric --all --out /srv/install/treadle --rev main --manifest-url URL \\\n"
        "      --trust-root trust-root.json --wheelhouse /media/wheelhouse",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "args",
        nargs="*",
        metavar="[REPO] NODE",
        help="the fabric repository (default: .) and the node",
    )
    p.add_argument("--all", action="store_true", help="every node that is not retired (with --out)")
    p.add_argument(
        "--rev", metavar="REV", help="a git revision (branch, tag, sha) instead of the work tree"
    )
    p.add_argument(
        "--manifest-url",
        dest="manifest_urls",
        action="append",
        required=True,
        metavar="URL",
        help="where the agent fetches its manifest, {node} for the node's name; repeat for mirrors",
    )
    p.add_argument(
        "--trust-root",
        required=True,
        type=Path,
        metavar="FILE",
        help="the trust-root.json to pin on the nodes (treadle keys generate)",
    )
    p.add_argument(
        "--wheelhouse",
        metavar="DIR|URL",
        help="where pip finds the agent's wheel and its dependencies, on the node (no package index)",
    )
    p.add_argument(
        "--agent-wheel", metavar="PATH|URL", help="the agent's wheel on the node or at a URL"
    )
    p.add_argument(
        "--agent-unit",
        type=Path,
        metavar="FILE",
        help="treadle-agent.service to install (default: systemd/ of this checkout)",
    )
    p.add_argument(
        "--format",
        choices=("shell", "cloud-init"),
        default="shell",
        help="what NODE prints on standard output (--out writes both)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="write <node>.sh and <node>.cloud-init.yaml into DIR"
    )
    p.set_defaults(func=cmd_bootstrap)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from treadle_agent.contract.errors import StateError

    repo, node = _positionals(args)
    sources = load_sources(args)
    facts = node_facts(repo, args.rev, None if args.all else node, _note)
    if args.out is None:
        (only,) = facts
        script = shell_script(only, sources)
        sys.stdout.write(script if args.format == "shell" else cloud_config(only, script))
        return 0
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f in facts:
            script = shell_script(f, sources)
            _write(out / f"{f.name}.sh", script, 0o755)
            _write(out / f"{f.name}.cloud-init.yaml", cloud_config(f, script), 0o644)
    except (OSError, StateError) as e:
        raise UsageError(
            f"{out}: cannot write: {getattr(e, 'strerror', None) or e} (fix: choose a writable --out)"
        ) from e
    print(
        f"wrote the bootstrap of {len(facts)} node(s) to {out} (<node>.sh, <node>.cloud-init.yaml); "
        f"trust root sha256 {sources.trust_root_sha256}"
    )
    return 0


def _positionals(args: argparse.Namespace) -> tuple[str, str | None]:
    """``(repo, node)`` from ``[REPO] NODE`` or, with --all, ``[REPO]``."""
    given = list(args.args)
    if args.all:
        if args.out is None:
            raise UsageError("--all needs --out DIR (one script and one user-data per node)")
        if len(given) > 1:
            raise UsageError("--all takes no NODE: treadle bootstrap [REPO] --all --out DIR ...")
        return (given[0] if given else "."), None
    if len(given) not in (1, 2):
        raise UsageError("give a NODE (treadle bootstrap [REPO] NODE ...) or --all --out DIR")
    return (".", given[0]) if len(given) == 1 else (given[0], given[1])


def load_sources(args: argparse.Namespace) -> Sources:
    """The fabric-wide inputs, each checked: the URLs, the trust root, the agent's source and unit.

    Raises:
        UsageError: naming the option and the fix.
    """
    from treadle_agent.contract.errors import ConfigError
    from treadle_agent.contract.trustroot import TrustRoot

    if not args.wheelhouse and not args.agent_wheel:
        raise UsageError(
            "say where the node gets the agent: --wheelhouse DIR|URL (wheel and dependencies, "
            "no index) and/or --agent-wheel PATH|URL"
        )
    urls = tuple(_check_url(u) for u in args.manifest_urls)
    try:
        trust = args.trust_root.read_bytes()
    except OSError as e:
        raise UsageError(f"--trust-root {args.trust_root}: cannot read: {e.strerror}") from e
    try:
        TrustRoot.from_bytes(trust, str(args.trust_root)).check_keys()
        trust.decode("utf-8")  # parse_json accepted it, so it is; the script embeds it as text
    except (ConfigError, UnicodeDecodeError) as e:
        raise UsageError(f"--trust-root {e}") from e
    unit_file = args.agent_unit or CHECKOUT_UNIT
    try:
        unit = unit_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(
            f"{unit_file}: cannot read the agent's unit: {getattr(e, 'strerror', None) or e} "
            "(fix: --agent-unit systemd/treadle-agent.service from Treadle's source release)"
        ) from e
    if "\0" in unit:
        raise UsageError(
            f"{unit_file}: a NUL byte in the agent's unit (fix: --agent-unit with the real unit file)"
        )
    for what, value in (("--wheelhouse", args.wheelhouse), ("--agent-wheel", args.agent_wheel)):
        if value is not None and (not value or any(c in value for c in "\0\n\r")):
            raise UsageError(f"{what} {value!r}: give a path on the node or a URL")
    return Sources(urls, trust, args.wheelhouse, args.agent_wheel, unit)


def _check_url(url: str) -> str:
    """``url`` when the agent will accept it (absolute http or https, a host, no whitespace)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url)
    ):
        raise UsageError(
            f"--manifest-url {url!r}: not an absolute http(s) URL with a host "
            "(fix: e.g. https://treadle.example.org/v1/nodes/{node}/manifest)"
        )
    return url


def _note(line: str) -> None:
    print(f"treadle: note: {line}", file=sys.stderr)


def _write(path: Path, text: str, mode: int) -> None:
    from treadle_agent.contract.files import write_atomic

    write_atomic(path, text.encode("utf-8"), mode=mode)
