"""``treadle keys generate DIR [--threshold N] [--name NAME]``: signing keys and the agents' trust root.
``treadle keys trust-root OUT PUB.json... [--threshold N]``: a trust root pinning existing public keys.

Writes, for each of N Ed25519 key pairs (N = the threshold, so the trust root
can be met):

    DIR/<name>.key         PEM PKCS#8 private key, mode 0600: the controller's signing_key
    DIR/<name>.pub.json    the public key as securesystemslib JSON, with its key id
    DIR/trust-root.json    {"threshold": N, "keys": {...}}: copy to every node (agent.toml trust_root)

With N > 1 the key files are ``<name>-1.key``, ``<name>-2.key``... Nothing is
ever overwritten: if any of the files exists the command changes nothing and
exits 2, since replacing a key silently would lock every node out.

``trust-root`` writes a trust root from ``*.pub.json`` files, for a key
rotation (README "Keys"): one listing the old and the new key while the
controller signs with both, then one with the new key alone.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from treadle.errors import UsageError
from treadle_agent.contract.files import write_all


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = subparsers.add_parser("keys", help="manage manifest signing keys",
                                 epilog="example:\n  treadle keys generate /etc/treadle/keys --threshold 2",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="write Ed25519 signing keys and a trust root into DIR",
                         description="Write Ed25519 signing key pairs (as many as --threshold) and a trust root into DIR.",
                         epilog="examples:\n  treadle keys generate /etc/treadle/keys\n"
                                "  treadle keys generate /etc/treadle/keys --threshold 2",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("dir", type=Path, metavar="DIR")
    gen.add_argument("--threshold", type=int, default=1, help="signatures a manifest needs; this many key pairs are written")
    gen.add_argument("--name", default="treadle", help="file name stem of the key files (default: treadle)")
    gen.set_defaults(func=_generate)
    root = sub.add_parser(
        "trust-root", help="write a trust root pinning existing public keys (for a key rotation)",
        description="Write a trust root OUT that pins the public keys PUB (*.pub.json from `treadle keys generate`).",
        epilog="example:\n  treadle keys trust-root trust-root.json keys/old.pub.json keys/new.pub.json --threshold 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    root.add_argument("out", type=Path, metavar="OUT")
    root.add_argument("pubs", type=Path, nargs="+", metavar="PUB")
    root.add_argument("--threshold", type=int, default=1, help="distinct keys whose signatures a manifest needs (default: 1)")
    root.set_defaults(func=lambda a: print(trust_root(a.out, a.pubs, threshold=a.threshold)) or 0)


def _generate(args: argparse.Namespace) -> int:
    paths = generate(args.dir, threshold=args.threshold, name=args.name)
    for p in paths:
        print(p)
    return 0


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
    targets = [directory / f"{s}{ext}" for s in stems for ext in (".key", ".pub.json")] + [directory / "trust-root.json"]
    existing = [str(p) for p in targets if p.exists() or p.is_symlink()]
    if existing:
        raise UsageError(f"{existing[0]} already exists; refusing to overwrite a key (fix: choose another DIR or --name)")

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
            written.append(_create(directory / f"{stem}.pub.json", canonical_json(public_key_document(signer)) + b"\n", 0o644))
        pinned = {s.public_key.keyid: s.public_key.to_dict() for s in signers}
        written.append(_create(directory / "trust-root.json", trust_root_document(pinned, threshold) + b"\n", 0o644))
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
    from treadle_agent.contract.errors import ConfigError
    from treadle_agent.contract.manifest import ManifestFormatError, parse_json
    from treadle_agent.contract.trustroot import TrustRoot, trust_root_document

    keys: dict[str, dict[str, object]] = {}
    for pub in pubs:
        try:
            doc = parse_json(pub.read_bytes())
            keyid = doc.pop("keyid")
        except (OSError, ManifestFormatError, AttributeError, KeyError, TypeError) as e:
            raise UsageError(f"{pub}: not a public key file written by `treadle keys generate` ({e})") from e
        keys[keyid] = doc
    data = trust_root_document(keys, threshold) + b"\n"
    try:
        TrustRoot.from_bytes(data, str(out))  # the agent's own checks: threshold in range, distinct keys
    except ConfigError as e:
        raise UsageError(str(e)) from e
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out} already exists; refusing to overwrite a trust root (fix: write to a new file and move it)")
    try:
        return _create(out, data, 0o644)
    except OSError as e:
        raise UsageError(f"{out}: cannot write: {e.strerror}") from e
