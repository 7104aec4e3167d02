"""The writing side of secret files: who a secret is encrypted to, and the encryption (:mod:`.secrets` reads them).

A secret goes to exactly the nodes whose files name it (their ``identity:``)
and fabric.yaml's ``secrets.admins``; the list is written beside the
ciphertext as ``secrets/<name>.recipients``. The commands are
:mod:`treadle.commands.secret`'s; the controller never runs this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from treadle.errors import UsageError
from treadle.fabric.secrets import SECRET_DIR, format_recipients, recipients_path


def recipients_for(
    repo: str, name: str, receivers: dict[str, list[tuple[str, str | None]]], fabric: dict[str, Any]
) -> dict[str, str]:
    """``{recipient: who}`` secret ``name`` must be encrypted to: its receiving nodes, then fabric.yaml's admins.

    ``receivers`` and ``fabric`` are :func:`treadle.fabric.render.secret_receivers`' of the work tree.

    Raises:
        UsageError: a receiving node has no identity, or nobody would receive it.
    """
    nodes = receivers.get(name, [])
    missing = [node for node, ident in nodes if ident is None]
    if missing:
        raise UsageError(
            f"{repo}: {name} goes to {', '.join(missing)}, which {'has' if len(missing) == 1 else 'have'} no "
            "identity: (fix: treadle-agent enroll on the node, record identity: in its node file)"
        )
    admins = ((fabric.get("secrets") or {}).get("admins") or []) if isinstance(fabric, dict) else []
    wanted: dict[str, str] = {}
    for node, ident in nodes:
        wanted.setdefault(ident, f"node {node}")  # type: ignore[arg-type]
    for i, admin in enumerate(admins):
        wanted.setdefault(admin, f"admin (fabric.yaml secrets.admins[{i}])")
    if not wanted:
        raise UsageError(
            f"{repo}: no node's files name {name}, and fabric.yaml has no secrets.admins "
            "(fix: add file: {secret: " + name + "} to a node or profile first)"
        )
    return wanted


def encrypt_secret(repo: Path, name: str, plaintext: bytes, wanted: dict[str, str]) -> None:
    """Encrypt ``plaintext`` (armored age) to ``wanted`` as ``name`` in the work tree, and write its recipients beside it."""
    import pyrage

    from treadle_agent.contract.files import write_atomic

    box = pyrage.encrypt(
        plaintext, [pyrage.x25519.Recipient.from_str(r) for r in wanted], armored=True
    )
    (repo / SECRET_DIR).mkdir(exist_ok=True)
    write_atomic(repo / name, box, mode=0o644)
    write_atomic(repo / recipients_path(name), format_recipients(wanted), mode=0o644)
