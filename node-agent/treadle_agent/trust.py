"""The pinned trust root, and the trusted state: what the agent has accepted so far.

Trust root file (JSON, written by ``treadle keys generate``)::

    {"threshold": 1, "keys": {"<keyid>": {"keytype": "ed25519", "scheme": "ed25519",
                                           "keyval": {"public": "<hex>"}}}}

The threshold counts distinct public keys, so a file listing the same public
key under two key ids is refused at load: otherwise one key could meet a
threshold of two.

The file must be private (owned by root or the agent's user, not writable by
group or others, nor any directory above it; see ``state.check_private``):
whoever can change it decides what the node accepts.

Its digest (``TrustRoot.digest``) is taken over the canonical form of the
document, so reformatting the file is no rotation; changing its keys or
threshold is, and a rotation resets the generation floor (state.py).

The key dicts are turned into securesystemslib keys on first use, not at load:
a no-op ``treadle-agent once`` whose manifest was already verified under this
very trust root (same digest) never needs them, and importing the signature
stack costs a tenth of the whole run. The structure is still checked at load.

:class:`TrustedState` holds the last accepted manifest, the highest accepted
generation and the digest of the manifest accepted under it. It does no I/O
(state.py persists it) and it is the only place the rollback and equivocation
rules live.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treadle_agent.errors import ConfigError, VerifyError
from treadle_agent.manifest import Manifest, ManifestFormatError, canonical_json, parse_json

if TYPE_CHECKING:
    from securesystemslib.signer import Key


@dataclass(frozen=True)
class TrustRoot:
    """Public keys pinned on the node and how many of them must sign."""

    threshold: int
    keys: Mapping[str, Mapping[str, Any]]  # keyid -> securesystemslib key dict
    digest: str  # sha256 of the file's bytes: states "verified under this trust root"
    source: str  # file name, for messages
    raw: bytes = field(default=b"", repr=False, compare=False)  # the file's bytes, for a verifier process
    _loaded: dict[str, Key] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> TrustRoot:
        """Read and check the trust-root file at ``path``.

        Raises:
            ConfigError: unreadable, not strict JSON, wrong structure, a
                threshold above the number of keys, or one public key listed twice.
        """
        from treadle_agent.state import check_private

        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the trust root: {e.strerror} (fix: check trust_root in agent.toml)") from e
        except ValueError as e:  # a NUL in the path
            raise ConfigError(f"{path}: not a usable trust root path: {e} (fix: check trust_root in agent.toml)") from e
        check_private(Path(path), "trust root")
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<trust root>") -> TrustRoot:
        """A trust root from the bytes of a trust-root file (see :meth:`load`)."""
        try:
            doc = parse_json(data)
        except ManifestFormatError as e:
            raise ConfigError(f"{source}: not a valid trust root: {e} (fix: regenerate it with `treadle keys generate`)") from e
        if not isinstance(doc, dict) or set(doc) != {"threshold", "keys"}:
            raise ConfigError(f'{source}: a trust root is an object with exactly "threshold" and "keys"')
        threshold, keys = doc["threshold"], doc["keys"]
        if not isinstance(keys, dict) or not keys:
            raise ConfigError(f'{source}: "keys" must be a non-empty object of key id -> public key')
        if type(threshold) is not int or not 1 <= threshold <= len(keys):
            raise ConfigError(f'{source}: "threshold" must be an integer from 1 to the number of keys ({len(keys)}), not {threshold!r}')
        seen: dict[tuple[str, str, str], str] = {}
        for keyid, key in keys.items():
            ident = _identity(keyid, key, source)
            if ident in seen:
                raise ConfigError(
                    f"{source}: key ids {seen[ident]!r} and {keyid!r} are the same public key; the threshold counts "
                    "distinct keys (fix: list each public key once)"
                )
            seen[ident] = keyid
        return cls(threshold=threshold, keys=keys, digest=hashlib.sha256(canonical_json(doc)).hexdigest(), source=source, raw=data)

    def key(self, keyid: str) -> Key | None:
        """The securesystemslib key pinned under ``keyid``, or None when it is not trusted.

        Raises:
            ConfigError: the key dict is not a key securesystemslib supports.
        """
        if keyid not in self.keys:
            return None
        if keyid not in self._loaded:
            from securesystemslib.signer import Key

            try:
                self._loaded[keyid] = Key.from_dict(keyid, dict(self.keys[keyid]))
            except (KeyError, TypeError, ValueError) as e:
                raise ConfigError(f"{self.source}: key {keyid!r} is not a usable public key: {e}") from e
        return self._loaded[keyid]

    def check_keys(self) -> None:
        """Load every key now, so a bad trust root stops the daemon at start rather than at the first manifest.

        A key dict securesystemslib accepts may still hold a public value that
        is no key at all (garbage hex): that shows only when a signature is
        checked. So each key checks a dummy signature here: "does not verify"
        proves the key usable, any other failure proves it is not. Otherwise
        such a trust root would refuse every manifest, the stored one
        included, and the node would stop enforcing anything.

        Raises:
            ConfigError: see :meth:`key`, or the key's public value is unusable.
        """
        from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
        from securesystemslib.signer import Signature

        for keyid in self.keys:
            key = self.key(keyid)
            assert key is not None
            try:
                key.verify_signature(Signature(keyid, "00" * 64), b"treadle trust root check")
            except VerificationError as e:  # a subclass of UnverifiedSignatureError: the key itself failed
                raise ConfigError(f"{self.source}: key {keyid!r} is not a usable public key: {e.__cause__ or e} "
                                  "(fix: restore the trust root written by `treadle keys generate`)") from e
            except UnverifiedSignatureError:
                continue  # the key works; the dummy signature is just wrong
            except Exception as e:  # VerificationError and whatever a key type raises: the key is unusable
                raise ConfigError(f"{self.source}: key {keyid!r} is not a usable public key: {e} "
                                  "(fix: restore the trust root written by `treadle keys generate`)") from e
            raise ConfigError(f"{self.source}: key {keyid!r} verified a dummy signature; it is no real key")

    def identity(self, keyid: str) -> tuple[str, str, str]:
        """What makes two pinned keys the same key (type, scheme, public value), whatever their ids."""
        return _identity(keyid, self.keys[keyid], self.source)


def _identity(keyid: str, key: Any, source: str) -> tuple[str, str, str]:
    if not isinstance(key, dict) or not {"keytype", "scheme", "keyval"} <= set(key):
        raise ConfigError(f'{source}: key {keyid!r} must have "keytype", "scheme" and "keyval"')
    keyval = key["keyval"]
    if not isinstance(keyval, dict) or not isinstance(keyval.get("public"), str):
        raise ConfigError(f'{source}: key {keyid!r} needs "keyval": {{"public": "..."}}')
    if not all(isinstance(key[k], str) for k in ("keytype", "scheme")):
        raise ConfigError(f'{source}: key {keyid!r}: "keytype" and "scheme" must be strings')
    # Neither the case of hex (ed25519) nor whitespace around PEM makes another key.
    public = keyval["public"].strip()
    return key["keytype"], key["scheme"], public.lower() if key["keytype"] == "ed25519" else public


def trust_root_document(keys: Mapping[str, Mapping[str, Any]], threshold: int) -> bytes:
    """The canonical bytes of a trust-root file pinning ``keys`` (keyid -> key dict)."""
    return canonical_json({"threshold": threshold, "keys": {k: dict(v) for k, v in keys.items()}})


class TrustedState:
    """The last accepted envelope and manifest, and the highest accepted generation. No I/O.

    The generation only grows; it is kept apart from the manifest so that
    losing the stored envelope never reopens the door to a replay of an older one.
    """

    def __init__(self, highest_generation: int = 0, highest_digest: str | None = None) -> None:
        self.envelope: bytes | None = None
        self.manifest: Manifest | None = None
        self.highest_generation = highest_generation
        #: sha256 of the manifest accepted at ``highest_generation`` (None: not known, e.g. an older state dir).
        self.highest_digest = highest_digest

    def is_current(self, envelope: bytes) -> bool:
        """True when ``envelope`` is byte for byte the one already accepted."""
        return self.envelope is not None and envelope == self.envelope

    def check_generation(self, manifest: Manifest) -> None:
        """Refuse a replay of an older manifest, or a different one under the same generation.

        Raises:
            VerifyError: ``rollback`` or ``equivocation``.
        """
        generation = manifest.generation
        if generation < self.highest_generation:
            raise VerifyError(
                "rollback", f"generation {generation} is below the highest accepted generation {self.highest_generation}"
            )
        current = self.manifest
        if current is not None and generation == current.generation and manifest.raw != current.raw:
            raise VerifyError("equivocation", f"generation {generation} was already accepted with other content")
        # Held even when the stored envelope is lost or damaged: the digest is one of the trusted facts.
        if generation == self.highest_generation and self.highest_digest not in (None, manifest.digest):
            raise VerifyError("equivocation", f"generation {generation} was already accepted with other content "
                                              f"(sha256 {self.highest_digest})")

    def accept(self, envelope: bytes, manifest: Manifest) -> None:
        """Record a manifest that passed every check (verify.py decides that, in order)."""
        self.envelope = envelope
        self.manifest = manifest
        if manifest.generation >= self.highest_generation:
            self.highest_generation = manifest.generation
            self.highest_digest = manifest.digest
