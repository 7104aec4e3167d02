"""Signing keys and the agents' trust root, written so that no key is ever replaced or exposed.

:func:`generate` writes N Ed25519 key pairs (a PEM private key, mode 0600,
and its public key as securesystemslib JSON) and a trust root pinning them
with threshold N; :func:`trust_root` writes a trust root pinning existing
public keys (a key rotation). Files are created exclusively with their final
mode: nothing is overwritten, since replacing a key silently would lock every
node out, and a private key is never readable by others, even briefly.
The command is :mod:`treadle.commands.keys`.
"""

from __future__ import annotations

import os
from pathlib import Path

from treadle.errors import UsageError
from treadle_agent.contract.files import write_all


def key_names(name: str, threshold: int) -> list[str]:
    return [name] if threshold == 1 else [f"{name}-{i}" for i in range(1, threshold + 1)]


def generate(directory: Path, *, threshold: int = 1, name: str = "treadle") -> list[Path]:
    """Write ``threshold`` key pairs and a trust root into ``directory``; returns the files written.

    Raises:
        UsageError: a bad threshold or name, a file that already exists, or a
            directory that cannot be written.
    """
    if threshold < 1:
        raise UsageError(f"--threshold must be 1 or more, not {threshold}")
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"--name {name!r}: use a plain file name stem such as 'treadle'")
    stems = key_names(name, threshold)
    targets = [directory / f"{s}{ext}" for s in stems for ext in (".key", ".pub.json")] + [
        directory / "trust-root.json"
    ]
    existing = [str(p) for p in targets if p.exists() or p.is_symlink()]
    if existing:
        raise UsageError(
            f"{existing[0]} already exists; refusing to overwrite a key (fix: choose another DIR or --name)"
        )

    from securesystemslib.signer import CryptoSigner

    from treadle_agent.contract.envelope import public_key_document
    from treadle_agent.contract.manifest import canonical_json
    from treadle_agent.contract.trustroot import trust_root_document

    signers = [CryptoSigner.generate_ed25519() for _ in stems]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for stem, signer in zip(stems, signers, strict=True):
            written.append(_create(directory / f"{stem}.key", signer.private_bytes, 0o600))
            written.append(
                _create(
                    directory / f"{stem}.pub.json",
                    canonical_json(public_key_document(signer)) + b"\n",
                    0o644,
                )
            )
        pinned = {s.public_key.keyid: s.public_key.to_dict() for s in signers}
        written.append(
            _create(
                directory / "trust-root.json", trust_root_document(pinned, threshold) + b"\n", 0o644
            )
        )
    except OSError as e:
        raise UsageError(f"{e.filename or directory}: cannot write: {e.strerror}") from e
    return written


def _create(path: Path, data: bytes, mode: int) -> Path:
    """Create ``path`` exclusively with ``mode`` from the start: a private key is never readable by others, even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed ``mode``; a public key must stay readable
        write_all(fd, data)
    finally:
        os.close(fd)
    return path


def trust_root(out: Path, pubs: list[Path], *, threshold: int = 1) -> Path:
    """Write a trust root at ``out`` pinning the public keys in ``pubs``; returns ``out``.

    Raises:
        UsageError: a public key file is unreadable or not a key, the same key
            is given twice, the threshold does not fit, or ``out`` exists.
    """
    from treadle_agent.contract.errors import ConfigError, ManifestFormatError
    from treadle_agent.contract.manifest import parse_json
    from treadle_agent.contract.trustroot import TrustRoot, trust_root_document

    keys: dict[str, dict[str, object]] = {}
    for pub in pubs:
        try:
            doc = parse_json(pub.read_bytes())
            keyid = doc.pop("keyid")
        except (OSError, ManifestFormatError, AttributeError, KeyError, TypeError) as e:
            raise UsageError(
                f"{pub}: not a public key file written by `treadle keys generate` ({e})"
            ) from e
        keys[keyid] = doc
    data = trust_root_document(keys, threshold) + b"\n"
    try:
        TrustRoot.from_bytes(
            data, str(out)
        )  # the agent's own checks: threshold in range, distinct keys
    except ConfigError as e:
        raise UsageError(str(e)) from e
    if out.exists() or out.is_symlink():
        raise UsageError(
            f"{out} already exists; refusing to overwrite a trust root (fix: write to a new file and move it)"
        )
    try:
        return _create(out, data, 0o644)
    except OSError as e:
        raise UsageError(f"{out}: cannot write: {e.strerror}") from e
