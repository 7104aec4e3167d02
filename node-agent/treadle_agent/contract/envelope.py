"""The DSSE envelope a manifest travels in: signing (controller) and verification (agent).

    {"payload": "<base64>", "payloadType": "application/vnd.treadle.manifest+json",
     "signatures": [{"keyid": "...", "sig": "<base64>"}]}

Signatures cover DSSE's pre-authentication encoding (PAE) of type and
payload, computed by :class:`securesystemslib.dsse.Envelope`; keys and signers
are securesystemslib's (Ed25519 key files by default, any signer URI in
production).

The envelope is parsed here with the strict JSON parser rather than
``Envelope.from_dict``: that one accepts loose base64, refuses a repeated key
id with a ValueError and mutates its input, while the agent must tell a
malformed envelope from a bad signature. The threshold is counted here too, by
distinct public key: a signature repeated, or the same key under two ids,
counts once (``Envelope.verify`` counts key ids).

Conformance with the DSSE specification (protocol.md, envelope.md), so that
independent implementations verify Treadle's envelopes and Treadle theirs:
base64 in either the standard or the URL-safe alphabet (verifiers MUST accept
both; padding may be left out, one alphabet per value), and ``keyid`` optional.
A key id only narrows which trusted key is tried first ("MUST NOT be used for
security decisions"): a signature without one, or with one the trust root does
not know, is tried against every trusted key not yet counted.

Limits before work: at most :data:`MAX_SIGNATURES` signatures, counted before
any is decoded or verified, so a flood of well-formed signatures under the size
cap costs nothing (each verification would cost about 0.1 ms).

securesystemslib is imported on first use: a no-op agent run re-uses a
manifest it verified before and never loads the signature stack.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from treadle_agent.contract.errors import ConfigError, VerifyError
from treadle_agent.contract.manifest import (
    PAYLOAD_TYPE,
    ManifestFormatError,
    canonical_json,
    parse_json,
)
from treadle_agent.contract.trustroot import TrustRoot

if TYPE_CHECKING:
    from securesystemslib.signer import Signer

_ENVELOPE_KEYS = {"payload", "payloadType", "signatures"}
#: The most signatures an envelope may carry; a trust root's threshold is a handful of keys.
MAX_SIGNATURES = 32
_B64_STANDARD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64_URLSAFE = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_URI_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Signed:
    """One signature of an envelope: the key id it claims and the raw signature bytes."""

    keyid: str | None  # an unauthenticated hint; None when the envelope gives none
    sig: bytes


@dataclass(frozen=True, slots=True)
class ParsedEnvelope:
    payload: bytes
    payload_type: str
    signatures: tuple[Signed, ...]


def _b64(value: object, what: str) -> bytes:
    """Strict base64 in the standard or the URL-safe alphabet (not both in one value), padded or not."""
    if not isinstance(value, str):
        raise VerifyError("envelope", f"{what} must be a base64 string")
    if _B64_STANDARD.fullmatch(value):
        altchars = None
    elif _B64_URLSAFE.fullmatch(value):
        altchars = b"-_"
    else:
        raise VerifyError(
            "envelope", f"{what} is not valid base64: characters outside one base64 alphabet"
        )
    padded = value if "=" in value else value + "=" * (-len(value) % 4)
    try:
        return base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as e:
        raise VerifyError("envelope", f"{what} is not valid base64: {e}") from e


def _signature(s: object) -> Signed:
    if (
        not isinstance(s, dict)
        or "sig" not in s
        or not set(s) <= {"keyid", "sig"}
        or not isinstance(s.get("keyid", ""), str)
    ):
        raise VerifyError(
            "envelope", 'signatures must be a list of {"sig": base64} with an optional "keyid": str'
        )
    return Signed(s.get("keyid") or None, _b64(s["sig"], "a signature"))


def parse_envelope(data: bytes) -> ParsedEnvelope:
    """Parse envelope bytes strictly and check the payload type is a Treadle manifest.

    Raises:
        VerifyError: ``envelope`` (not strict JSON, wrong shape, bad base64) or
            ``payload_type`` (anything but :data:`PAYLOAD_TYPE`).
    """
    try:
        doc = parse_json(data)
    except ManifestFormatError as e:
        raise VerifyError("envelope", f"the envelope is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or set(doc) != _ENVELOPE_KEYS:
        raise VerifyError(
            "envelope",
            "a DSSE envelope is an object with exactly payload, payloadType and signatures",
        )
    if not isinstance(doc["signatures"], list):
        raise VerifyError(
            "envelope", 'signatures must be a list of {"sig": base64} with an optional "keyid": str'
        )
    if len(doc["signatures"]) > MAX_SIGNATURES:
        raise VerifyError(
            "envelope",
            f"the envelope carries {len(doc['signatures'])} signatures, above the limit of "
            f"{MAX_SIGNATURES}; refused before verifying any",
        )
    signatures = tuple(_signature(s) for s in doc["signatures"])
    payload = _b64(doc["payload"], "the payload")
    if doc["payloadType"] != PAYLOAD_TYPE:
        raise VerifyError(
            "payload_type", f"payloadType is {doc['payloadType']!r}, not {PAYLOAD_TYPE!r}"
        )
    return ParsedEnvelope(payload=payload, payload_type=doc["payloadType"], signatures=signatures)


def check_signatures(envelope: ParsedEnvelope, trust: TrustRoot) -> bytes:
    """The payload, once signatures by ``trust.threshold`` distinct trusted keys verify over its PAE.

    Raises:
        VerifyError: ``signature`` when no trusted key verifies, ``threshold``
            when some do but fewer distinct keys than the threshold.
    """
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import UnverifiedSignatureError
    from securesystemslib.signer import Signature

    pae = Envelope(envelope.payload, envelope.payload_type, {}).pae()
    verified: set[tuple[str, str, str]] = set()
    for signed in envelope.signatures:
        # The key id narrows the search when it names a trusted key; otherwise every key not yet counted is tried.
        candidates = (
            [signed.keyid]
            if signed.keyid is not None and signed.keyid in trust.keys
            else list(trust.keys)
        )
        for keyid in candidates:
            if trust.identity(keyid) in verified:
                continue
            key = trust.key(keyid)
            assert key is not None
            try:
                key.verify_signature(Signature(keyid, signed.sig.hex()), pae)
            except (
                UnverifiedSignatureError
            ):  # also covers VerificationError (a malformed signature)
                continue
            verified.add(trust.identity(keyid))
            break
    if not verified:
        raise VerifyError(
            "signature", f"no signature verifies against the trust root {trust.source}"
        )
    if len(verified) < trust.threshold:
        raise VerifyError(
            "threshold",
            f"signatures by {len(verified)} distinct trusted key(s) verify; the trust root requires {trust.threshold}",
        )
    return envelope.payload


def verify_envelope(data: bytes, trust: TrustRoot) -> bytes:
    """The payload of envelope ``data`` once it parses, is ours, and is signed to threshold.

    Raises:
        VerifyError: ``envelope``, ``payload_type``, ``signature`` or ``threshold``.
    """
    return check_signatures(parse_envelope(data), trust)


def sign_payload(payload: bytes, signers: Sequence[Signer]) -> bytes:
    """The canonical JSON bytes of a DSSE envelope over ``payload`` signed by every signer in order.

    Raises:
        ConfigError: a signer failed to sign (a key service unreachable, a token refused).
    """
    from securesystemslib.dsse import Envelope

    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    for signer in signers:
        try:
            envelope.sign(signer)
        except Exception as e:  # signer back ends (KMS, HSM) raise their own types
            raise ConfigError(f"signing with key {signer.public_key.keyid!r} failed: {e}") from e
    return canonical_json(envelope.to_dict())


def load_signer(spec: str) -> Signer:
    """A signer from a private key file path (the default) or a securesystemslib signer URI.

    ``spec`` is one of:
      * a path to a PEM (PKCS#8) private key, as written by ``treadle keys generate``;
      * ``<signer URI>#<public key file>``: any URI securesystemslib knows
        (``gcpkms:``, ``awskms:``, ``azurekms:``, ``hsm:``, ``hv:``, ``file2:``),
        with the JSON public key it signs for (the ``*.pub.json`` a trust root pins).
        ``file2:<path>`` may omit the public key.

    Raises:
        ConfigError: the file is missing or not a private key, the URI is
            unknown, or the public key file does not match.
    """
    path = Path(spec)
    if path.exists() or not _URI_SCHEME.match(spec):
        return _signer_from_file(path)
    uri, _, pub = spec.partition("#")
    if not pub and uri.startswith("file2:"):
        return _signer_from_file(Path(uri.removeprefix("file2:")))
    if not pub:
        raise ConfigError(
            f"signer {uri!r}: append '#<public key file>' naming the JSON public key this signer signs for"
        )
    from securesystemslib.signer import Key, Signer

    try:
        doc = parse_json(Path(pub).read_bytes())
        keyid = doc.pop("keyid")
        return Signer.from_priv_key_uri(uri, Key.from_dict(keyid, doc))
    except (
        Exception
    ) as e:  # signer back ends raise their own types; all mean "this key is unusable"
        raise ConfigError(f"signer {uri!r} with public key {pub}: {e}") from e


def _signer_from_file(path: Path) -> Signer:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    try:
        private = load_pem_private_key(path.read_bytes(), password=None)
        return CryptoSigner(private)
    except FileNotFoundError as e:
        raise ConfigError(
            f"{path}: no such private key file (fix: create one with `treadle keys generate DIR`)"
        ) from e
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{path}: not a usable PEM private key: {e}") from e


def public_key_document(signer: Signer) -> dict[str, object]:
    """The JSON form of ``signer``'s public key, with its key id (the ``*.pub.json`` file)."""
    return {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
