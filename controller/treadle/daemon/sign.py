"""sign: stamp generation, commit, issued and expires on a manifest and wrap it in a signed DSSE envelope.

Generations: a node whose content changed gets the generation *reserved*
above anything it may ever have been published under (see
:mod:`treadle.daemon.state`); a node whose content did not change is not signed
again and keeps its generation, envelope and ETag. A manifest close to expiry
is re-signed under a new generation, since an agent refuses a second,
different envelope with a generation it already accepted.

Each signing key is whatever ``treadle_agent.contract.envelope.load_signer`` accepts: a
key file written by ``treadle keys generate`` or a securesystemslib signer URI.
Every key signs every envelope. A published manifest signed by another set of
keys than the controller's (after a key was added or dropped) is re-signed at
the first cycle, so a key rotation reaches every node without a commit.

Raises:
    SigningKeyError: the key cannot be loaded or a signature cannot be made.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from treadle.errors import SigningKeyError
from treadle_agent.contract.manifest import canonical_json, digest, format_time, parse_json, stamp


@dataclass(frozen=True, slots=True)
class ToSign:
    """One node's content, with the generation it will be published under.

    ``canonical`` is the canonical encoding of ``manifest`` when the caller
    has it (the renderer does); it lets signing re-encode only the metadata.
    """

    node: str
    manifest: Mapping[str, Any]  # unsigned: generation 0, times null
    content_digest: str
    generation: int
    commit: str | None
    lifecycle: str
    canonical: bytes | None = None


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A signed envelope ready to publish."""

    node: str
    generation: int
    content_digest: str
    commit: str | None
    lifecycle: str
    expires: float
    envelope: bytes


def content_digest(manifest: Mapping[str, Any]) -> str:
    """Digest of a manifest with its signing-time metadata blanked: equal content, equal digest, whatever the commit."""
    return digest(
        canonical_json(stamp(manifest, generation=0, commit=None, issued=None, expires=None))  # type: ignore[arg-type]
    )


def node_digest(node: Any) -> str:
    """The content digest of a rendered node: independent of the commit it was rendered from.

    The renderer stamps the commit into every manifest, so its own digest
    changes with every commit. Re-encoding 10,000 manifests per cycle would
    cost more than the change itself; instead the one ``"commit":"<sha>"``
    member of the canonical bytes is blanked. Those exact bytes can appear
    nowhere else: inside a JSON string the quotes would be escaped.
    """
    meta = node.manifest["metadata"]
    if (
        meta.get("generation") != 0
        or meta.get("issued") is not None
        or meta.get("expires") is not None
    ):
        return content_digest(node.manifest)
    commit = meta.get("commit")
    if commit is None:
        return node.digest
    return digest(node.canonical.replace(b'"commit":"%s"' % commit.encode(), b'"commit":null'))


class DigestCache:
    """:func:`node_digest` remembered per node while its content objects stay the same.

    A node the renderer reused from the previous result shares its
    ``resources`` and ``health`` lists with the previous one (only the commit
    in its metadata differs), so those two identity checks plus an equality
    check of the rest of the metadata decide "same content" without hashing.
    Anything re-rendered has new lists and is hashed.
    """

    def __init__(self) -> None:
        self._by_node: dict[str, tuple[Any, Any, dict[str, Any], str]] = {}

    def __call__(self, node: Any) -> str:
        m = node.manifest
        meta = {**m["metadata"], "commit": None}
        hit = self._by_node.get(node.name)
        if (
            hit is not None
            and hit[0] is m["resources"]
            and hit[1] is m["health"]
            and hit[2] == meta
        ):
            return hit[3]
        d = node_digest(node)
        self._by_node[node.name] = (m["resources"], m["health"], meta, d)
        return d


def payload_from_envelope(envelope: bytes) -> bytes:
    """The manifest bytes inside a published DSSE envelope (the signature is not checked: the bytes are our own).

    Raises:
        ValueError: the bytes are not a DSSE envelope.
    """
    try:
        return base64.b64decode(json.loads(envelope)["payload"], validate=True)
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a DSSE envelope: {e}") from e


