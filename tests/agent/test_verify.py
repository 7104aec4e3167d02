"""The ordered acceptance (verify.py) over the trusted state, with real keys and a fake clock."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadle_agent.contract.manifest import canonical_json
from treadle_agent.contract.trustroot import TrustRoot
from treadle_agent.errors import VerifyError
from treadle_agent.trust import TrustedState
from treadle_agent.verify import Verifier


@pytest.fixture
def verifier(keys, kit):
    clock = [kit.NOW]
    v = Verifier(TrustRoot.load(keys.trust_root), kit.NODE, TrustedState(), clock=lambda: clock[0])
    v.fake_clock = clock  # type: ignore[attr-defined]
    return v


def _refusal(verifier: Verifier, data: bytes) -> str:
    before = (verifier.state.envelope, verifier.state.manifest, verifier.state.highest_generation)
    with pytest.raises(VerifyError) as e:
        verifier.accept(data)
    assert (
        verifier.state.envelope,
        verifier.state.manifest,
        verifier.state.highest_generation,
    ) == before
    return e.value.reason


def test_valid_manifest_is_accepted_and_becomes_the_trusted_state(verifier, keys, kit):
    envelope = kit.signed(kit.manifest_doc(generation=3), keys.signers)
    manifest = verifier.accept(envelope)
    assert (
        manifest.generation == 3
        and verifier.state.envelope == envelope
        and verifier.state.highest_generation == 3
    )


def test_manifest_for_another_node_is_refused(verifier, keys, kit):
    assert _refusal(verifier, kit.signed(kit.manifest_doc(node="node-2"), keys.signers)) == "node"


def test_older_generation_is_refused_as_rollback(verifier, keys, kit):
    verifier.accept(kit.signed(kit.manifest_doc(generation=5), keys.signers))
    assert (
        _refusal(verifier, kit.signed(kit.manifest_doc(generation=4), keys.signers)) == "rollback"
    )


def test_same_generation_with_other_bytes_is_refused_as_equivocation(verifier, keys, kit):
    verifier.accept(kit.signed(kit.manifest_doc(generation=5), keys.signers))
    other = kit.manifest_doc(generation=5, files={"/etc/motd": "something else\n"})
    assert _refusal(verifier, kit.signed(other, keys.signers)) == "equivocation"


def test_same_generation_with_identical_payload_is_accepted_again(verifier, keys, make_keys, kit):
    doc = kit.manifest_doc(generation=5)
    verifier.accept(kit.signed(doc, keys.signers))
    assert verifier.accept(kit.signed(doc, keys.signers)).generation == 5


def test_expired_manifest_is_refused_by_the_clock(verifier, keys, kit):
    assert (
        _refusal(verifier, kit.signed(kit.manifest_doc(expires=kit.NOW - 1), keys.signers))
        == "expired"
    )


def test_manifest_without_expiry_is_refused_as_expired(verifier, keys, kit):
    assert _refusal(verifier, kit.signed(kit.manifest_doc(expires=None), keys.signers)) == "expired"


def test_accepted_manifest_reserved_after_it_expired_is_refused_as_frozen(verifier, keys, kit):
    envelope = kit.signed(kit.manifest_doc(expires=kit.NOW + 10), keys.signers)
    verifier.accept(envelope)
    verifier.fake_clock[0] = kit.NOW + 11
    assert _refusal(verifier, envelope) == "expired"
    with pytest.raises(VerifyError, match="expired"):
        verifier.check_current()


def test_payload_breaking_the_schema_is_refused(verifier, keys, kit):
    doc = kit.manifest_doc()
    doc["resources"][0]["mode"] = 420  # an integer mode
    assert _refusal(verifier, kit.signed(doc, keys.signers)) == "schema"


def test_expiry_that_is_no_real_time_is_refused_as_schema(verifier, keys, kit):
    doc = kit.manifest_doc()
    doc["metadata"]["expires"] = "2026-13-45T99:99:99Z"
    assert _refusal(verifier, kit.signed(doc, keys.signers)) == "schema"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"apiVersion":"treadle.dev/v1","kind":"NodeManifest","kind":"NodeManifest"}',  # duplicate key
        b'{"apiVersion":"treadle.dev/v1","kind":"NodeMan',  # truncated
        b'{"x":1.5}',  # float
    ],
)
def test_signed_payload_that_is_not_strict_json_is_refused_as_schema(verifier, keys, kit, payload):
    assert _refusal(verifier, kit.signed(payload, keys.signers)) == "schema"


def test_checks_run_in_design_order_signature_before_node(verifier, make_keys, kit):
    stranger = make_keys().signers
    assert _refusal(verifier, kit.signed(kit.manifest_doc(node="node-2"), stranger)) == "signature"


def test_restore_of_a_verified_envelope_skips_signatures_but_checks_the_node(keys, kit):
    trust = TrustRoot.load(keys.trust_root)
    envelope = kit.signed(kit.manifest_doc(generation=7), keys.signers)
    v = Verifier(trust, kit.NODE, TrustedState(highest_generation=9), clock=lambda: kit.NOW)
    assert v.restore(envelope, verified=True).generation == 7
    assert v.state.highest_generation == 9  # never lowered by the stored manifest
    other = Verifier(trust, "node-2", TrustedState())
    with pytest.raises(VerifyError, match="node"):
        other.restore(envelope, verified=True)


def test_restore_under_a_changed_trust_root_verifies_signatures_again(keys, make_keys, kit):
    envelope = kit.signed(kit.manifest_doc(), keys.signers)
    rotated = TrustRoot.load(make_keys().trust_root)
    with pytest.raises(VerifyError) as e:
        Verifier(rotated, kit.NODE, TrustedState()).restore(envelope, verified=False)
    assert e.value.reason == "signature"


def test_envelope_from_the_controller_is_canonical_json(keys, kit):
    envelope = kit.signed(kit.manifest_doc(), keys.signers)
    assert canonical_json(json.loads(envelope)) == envelope


def _bad_envelopes(keys, make_keys, kit) -> dict[str, bytes]:
    good = kit.signed(kit.manifest_doc(generation=3), keys.signers)
    doc = json.loads(good)
    bad_schema = kit.manifest_doc()
    bad_schema["resources"][0]["mode"] = 420
    return {
        "envelope": good[:-5],
        "payload_type": json.dumps({**doc, "payloadType": "text/plain"}).encode(),
        "signature": kit.signed(kit.manifest_doc(generation=3), make_keys().signers),
        "schema": kit.signed(bad_schema, keys.signers),
    }


def test_isolated_verifier_process_gives_the_same_answers_as_in_process(keys, make_keys, kit):
    from treadle_agent.verify import InProcessAuthenticator, IsolatedAuthenticator

    trust = TrustRoot.load(keys.trust_root)
    isolated, local = IsolatedAuthenticator(trust.raw), InProcessAuthenticator(trust)
    good = kit.signed(kit.manifest_doc(generation=3), keys.signers)
    assert isolated(good) == local(good)
    for reason, data in _bad_envelopes(keys, make_keys, kit).items():
        with pytest.raises(VerifyError) as e:
            isolated(data)
        assert e.value.reason == reason


def test_isolated_verifier_refuses_an_unusable_trust_root_as_a_config_error(keys):
    from treadle_agent.errors import ConfigError
    from treadle_agent.verify import IsolatedAuthenticator

    doc = json.loads(keys.trust_root.read_bytes())
    next(iter(doc["keys"].values()))["scheme"] = "rot13"
    with pytest.raises(ConfigError, match="not a usable public key"):
        IsolatedAuthenticator(json.dumps(doc).encode()).check_keys()
    IsolatedAuthenticator(keys.trust_root.read_bytes()).check_keys()


@settings(max_examples=40, deadline=None)
@given(
    served=st.lists(
        st.tuples(st.integers(min_value=0, max_value=6), st.sampled_from(["a", "b"])),
        min_size=1,
        max_size=8,
    )
)
def test_generation_never_goes_back_and_one_generation_never_carries_two_contents(
    shared_keys, kit, served
):
    """For any sequence served: accepted iff newer, or the same generation with the same bytes."""
    v = Verifier(
        TrustRoot.load(shared_keys.trust_root), kit.NODE, TrustedState(), clock=lambda: kit.NOW
    )
    highest, current = 0, None
    for generation, variant in served:
        payload = canonical_json(
            kit.manifest_doc(generation=generation, files={"/etc/motd": variant})
        )
        expected = generation > highest or (generation == highest and current in (None, payload))
        try:
            v.accept(kit.signed(payload, shared_keys.signers))
            accepted = True
        except VerifyError as e:
            assert e.reason in ("rollback", "equivocation")
            accepted = False
        assert accepted == expected
        if accepted:
            highest, current = generation, payload
        assert v.state.highest_generation == highest and (
            v.state.manifest is None or v.state.manifest.raw == current
        )
