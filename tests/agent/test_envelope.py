"""The envelope and the trust root, with real Ed25519 keys generated in tmp dirs."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadle_agent.contract.envelope import (
    load_signer,
    parse_envelope,
    sign_payload,
    verify_envelope,
)
from treadle_agent.contract.manifest import PAYLOAD_TYPE, canonical_json
from treadle_agent.contract.trustroot import TrustRoot
from treadle_agent.errors import ConfigError, VerifyError


def _reason(data: bytes, trust: TrustRoot) -> str:
    with pytest.raises(VerifyError) as e:
        verify_envelope(data, trust)
    return e.value.reason


def test_signed_payload_verifies_and_comes_back_unchanged(keys):
    trust = TrustRoot.load(keys.trust_root)
    envelope = sign_payload(b'{"a":1}', keys.signers)
    assert verify_envelope(envelope, trust) == b'{"a":1}'
    doc = json.loads(envelope)
    assert doc["payloadType"] == PAYLOAD_TYPE and canonical_json(doc) == envelope


@settings(max_examples=25, deadline=None)
@given(payload=st.binary(max_size=2048))
def test_any_payload_round_trips_through_an_envelope(shared_keys, payload):
    trust = TrustRoot.load(shared_keys.trust_root)
    assert verify_envelope(sign_payload(payload, shared_keys.signers), trust) == payload


@settings(max_examples=25, deadline=None)
@given(flip=st.integers(min_value=0))
def test_any_flipped_payload_byte_is_refused(shared_keys, flip):
    trust = TrustRoot.load(shared_keys.trust_root)
    doc = json.loads(sign_payload(b'{"generation":1,"node":"node-1"}', shared_keys.signers))
    payload = bytearray(base64.b64decode(doc["payload"]))
    payload[flip % len(payload)] ^= 0x01
    doc["payload"] = base64.b64encode(bytes(payload)).decode()
    assert _reason(json.dumps(doc).encode(), trust) == "signature"


def test_signature_by_an_untrusted_key_is_refused(keys, make_keys):
    trust = TrustRoot.load(keys.trust_root)
    stranger = make_keys().signers
    assert _reason(sign_payload(b"{}", stranger), trust) == "signature"


def test_threshold_two_is_not_met_by_one_signature_repeated(make_keys):
    two = make_keys(threshold=2)
    trust = TrustRoot.load(two.trust_root)
    doc = json.loads(sign_payload(b"{}", two.signers[:1]))
    doc["signatures"] = doc["signatures"] * 2
    assert _reason(json.dumps(doc).encode(), trust) == "threshold"


def test_trust_root_listing_one_public_key_under_two_ids_is_refused(keys, tmp_path):
    doc = json.loads(keys.trust_root.read_bytes())
    ((keyid, key),) = doc["keys"].items()
    doc["keys"]["another-id"] = key
    doc["threshold"] = 2
    path = tmp_path / "twice.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="same public key"):
        TrustRoot.load(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(threshold=0), "threshold"),
        (lambda d: d.update(threshold=5), "threshold"),
        (lambda d: d.update(keys={}), "non-empty"),
        (lambda d: d.update(extra=1), "exactly"),
        (lambda d: next(iter(d["keys"].values())).pop("keyval"), "keyval"),
    ],
)
def test_malformed_trust_root_is_refused_naming_the_file(keys, tmp_path, mutate, message):
    doc = json.loads(keys.trust_root.read_bytes())
    mutate(doc)
    path = tmp_path / "bad-trust.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message) as e:
        TrustRoot.load(path)
    assert str(path) in str(e.value)


def test_trust_root_with_an_unsupported_key_type_fails_when_keys_are_checked(keys, tmp_path):
    doc = json.loads(keys.trust_root.read_bytes())
    next(iter(doc["keys"].values()))["scheme"] = "rot13"
    path = tmp_path / "rot13.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="not a usable public key"):
        TrustRoot.load(path).check_keys()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b'{"payload":"e30=","payloadType":"application/vnd.treadle.manifest+json","signatures":[',
            "envelope",
        ),
        (
            b'{"payload":"e30=","payload":"e30=","payloadType":"application/vnd.treadle.manifest+json","signatures":[]}',
            "envelope",
        ),
        (
            b'{"payload":"not base64!","payloadType":"application/vnd.treadle.manifest+json","signatures":[]}',
            "envelope",
        ),
        (
            b'{"payload":"e30=","payloadType":"application/vnd.treadle.manifest+json","signatures":[{"keyid":"k","sig":"%%"}]}',
            "envelope",
        ),
        (b'{"payload":"e30=","payloadType":"application/json","signatures":[]}', "payload_type"),
        (b"[]", "envelope"),
        (b"\xff\xfe", "envelope"),
    ],
)
def test_malformed_envelopes_are_refused_with_their_reason(data, reason):
    with pytest.raises(VerifyError) as e:
        parse_envelope(data)
    assert e.value.reason == reason


def test_wrong_payload_type_is_refused_even_when_correctly_signed(keys):
    from securesystemslib.dsse import Envelope

    env = Envelope(b"{}", "application/vnd.in-toto+json", {})
    env.sign(keys.signers[0])
    assert (
        _reason(json.dumps(env.to_dict()).encode(), TrustRoot.load(keys.trust_root))
        == "payload_type"
    )


def test_load_signer_reads_a_generated_key_and_refuses_a_missing_one(keys, tmp_path):
    signer = load_signer(str(keys.dir / "treadle.key"))
    assert signer.public_key.keyid in json.loads(keys.trust_root.read_bytes())["keys"]
    with pytest.raises(ConfigError, match="no such private key"):
        load_signer(str(tmp_path / "missing.key"))
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(ConfigError, match="not a usable PEM"):
        load_signer(str(tmp_path / "junk.key"))


def test_load_signer_accepts_a_signer_uri_with_its_public_key(keys):
    key = keys.dir / "treadle.key"
    signer = load_signer(f"file2:{key}#{keys.dir / 'treadle.pub.json'}")
    envelope = sign_payload(b"{}", [signer])
    assert verify_envelope(envelope, TrustRoot.load(keys.trust_root)) == b"{}"
    with pytest.raises(ConfigError, match="public key"):
        load_signer("gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1")


def test_same_public_key_in_other_hex_case_is_still_the_same_key(keys, tmp_path):
    doc = json.loads(keys.trust_root.read_bytes())
    ((keyid, key),) = doc["keys"].items()
    doc["keys"]["upper"] = {**key, "keyval": {"public": key["keyval"]["public"].upper()}}
    path = tmp_path / "case.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="same public key"):
        TrustRoot.load(path)