def envelope_keyids(envelope: bytes) -> frozenset[str]:
    """The key ids of the signatures on a published DSSE envelope (not checked: the bytes are our own).

    Raises:
        ValueError: the bytes are not a DSSE envelope.
    """
    try:
        return frozenset(s["keyid"] for s in json.loads(envelope)["signatures"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a DSSE envelope: {e}") from e


def manifest_from_envelope(envelope: bytes) -> dict[str, Any]:
    """The manifest inside a published DSSE envelope, parsed.

    Raises:
        ValueError: the bytes are not a DSSE envelope with a JSON payload.
    """
    return parse_json(payload_from_envelope(envelope))


def stamped_canonical(item: ToSign, *, issued: str, expires: str) -> bytes:
    """The canonical bytes of ``item``'s manifest with its metadata stamped.

    With the unstamped canonical bytes at hand only the metadata object is
    encoded again and spliced in: canonical JSON encodes a nested object
    exactly as it encodes it alone, and the top-level ``"metadata":{...}``
    member occurs once. Re-encoding a whole 10,000-node fabric costs seconds;
    this costs a tenth of that. Pinned against the full encoding by
    tests/controller/test_sign.py.
    """
    doc = stamp(
        item.manifest,
        generation=item.generation,
        commit=item.commit,
        issued=issued,
        expires=expires,
    )
    if item.canonical is None:
        return canonical_json(doc)
    # The metadata came out of canonical bytes (no floats) plus stamped ints and
    # strings, so the plain encoder gives the canonical form without the float scan.
    old = b'"metadata":' + _encode(item.manifest["metadata"])
    new = b'"metadata":' + _encode(doc["metadata"])
    if item.canonical.count(old) != 1:
        return canonical_json(doc)
    return item.canonical.replace(old, new)


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class ManifestSigner:
    """Signs with one key or several; ``lifetime_s`` is how long a signed manifest stays valid.

    With several keys every envelope carries one signature per key, in the
    order given: an agent whose trust root has threshold N needs N of them, and
    a key rotation signs with the old and the new key for a while. Two specs
    naming the same public key are refused: the agent counts distinct keys, so
    the second signature would add nothing the operator expects it to add.
    """

    def __init__(self, spec: str | Sequence[str], *, lifetime_s: int) -> None:
        from treadle_agent.contract.envelope import (
            load_signer,
        )  # the agent owns the envelope format

        specs = [spec] if isinstance(spec, str) else list(spec)
        if not specs:
            raise SigningKeyError(
                "no signing key: set signing_key in controller.toml to a key file or a list of them"
            )
        self._signers = []
        seen: dict[tuple[str, str, str], str] = {}
        for one in specs:
            try:
                signer = load_signer(one)
            except (
                Exception
            ) as e:  # securesystemslib raises a variety of errors for a bad key or URI
                raise SigningKeyError(
                    f"{one}: cannot load the signing key: {e}; pass a key file from "
                    "`treadle keys generate` or a securesystemslib signer URI"
                ) from e
            key = signer.public_key
            ident = (key.keytype, key.scheme, str(key.keyval.get("public", "")).strip().lower())
            if ident in seen:
                raise SigningKeyError(
                    f"{one} and {seen[ident]} are the same public key (key id {key.keyid}); a trust "
                    "root counts distinct keys, so list each key once in signing_key"
                )
            seen[ident] = one
            self._signers.append(signer)
        self.lifetime_s = lifetime_s

    @property
    def keyids(self) -> frozenset[str]:
        """The key ids every envelope is signed with."""
        return frozenset(s.public_key.keyid for s in self._signers)

    def sign(self, items: Iterable[ToSign], *, now: float) -> list[SignedManifest]:
        """Stamp and sign every item; all share one ``issued`` and ``expires``.

        Raises:
            SigningKeyError: signing failed.
        """
        from treadle_agent.contract.envelope import sign_payload

        issued, expires = format_time(now), format_time(now + self.lifetime_s)
        out = []
        for item in items:
            payload = stamped_canonical(item, issued=issued, expires=expires)
            try:
                envelope = sign_payload(payload, self._signers)
            except Exception as e:
                raise SigningKeyError(f"signing the manifest of {item.node} failed: {e}") from e
            out.append(
                SignedManifest(
                    item.node,
                    item.generation,
                    item.content_digest,
                    item.commit,
                    item.lifecycle,
                    float(int(now) + self.lifetime_s),
                    envelope,
                )
            )
        return out
