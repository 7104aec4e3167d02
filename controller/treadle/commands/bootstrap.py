"""``treadle bootstrap``: what a node's installer runs to hand a fresh node to its agent.

    treadle bootstrap [REPO] NODE  --manifest-url URL --trust-root FILE (--wheelhouse LOC | --agent-wheel LOC)
                                   [--format shell|cloud-init] [--out DIR] [--rev REV] [--agent-unit FILE]
    treadle bootstrap [REPO] --all --out DIR  (same options)

For a node of the fabric it renders one POSIX shell script (for a kickstart
or preseed ``%post``, a PXE flow, or by hand) and a cloud-init user-data
(``#cloud-config``) that writes that same script and runs it once, so both
installers do exactly the same thing. The script, run as root on the node:

1. checks the trust root it embeds against the sha256 pinned beside it, and
   stops (exit 1) before changing anything if they differ: a script altered
   or damaged on its way never pins another trust root;
2. installs the agent into the venv ``/opt/treadle`` from a wheelhouse or a
   wheel (README, "Install");
3. writes ``/etc/treadle/agent.toml`` (the node's name, the manifest URLs,
   its metrics port from the node file), the trust root (checked again once
   written) and ``treadle-agent.service``;
4. enrols the node (``treadle-agent enroll``) and prints its public identity
   as the ``identity:`` line of its node file; run again, it prints the
   identity the node already has and never makes a new one;
5. enables the agent's unit, and starts it when systemd is running (in an
   installer's chroot it starts at first boot).

Nothing secret is in the output: the trust root is public keys, the node's
identity is made on the node. Whoever can alter the script in transit can
still alter what it installs, so serve it like the installer itself (HTTPS,
the install network); the pinned digest catches a damaged copy and lets an
admin check a copy (``sh SCRIPT --verify``) against the trust root they hold.

A new node whose profiles deliver secrets makes the fabric invalid until it
is enrolled (a receiving node must have an identity), so such problems are
printed as a note and do not stop a bootstrap (ENROLMENT_CODES): the node
file is written, the node bootstrapped from the work tree, its identity
recorded and the secrets rekeyed, and then it is committed.

Exit codes (DESIGN.md): 0 written; 1 the fabric is invalid (every problem
printed); 2 usage or environment error (an unknown or retired node, a bad
trust root file, an unusable URL, no agent unit file).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shlex
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from treadle.errors import FabricError, UsageError
from treadle_agent.contract.names import DEFAULT_METRICS_PORT

#: Fixed paths on the node: the unit's ExecStart and StateDirectory name them (systemd/treadle-agent.service).
VENV, ETC, STATE_DIR = "/opt/treadle", "/etc/treadle", "/var/lib/treadle"
UNIT_PATH = "/etc/systemd/system/treadle-agent.service"
SCRIPT_PATH = "/usr/local/sbin/treadle-bootstrap"  # where the cloud-init user-data writes the script
#: The unit in a checkout (controller/treadle/commands/ -> the repository root); a wheel does not ship it.
CHECKOUT_UNIT = Path(__file__).resolve().parents[3] / "systemd" / "treadle-agent.service"


@dataclass(frozen=True, slots=True)
class Sources:
    """What every node's script embeds or fetches: the same for the whole fabric."""

    manifest_urls: tuple[str, ...]
    trust_root: bytes  # the trust-root.json file's bytes, embedded as they are
    wheelhouse: str | None  # a directory on the node or a URL (pip --find-links)
    agent_wheel: str | None  # a wheel's path on the node or its URL
    unit: str  # treadle-agent.service

    @property
    def trust_root_sha256(self) -> str:
        return hashlib.sha256(self.trust_root).hexdigest()


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the script needs from the fabric about one node."""

    name: str
    node_file: str  # sites/<site>/<cluster>/nodes/<name>.yaml: where identity: goes
    metrics_port: int
    fabric: str
    commit: str  # the commit rendered, or "work tree"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bootstrap", help="a node's installer data: a shell script and cloud-init user-data",
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
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="[REPO] NODE", help="the fabric repository (default: .) and the node")
    p.add_argument("--all", action="store_true", help="every node that is not retired (with --out)")
    p.add_argument("--rev", metavar="REV", help="a git revision (branch, tag, sha) instead of the work tree")
    p.add_argument("--manifest-url", dest="manifest_urls", action="append", required=True, metavar="URL",
                   help="where the agent fetches its manifest, {node} for the node's name; repeat for mirrors")
    p.add_argument("--trust-root", required=True, type=Path, metavar="FILE",
                   help="the trust-root.json to pin on the nodes (treadle keys generate)")
    p.add_argument("--wheelhouse", metavar="DIR|URL",
                   help="where pip finds the agent's wheel and its dependencies, on the node (no package index)")
    p.add_argument("--agent-wheel", metavar="PATH|URL", help="the agent's wheel on the node or at a URL")
    p.add_argument("--agent-unit", type=Path, metavar="FILE",
                   help="treadle-agent.service to install (default: systemd/ of this checkout)")
    p.add_argument("--format", choices=("shell", "cloud-init"), default="shell",
                   help="what NODE prints on standard output (--out writes both)")
    p.add_argument("--out", metavar="DIR", help="write <node>.sh and <node>.cloud-init.yaml into DIR")
    p.set_defaults(func=cmd_bootstrap)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from treadle_agent.contract.errors import StateError

    repo, node = _positionals(args)
    sources = load_sources(args)
    facts = node_facts(repo, args.rev, None if args.all else node)
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
        raise UsageError(f"{out}: cannot write: {getattr(e, 'strerror', None) or e} (fix: choose a writable --out)") from e
    print(f"wrote the bootstrap of {len(facts)} node(s) to {out} (<node>.sh, <node>.cloud-init.yaml); "
          f"trust root sha256 {sources.trust_root_sha256}")
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
        raise UsageError("say where the node gets the agent: --wheelhouse DIR|URL (wheel and dependencies, "
                         "no index) and/or --agent-wheel PATH|URL")
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
        raise UsageError(f"{unit_file}: cannot read the agent's unit: {getattr(e, 'strerror', None) or e} "
                         "(fix: --agent-unit systemd/treadle-agent.service from Treadle's source release)") from e
    if "\0" in unit:
        raise UsageError(f"{unit_file}: a NUL byte in the agent's unit (fix: --agent-unit with the real unit file)")
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
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url)):
        raise UsageError(f"--manifest-url {url!r}: not an absolute http(s) URL with a host "
                         "(fix: e.g. https://treadle.example.org/v1/nodes/{node}/manifest)")
    return url


#: Problems a bootstrap goes ahead despite: a node's secret files it cannot decrypt yet. The enrolment the
#: script does is their fix (identity:, then `treadle secret rekey`), so a new node whose profiles deliver
#: secrets is bootstrapped from the work tree before its node file can be committed.
ENROLMENT_CODES = frozenset({"secret"})


def node_facts(repo: str, rev: str | None, node: str | None) -> list[NodeFacts]:
    """The facts of ``node`` (or of every node not retired when None), from its node file in the fabric.

    The whole fabric is rendered and checked; problems of secret files
    (ENROLMENT_CODES) are printed as a note, any other problem refuses.

    Raises:
        FabricError: the fabric is invalid (every problem).
        UsageError: no such node, or it is retired.
    """
    from treadle.fabric import GitRevisionSource, ParseCache, WorkTreeSource, render_fabric
    from treadle.fabric.layout import classify
    from treadle.fabric.nodefile import node_settings

    src = GitRevisionSource(repo, rev) if rev else WorkTreeSource(repo)
    cache = ParseCache()
    result = render_fabric(src, cache)
    if any(d.code not in ENROLMENT_CODES for d in result.diagnostics):
        raise FabricError(result.diagnostics)
    for d in result.diagnostics:
        print(f"treadle: note: {d}", file=sys.stderr)
    if result.diagnostics:
        print(f"treadle: note: the fabric cannot be deployed until these {len(result.diagnostics)} secret "
              "problem(s) are fixed: record the identity: the script prints in the node file, then "
              "`treadle secret encrypt` (a new secret) or `treadle secret rekey`, and commit",
              file=sys.stderr)
    refs = {ref.name: ref for ref in classify(src.entries()).nodes}
    if node is not None:
        if node not in refs:
            names = sorted(refs)
            raise UsageError(f"{repo}: no node {node!r} in the fabric{f' at {rev}' if rev else ''} "
                             f"({len(names)} nodes, e.g. {', '.join(names[:10]) or 'none'}; every node is a file "
                             "sites/<site>/<cluster>/nodes/<node>.yaml, `treadle targets` lists them)")
        if result.lifecycles.get(node) == "retired":
            raise UsageError(f"{repo}: node {node!r} is retired: a retired node is not bootstrapped "
                             "(fix: set its lifecycle first)")
        chosen = [refs[node]]
    else:
        chosen = [ref for name, ref in sorted(refs.items()) if result.lifecycles.get(name) != "retired"]
    # node_settings reads name, site and cluster, which a NodeRef has as a rendered node does.
    settings = node_settings(src, cache, result.fabric, chosen)  # type: ignore[arg-type]
    fabric = str(result.fabric.get("name", "?")) if isinstance(result.fabric, dict) else "?"
    return [NodeFacts(ref.name, ref.path, settings[ref.name].metrics_port or DEFAULT_METRICS_PORT, fabric,
                      result.commit or "work tree")
            for ref in chosen]


def agent_toml(facts: NodeFacts, sources: Sources) -> str:
    """The node's agent.toml. Strings are written as JSON strings, which are valid TOML basic strings."""
    import json

    def q(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    urls = ", ".join(q(u) for u in sources.manifest_urls)
    return (f"# Written by the Treadle bootstrap of {facts.name} (fabric {facts.fabric}, {facts.commit}).\n"
            f"node = {q(facts.name)}\n"
            f"manifest_urls = [{urls}]\n"
            f"trust_root = {q(ETC + '/trust-root.json')}\n"
            f"state_dir = {q(STATE_DIR)}\n"
            f"metrics_listen = {q(f'0.0.0.0:{facts.metrics_port}')}\n")


def _pip_args(sources: Sources) -> list[str]:
    args = ["install", "-q", "--disable-pip-version-check", "--upgrade"]
    if sources.wheelhouse:
        args += ["--no-index", "--find-links", sources.wheelhouse]
    return [*args, sources.agent_wheel or "treadle"]


def shell_script(facts: NodeFacts, sources: Sources) -> str:
    """The node's bootstrap as a POSIX shell script (module docstring); every value is shell-quoted."""
    q = shlex.quote
    source = _printable(sources.agent_wheel or sources.wheelhouse or "")
    header = (
        "#!/bin/sh\n"
        "# shellcheck disable=SC2016  # single-quoted values are literal text on purpose\n"
        f"# Treadle bootstrap of node {facts.name} (fabric {facts.fabric}, {facts.commit}), written by\n"
        "# `treadle bootstrap`. Run it as root on the node (cloud-init, kickstart or preseed %post, PXE, by hand):\n"
        "#   1. checks the trust root below against the sha256 pinned here, and stops before changing anything\n"
        "#      if they differ;\n"
        f"#   2. installs the agent into {VENV} (a venv) from {source};\n"
        f"#   3. writes {ETC}/agent.toml, {ETC}/trust-root.json (checked again) and {UNIT_PATH};\n"
        "#   4. enrols the node: its age identity is made here and never leaves it; the script prints the\n"
        f"#      public part, for identity: in {facts.node_file};\n"
        "#   5. enables treadle-agent.service, and starts it when systemd is running.\n"
        "# Running it again installs and writes the same again, and never makes a new identity.\n"
        "# `sh SCRIPT --verify` only checks the embedded trust root against the pinned sha256.\n")
    values = (
        "set -eu\numask 077\n\n"
        "# The values, each quoted as one literal word (the unit's $ and quotes included).\n"
        f"NODE={q(facts.name)}\n"
        f"NODE_FILE={q(facts.node_file)}\n"
        f"TRUST_ROOT_SHA256={sources.trust_root_sha256}\n"
        f"TRUST_ROOT={q(sources.trust_root.decode('utf-8'))}\n"
        f"AGENT_TOML={q(agent_toml(facts, sources))}\n"
        f"AGENT_UNIT={q(sources.unit)}\n"
        f"VENV={VENV}\nETC={ETC}\nSTATE={STATE_DIR}\nUNIT={UNIT_PATH}\n\n")
    pip = " ".join(q(a) for a in _pip_args(sources))
    return header + values + _SCRIPT_BODY.replace("@PIP_ARGS@", pip)


# The steps, fixed text: every value they use is a variable set above, quoted.
_SCRIPT_BODY = r"""say() { printf 'treadle-bootstrap: %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }

# Write $3 to $1, exactly, with mode $2: through a temporary file beside it, then a rename.
put() {
    mkdir -p "$(dirname "$1")" || fail "cannot create the directory of $1"
    tmp="$1.tmp.$$"
    if printf '%s' "$3" > "$tmp" && chmod "$2" "$tmp" && mv -f "$tmp" "$1"; then
        return 0
    fi
    rm -f "$tmp"
    fail "cannot write $1"
}

# Refuse $1 unless its sha256 is the one pinned in this script.
check_trust_root() {
    command -v sha256sum >/dev/null 2>&1 || fail "sha256sum (coreutils) is missing: cannot check the trust root"
    if ! printf '%s  %s\n' "$TRUST_ROOT_SHA256" "$1" | sha256sum -c --status -; then
        fail "$1: the trust root's sha256 is not $TRUST_ROOT_SHA256, the one pinned in this script: the script \
was altered or damaged on its way; nothing was installed (fix: get the script again from \`treadle bootstrap\`)"
    fi
}

case "${1:-}" in
    "" | --verify) ;;
    *) say "usage: sh $0 [--verify]"; exit 2 ;;
esac

# 1. The trust root, checked before anything on the node changes.
work=$(mktemp -d) || fail "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT
printf '%s' "$TRUST_ROOT" > "$work/trust-root.json" || fail "cannot write a temporary file in $work"
check_trust_root "$work/trust-root.json"
if [ "${1:-}" = --verify ]; then
    say "the embedded trust root has the pinned sha256 $TRUST_ROOT_SHA256"
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "run this as root: it installs into $VENV and /etc"

# 2. The agent, in a venv (README, "Install").
command -v python3 >/dev/null 2>&1 || fail "python3 is missing (fix: install python3 and python3-venv, then run this again)"
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || fail "python3's venv module is missing (fix: install it, then run this again)"
    say "installing python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q python3-venv >&2 || { apt-get update -q >&2 && apt-get install -y -q python3-venv >&2; } \
        || fail "cannot install python3-venv"
fi
if [ ! -x "$VENV/bin/pip" ]; then
    python3 -m venv "$VENV" >&2 || fail "cannot create the venv $VENV"
fi
say "installing the agent into $VENV"
"$VENV/bin/pip" @PIP_ARGS@ >&2 || fail "pip could not install the agent into $VENV"
"$VENV/bin/treadle-agent" --version >&2 || fail "$VENV/bin/treadle-agent does not run"

# 3. Its configuration, the trust root (checked again where it lies), its unit.
if ! { mkdir -p "$ETC" && chmod 0755 "$ETC"; }; then fail "cannot create $ETC"; fi
put "$ETC/agent.toml" 0600 "$AGENT_TOML"
put "$ETC/trust-root.json" 0644 "$TRUST_ROOT"
check_trust_root "$ETC/trust-root.json"
put "$UNIT" 0644 "$AGENT_UNIT"

# 4. Enrolment: once. A node that has an identity keeps it (treadle-agent enroll --rotate replaces it).
if ! { mkdir -p "$STATE" && chmod 0700 "$STATE"; }; then fail "cannot create $STATE"; fi
if [ -e "$STATE/identity.age" ]; then
    identity=$("$VENV/bin/python" -c 'import pathlib, sys
from treadle_agent.identity import recipient
print(recipient(pathlib.Path(sys.argv[1])))' "$STATE") || fail "$STATE/identity.age cannot be read"
    say "already enrolled: keeping this node's identity (not enrolling again)"
else
    identity=$("$VENV/bin/treadle-agent" enroll --config "$ETC/agent.toml") || fail "treadle-agent enroll failed"
    say "enrolled: a new identity in $STATE/identity.age"
fi
say "node $NODE: record this line in $NODE_FILE, then run \`treadle secret rekey\` and commit:"
printf 'identity: %s\n' "$identity"

# 5. The agent's unit: enabled; started now when systemd runs (not in an installer's chroot).
command -v systemctl >/dev/null 2>&1 || fail "systemctl is missing: the agent runs under systemd"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || fail "systemctl daemon-reload failed"
    systemctl enable treadle-agent.service || fail "cannot enable treadle-agent.service"
    systemctl restart --no-block treadle-agent.service || fail "cannot start treadle-agent.service"
    say "treadle-agent.service enabled and started"
else
    systemctl enable treadle-agent.service || fail "cannot enable treadle-agent.service"
    say "treadle-agent.service enabled; it starts at the next boot"
fi
"""


def cloud_config(facts: NodeFacts, script: str) -> str:
    """cloud-init user-data that writes ``script`` to SCRIPT_PATH and runs it once, at first boot."""
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import LiteralScalarString

    doc = {
        "write_files": [{"path": SCRIPT_PATH, "owner": "root:root", "permissions": "0700",
                         "content": LiteralScalarString(script)}],
        "runcmd": [["sh", SCRIPT_PATH]],
    }
    yaml = YAML()
    yaml.width = 4096
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return ("#cloud-config\n"
            f"# Treadle bootstrap of node {facts.name} (fabric {facts.fabric}, {facts.commit}), written by\n"
            f"# `treadle bootstrap`: cloud-init writes the script to {SCRIPT_PATH} and runs it once.\n"
            "# Its output, with the node's identity: line, is in /var/log/cloud-init-output.log.\n"
            + buf.getvalue())


def _printable(text: str) -> str:
    """``text`` for a comment line of the script: a line break or control character there would end the comment."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _write(path: Path, text: str, mode: int) -> None:
    from treadle_agent.contract.files import write_atomic

    write_atomic(path, text.encode("utf-8"), mode=mode)
