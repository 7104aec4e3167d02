"""What a fresh node needs to join the fabric: its agent.toml, a bootstrap script, cloud-init user-data.

For a node of the fabric this renders one POSIX shell script (for a kickstart
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
passed on as notes and do not stop a bootstrap (ENROLMENT_CODES): the node
file is written, the node bootstrapped from the work tree, its identity
recorded and the secrets rekeyed, and then it is committed.

The command is :mod:`treadle.commands.bootstrap`.
"""

from __future__ import annotations

import hashlib
import io
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from treadle.errors import FabricError, UsageError
from treadle_agent.contract.names import DEFAULT_METRICS_PORT

#: Fixed paths on the node: the unit's ExecStart and StateDirectory name them (systemd/treadle-agent.service).
VENV, ETC, STATE_DIR = "/opt/treadle", "/etc/treadle", "/var/lib/treadle"
UNIT_PATH = "/etc/systemd/system/treadle-agent.service"
SCRIPT_PATH = (
    "/usr/local/sbin/treadle-bootstrap"  # where the cloud-init user-data writes the script
)


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


#: Problems a bootstrap goes ahead despite: a node's secret files it cannot decrypt yet. The enrolment the
#: script does is their fix (identity:, then `treadle secret rekey`), so a new node whose profiles deliver
#: secrets is bootstrapped from the work tree before its node file can be committed.
ENROLMENT_CODES = frozenset({"secret"})


def node_facts(
    repo: str, rev: str | None, node: str | None, note: Callable[[str], None]
) -> list[NodeFacts]:
    """The facts of ``node`` (or of every node not retired when None), from its node file in the fabric.

    The whole fabric is rendered and checked; problems of secret files
    (ENROLMENT_CODES) are passed to ``note`` (one line each), any other problem refuses.

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
        note(str(d))
    if result.diagnostics:
        note(
            f"the fabric cannot be deployed until these {len(result.diagnostics)} secret "
            "problem(s) are fixed: record the identity: the script prints in the node file, then "
            "`treadle secret encrypt` (a new secret) or `treadle secret rekey`, and commit"
        )
    refs = {ref.name: ref for ref in classify(src.entries()).nodes}
    if node is not None:
        if node not in refs:
            names = sorted(refs)
            raise UsageError(
                f"{repo}: no node {node!r} in the fabric{f' at {rev}' if rev else ''} "
                f"({len(names)} nodes, e.g. {', '.join(names[:10]) or 'none'}; every node is a file "
                "sites/<site>/<cluster>/nodes/<node>.yaml, `treadle targets` lists them)"
            )
        if result.lifecycles.get(node) == "retired":
            raise UsageError(
                f"{repo}: node {node!r} is retired: a retired node is not bootstrapped "
                "(fix: set its lifecycle first)"
            )
        chosen = [refs[node]]
    else:
        chosen = [
            ref for name, ref in sorted(refs.items()) if result.lifecycles.get(name) != "retired"
        ]
    # node_settings reads name, site and cluster, which a NodeRef has as a rendered node does.
    settings = node_settings(src, cache, result.fabric, chosen)  # type: ignore[arg-type]
    fabric = str(result.fabric.get("name", "?")) if isinstance(result.fabric, dict) else "?"
    return [
        NodeFacts(
            ref.name,
            ref.path,
            settings[ref.name].metrics_port or DEFAULT_METRICS_PORT,
            fabric,
            result.commit or "work tree",
        )
        for ref in chosen
    ]


def agent_toml(facts: NodeFacts, sources: Sources) -> str:
    """The node's agent.toml. Strings are written as JSON strings, which are valid TOML basic strings."""
    import json

    def q(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    urls = ", ".join(q(u) for u in sources.manifest_urls)
    return (
        f"# Written by the Treadle bootstrap of {facts.name} (fabric {facts.fabric}, {facts.commit}).\n"
        f"node = {q(facts.name)}\n"
        f"manifest_urls = [{urls}]\n"
        f"trust_root = {q(ETC + '/trust-root.json')}\n"
        f"state_dir = {q(STATE_DIR)}\n"
        f"metrics_listen = {q(f'0.0.0.0:{facts.metrics_port}')}\n"
    )


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
        "# `sh SCRIPT --verify` only checks the embedded trust root against the pinned sha256.\n"
    )
    values = (
        "set -eu\numask 077\n\n"
        "# The values, each quoted as one literal word (the unit's $ and quotes included).\n"
        f"NODE={q(facts.name)}\n"
        f"NODE_FILE={q(facts.node_file)}\n"
        f"TRUST_ROOT_SHA256={sources.trust_root_sha256}\n"
        f"TRUST_ROOT={q(sources.trust_root.decode('utf-8'))}\n"
        f"AGENT_TOML={q(agent_toml(facts, sources))}\n"
        f"AGENT_UNIT={q(sources.unit)}\n"
        f"VENV={VENV}\nETC={ETC}\nSTATE={STATE_DIR}\nUNIT={UNIT_PATH}\n\n"
    )
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
        "write_files": [
            {
                "path": SCRIPT_PATH,
                "owner": "root:root",
                "permissions": "0700",
                "content": LiteralScalarString(script),
            }
        ],
        "runcmd": [["sh", SCRIPT_PATH]],
    }
    yaml = YAML()
    yaml.width = 4096
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return (
        "#cloud-config\n"
        f"# Treadle bootstrap of node {facts.name} (fabric {facts.fabric}, {facts.commit}), written by\n"
        f"# `treadle bootstrap`: cloud-init writes the script to {SCRIPT_PATH} and runs it once.\n"
        "# Its output, with the node's identity: line, is in /var/log/cloud-init-output.log.\n"
        + buf.getvalue()
    )


def _printable(text: str) -> str:
    """``text`` for a comment line of the script: a line break or control character there would end the comment."""
    return "".join(c if c.isprintable() else "?" for c in text)
