"""DSSE conformance both ways, and the signature-count limit.

The specification (github.com/secure-systems-lab/dsse, protocol.md and
envelope.md): verifiers MUST accept standard and URL-safe base64; ``keyid`` is
an optional, unauthenticated hint. Its published test vector pins the PAE.
"""

from __future__ import annotations

import base64
import json

import pytest

from treadle_agent.contract.envelope import parse_envelope, verify_envelope
from treadle_agent.contract.trustroot import TrustRoot
from treadle_agent.errors import VerifyError

# protocol.md, "Test Vectors": the body, the type, the PAE, and the P-256 key and signature the spec publishes.
SPEC_BODY = b"hello world"
SPEC_TYPE = "http://example.com/HelloWorld"
SPEC_PAE = b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
SPEC_X = 46950820868899156662930047687818585632848591499744589407958293238635476079160
SPEC_Y = 5640078356564379163099075877009565129882514886557779369047442380624545832820
SPEC_ENVELOPE = (
    b'{"payload": "aGVsbG8gd29ybGQ=", "payloadType": "http://example.com/HelloWorld", "signatures": '
    b'[{"sig": "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA=="}]}'
)


def test_pae_matches_the_specifications_test_vector():
    from securesystemslib.dsse import Envelope

    assert Envelope(SPEC_BODY, SPEC_TYPE, {}).pae() == SPEC_PAE


def test_the_specifications_envelope_parses_without_keyid_and_its_signature_covers_our_pae():
    """The published envelope has no keyid; its P-256 signature (raw r||s) verifies over the PAE we compute."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from securesystemslib.dsse import Envelope

    with pytest.raises(
        VerifyError
    ) as e:  # the type is not ours, but everything before that check passed
        parse_envelope(SPEC_ENVELOPE)
    assert e.value.reason == "payload_type"
    doc = json.loads(SPEC_ENVELOPE)
    sig = base64.b64decode(doc["signatures"][0]["sig"])
    key = ec.EllipticCurvePublicNumbers(SPEC_X, SPEC_Y, ec.SECP256R1()).public_key()
    pae = Envelope(base64.b64decode(doc["payload"]), doc["payloadType"], {}).pae()
    key.verify(
        encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
        pae,
        ec.ECDSA(hashes.SHA256()),
    )


def _variant(
    envelope: bytes, *, urlsafe: bool = False, unpadded: bool = False, keyid: str | None = "keep"
) -> bytes:
    doc = json.loads(envelope)

    def enc(b64: str) -> str:
        raw = base64.b64decode(b64)
        out = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
        return out.rstrip("=") if unpadded else out

    doc["payload"] = enc(doc["payload"])
    for s in doc["signatures"]:
        s["sig"] = enc(s["sig"])
        if keyid is None:
            del s["keyid"]
        elif keyid != "keep":
            s["keyid"] = keyid
    return json.dumps(doc).encode()


@pytest.mark.parametrize("urlsafe", [False, True])
@pytest.mark.parametrize("unpadded", [False, True])
@pytest.mark.parametrize("keyid", ["keep", None, "", "another-implementations-key-id"])
def test_envelopes_of_other_implementations_verify(shared_keys, kit, urlsafe, unpadded, keyid):
    """URL-safe or standard base64, padded or not, with the key id left out or spelt another way."""
    doc = kit.manifest_doc(
        generation=1, files={"/etc/x": "?>?>~~~" * 40}
    )  # bytes whose base64 holds + and /
    envelope = kit.signed(doc, shared_keys.signers)
    payload = verify_envelope(
        _variant(envelope, urlsafe=urlsafe, unpadded=unpadded, keyid=keyid),
        TrustRoot.load(shared_keys.trust_root),
    )
    assert json.loads(payload) == doc


def test_treadles_envelopes_verify_with_securesystemslib(keys, kit):
    """The other way round: an independent DSSE verifier accepts what Treadle signs."""
    from securesystemslib.dsse import Envelope

    envelope = Envelope.from_dict(json.loads(kit.signed(kit.manifest_doc(), keys.signers)))
    trust = TrustRoot.load(keys.trust_root)
    assert set(envelope.verify([trust.key(k) for k in trust.keys], 1)) == set(trust.keys)


@pytest.mark.parametrize("sig", ["ab+_", "ab/-cd==", "a=b=", "a"])
def test_mixed_alphabets_and_bad_padding_are_refused(sig):
    data = json.dumps(
        {
            "payload": "e30=",
            "payloadType": "application/vnd.treadle.manifest+json",
            "signatures": [{"sig": sig}],
        }
    ).encode()
    with pytest.raises(VerifyError) as e:
        parse_envelope(data)
    assert e.value.reason == "envelope"


def test_signature_object_with_unknown_members_or_a_non_string_keyid_is_refused():
    for s in ({"sig": "", "extra": 1}, {"keyid": 5, "sig": ""}, {"keyid": "k"}):
        data = json.dumps(
            {
                "payload": "e30=",
                "payloadType": "application/vnd.treadle.manifest+json",
                "signatures": [s],
            }
        ).encode()
        with pytest.raises(VerifyError):
            parse_envelope(data)


# --- 5: signature floods ------------------------------------------------------------------------------


def test_signature_flood_is_refused_before_any_signature_is_verified(keys, kit):
    """2,000 well-formed copies of a valid signature: refused by count, before any is verified."""
    envelope = json.loads(kit.signed(kit.manifest_doc(), keys.signers))
    envelope["signatures"] = envelope["signatures"] * 2_000
    with pytest.raises(VerifyError, match="refused before verifying any") as e:
        verify_envelope(json.dumps(envelope).encode(), TrustRoot.load(keys.trust_root))
    assert e.value.reason == "envelope"


def test_signature_flood_over_http_is_refused_and_counted(node, kit):
    node.start()
    node.serve(kit.manifest_doc(generation=2))
    assert node.cycle().ok
    envelope = json.loads(kit.signed(kit.manifest_doc(generation=3), node.keys.signers))
    envelope["signatures"] = envelope["signatures"] * 500
    node.server.serve(json.dumps(envelope).encode())
    result = node.cycle()
    assert result.refused == "envelope" and result.generation == 2
    assert node.sample("treadle_agent_verify_failures_total", reason="envelope") == 1
