"""The node's own age X25519 identity: created on the node, kept in the state dir, never sent anywhere.

    <state_dir>/identity.age           the identity, in age-keygen's format (mode 0600):
                                       "# created: <time>", "# public key: age1...", "AGE-SECRET-KEY-1..."
    <state_dir>/identity.previous.age  the identity ``--rotate`` replaced, kept so that secrets not yet
                                       re-encrypted to the new one still open (README, "Node identity")

Only the public part, the recipient (``age1...``), leaves the node: ``treadle-agent
enroll`` prints it and the admin records it as ``identity:`` in the node's file.
Enrolling again does not silently replace a key secrets are encrypted to: it is
refused unless ``--rotate`` is given.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pyrage

from treadle_agent.contract.files import check_private, write_atomic
from treadle_agent.errors import ConfigError, StateError

IDENTITY = "identity.age"
PREVIOUS = "identity.previous.age"


class EnrolledError(ConfigError):
    """The node already has an identity and ``--rotate`` was not given."""


@dataclass(frozen=True, slots=True)
class Enrolment:
    recipient: str  # the public part, age1...
    path: Path
    rotated_from: str | None = None  # the recipient --rotate replaced


def _read(path: Path) -> pyrage.x25519.Identity:
    """The identity stored at ``path``, refused when others could read or change it."""
    check_private(path, "node identity")
    try:
        st = os.stat(path)
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise StateError(f"{path}: cannot read the node identity: {e}") from e
    if st.st_mode & 0o077:
        raise StateError(
            f"{path}: the node identity is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}; fix: chmod 0600 {path})"
        )
    keys = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(keys) != 1:
        raise StateError(
            f"{path}: expected one AGE-SECRET-KEY-1 line, found {len(keys)} "
            "(fix: restore it from backup, or enrol again with --rotate)"
        )
    try:
        return pyrage.x25519.Identity.from_str(keys[0])
    except pyrage.IdentityError as e:  # never echo the key
        raise StateError(
            f"{path}: not an age X25519 identity (fix: restore it from backup, "
            "or enrol again with --rotate)"
        ) from e


def load(state_dir: Path) -> list[pyrage.x25519.Identity]:
    """The node's identities, current first, then the one ``--rotate`` replaced; none when not enrolled."""
    return [_read(state_dir / name) for name in (IDENTITY, PREVIOUS) if (state_dir / name).exists()]


def recipient(state_dir: Path) -> str | None:
    """The public part of the current identity, or None when the node is not enrolled."""
    path = state_dir / IDENTITY
    return str(_read(path).to_public()) if path.exists() else None


def _format(identity: pyrage.x25519.Identity, now: float) -> bytes:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return f"# created: {created}\n# public key: {identity.to_public()}\n{identity}\n".encode(
        "ascii"
    )


def enroll(state_dir: Path, *, rotate: bool = False, now: float | None = None) -> Enrolment:
    """Create the node's identity in ``state_dir``; with ``rotate``, replace it, keeping the old one as previous.

    Raises:
        EnrolledError: an identity is there and ``rotate`` is false (nothing is changed).
        ConfigError, StateError: the state dir is not private, or the write failed.
    """
    check_private(state_dir, "state dir")
    path = state_dir / IDENTITY
    old = recipient(state_dir)
    if old is not None and not rotate:
        raise EnrolledError(
            f"{path}: this node is already enrolled as {old}; refusing to replace its identity "
            "(fix: nothing to do, or --rotate to make a new one, then record it in the node "
            "file and run `treadle secret rekey`)"
        )
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise StateError(f"{state_dir}: cannot create the state dir: {e.strerror}") from e
    if old is not None:
        write_atomic(state_dir / PREVIOUS, path.read_bytes(), mode=0o600)
    new = pyrage.x25519.Identity.generate()
    write_atomic(path, _format(new, time.time() if now is None else now), mode=0o600)
    return Enrolment(recipient=str(new.to_public()), path=path, rotated_from=old)
