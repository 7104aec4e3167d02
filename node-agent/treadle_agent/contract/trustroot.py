"""The pinned trust root: the file the controller writes (``treadle keys``) and the agent loads.

Trust root file (JSON, written by ``treadle keys generate``)::

    {"threshold": 1, "keys": {"<keyid>": {"keytype": "ed25519", "scheme": "ed25519",
                                           "keyval": {"public": "<hex>"}}}}

The threshold counts distinct public keys, so a file listing the same public
key under two key ids is refused at load: otherwise one key could meet a
threshold of two.

The file must be private (owned by root or the agent's user, not writable by
group or others, nor any directory above it; see ``files.check_private``):
whoever can change it decides what the node accepts.

Its digest (``TrustRoot.digest``) is taken over the canonical form of the
document, so reformatting the file is no rotation; changing its keys or
threshold is, and a rotation resets the generation floor (the agent's state.py).

The key dicts are turned into securesystemslib keys on first use, not at load:
a no-op ``treadle-agent once`` whose manifest was already verified under this
very trust root (same digest) never needs them, and importing the signature
stack costs a tenth of the whole run. The structure is still checked at load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from treadle_agent.contract.errors import ConfigError, ManifestFormatError
from treadle_agent.contract.files import check_private
from treadle_agent.contract.manifest import canonical_json, parse_json

if TYPE_CHECKING:
    from securesystemslib.signer import Key


@dataclass(frozen=True)
class TrustRoot:
    """Public keys pinned on the node and how many of them must sign."""

    threshold: int
    keys: Mapping[str, Mapping[str, Any]]  # keyid -> securesystemslib key dict
    digest: str  # sha256 of the file's bytes: states "verified under this trust root"
    source: str  # file name, for messages
    raw: bytes = field(
        default=b"", repr=False, compare=False
    )  # the file's bytes, for a verifier process
    _loaded: dict[str, Key] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> TrustRoot:
        """Read and check the trust-root file at ``path``.

        Raises:
            ConfigError: unreadable, not strict JSON, wrong structure, a
                threshold above the number of keys, or one public key listed twice.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(
                f"{path}: cannot read the trust root: {e.strerror} (fix: check trust_root in agent.toml)"
            ) from e
        except ValueError as e:  # a NUL in the path
            raise ConfigError(
                f"{path}: not a usable trust root path: {e} (fix: check trust_root in agent.toml)"
            ) from e
        check_private(Path(path), "trust root")
        return cls.from_bytes(data, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<trust root>") -> TrustRoot:
        """A trust root from the bytes of a trust-root file (see :meth:`load`)."""
        try:
            doc = parse_json(data)
        except ManifestFormatError as e:
            raise ConfigError(
                f"{source}: not a valid trust root: {e} (fix: regenerate it with `treadle keys generate`)"
            ) from e
        if not isinstance(doc, dict) or set(doc) != {"threshold", "keys"}:
            raise ConfigError(
                f'{source}: a trust root is an object with exactly "threshold" and "keys"'
            )
        threshold, keys = doc["threshold"], doc["keys"]
        if not isinstance(keys, dict) or not keys:
            raise ConfigError(
                f'{source}: "keys" must be a non-empty object of key id -> public key'
            )
        if type(threshold) is not int or not 1 <= threshold <= len(keys):
            raise ConfigError(
                f'{source}: "threshold" must be an integer from 1 to the number of keys ({len(keys)}), not {threshold!r}'
            )
        seen: dict[tuple[str, str, str], str] = {}
        for keyid, key in keys.items():
            ident = _identity(keyid, key, source)
            if ident in seen:
                raise ConfigError(
                    f"{source}: key ids {seen[ident]!r} and {keyid!r} are the same public key; the threshold counts "
                    "distinct keys (fix: list each public key once)"
                )
            seen[ident] = keyid
        return cls(
            threshold=threshold,
            keys=keys,
            digest=hashlib.sha256(canonical_json(doc)).hexdigest(),
            source=source,
            raw=data,
        )

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
                raise ConfigError(
                    f"{self.source}: key {keyid!r} is not a usable public key: {e}"
                ) from e
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
            except (
                VerificationError
            ) as e:  # a subclass of UnverifiedSignatureError: the key itself failed
                raise ConfigError(
                    f"{self.source}: key {keyid!r} is not a usable public key: {e.__cause__ or e} "
                    "(fix: restore the trust root written by `treadle keys generate`)"
                ) from e
            except UnverifiedSignatureError:
                continue  # the key works; the dummy signature is just wrong
            except (
                Exception
            ) as e:  # VerificationError and whatever a key type raises: the key is unusable
                raise ConfigError(
                    f"{self.source}: key {keyid!r} is not a usable public key: {e} "
                    "(fix: restore the trust root written by `treadle keys generate`)"
                ) from e
            raise ConfigError(
                f"{self.source}: key {keyid!r} verified a dummy signature; it is no real key"
            )

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
