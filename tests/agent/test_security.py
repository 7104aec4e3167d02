"""Hostile manifests, served over real HTTP to an agent applying into a temp root.

Each test first lets the agent accept and apply a good manifest (generation 2),
then serves the bad one and asserts: the typed reason, the failure counter,
that applied files and stored state are byte-identical afterwards, and that the
last good manifest is still the one enforced.
"""

from __future__ import annotations

import base64
import json

import pytest

GOOD = {"/etc/motd": "good\n", "/etc/app.conf": "x = 1\n"}


@pytest.fixture
def enforced(node, kit):
    """A node enforcing a good generation-2 manifest; returns its snapshot."""
    node.start()
    node.serve(kit.manifest_doc(generation=2, files=GOOD))
    result = node.cycle()
    assert result.ok and (node.tmp / "root/etc/motd").read_text() == "good\n"
    return node.snapshot()


def _refused(node, reason: str, before: dict[str, bytes]) -> None:
    result = node.cycle()
    assert result.refused == reason
    assert node.sample("treadle_agent_verify_failures_total", reason=reason) == 1
    assert node.snapshot() == before
    assert (
        node.agent.trusted.manifest.generation == 2 and result.generation == 2 and result.apply_ok
    )


def _reenvelope(envelope: bytes, **changes: object) -> bytes:
    doc = json.loads(envelope)
    doc.update(changes)
    return json.dumps(doc).encode()


def test_tampered_payload_is_refused_and_nothing_changes(node, kit, enforced):
    envelope = node.serve(kit.manifest_doc(generation=3, files={"/etc/motd": "evil\n"}))
    evil = kit.manifest_doc(generation=3, files={"/etc/motd": "worse\n"})
    node.server.serve(
        _reenvelope(envelope, payload=base64.b64encode(json.dumps(evil).encode()).decode())
    )
    _refused(node, "signature", enforced)


def test_manifest_signed_by_an_untrusted_key_is_refused(node, kit, make_keys, enforced):
    node.serve(
        kit.manifest_doc(generation=3, files={"/etc/motd": "evil\n"}), signers=make_keys().signers
    )
    _refused(node, "signature", enforced)


def test_threshold_two_is_not_met_by_one_key_signing_twice(node, kit, make_keys, tmp_path):
    two = make_keys(threshold=2)
    node.keys = two
    node.start(trust_root=str(two.trust_root))
    node.serve(kit.manifest_doc(generation=2, files=GOOD))
    assert node.cycle().ok
    before = node.snapshot()
    envelope = node.serve(
        kit.manifest_doc(generation=3, files={"/etc/motd": "evil\n"}), signers=two.signers[:1]
    )
    doc = json.loads(envelope)
    node.server.serve(_reenvelope(envelope, signatures=doc["signatures"] * 2))
    _refused(node, "threshold", before)


def test_threshold_two_is_not_met_by_one_key_under_two_key_ids(node, kit, make_keys, tmp_path):
    """A trust root pinning one key under two ids is refused at load, so the agent never starts on it."""
    from treadle_agent.errors import ConfigError

    single = node.keys
    doc = json.loads(single.trust_root.read_bytes())
    ((keyid, key),) = doc["keys"].items()
    doc["keys"]["alias"] = key
    doc["threshold"] = 2
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="same public key"):
        node.start(trust_root=str(twice))


def test_signature_copied_under_a_second_key_id_counts_once(node, kit, make_keys):
    """Threshold 2 over two distinct keys: one real signature, and the same bytes claimed by the other key id."""
    two = make_keys(threshold=2)
    node.keys = two
    node.start(trust_root=str(two.trust_root))
    node.serve(kit.manifest_doc(generation=2, files=GOOD))
    assert node.cycle().ok
    before = node.snapshot()
    envelope = node.serve(
        kit.manifest_doc(generation=3, files={"/etc/motd": "evil\n"}), signers=two.signers[:1]
    )
    sig = json.loads(envelope)["signatures"][0]
    other = two.signers[1].public_key.keyid
    node.server.serve(_reenvelope(envelope, signatures=[sig, {"keyid": other, "sig": sig["sig"]}]))
    _refused(node, "threshold", before)


def test_manifest_for_another_node_is_refused(node, kit, enforced):
    node.serve(kit.manifest_doc(node="node-2", generation=3, files={"/etc/motd": "evil\n"}))
    _refused(node, "node", enforced)


def test_older_generation_is_refused_as_a_rollback(node, kit, enforced):
    node.serve(kit.manifest_doc(generation=1, files={"/etc/motd": "old\n"}))
    _refused(node, "rollback", enforced)


def test_same_generation_with_other_bytes_is_refused_as_equivocation(node, kit, enforced):
    node.serve(kit.manifest_doc(generation=2, files={"/etc/motd": "other\n"}))
    _refused(node, "equivocation", enforced)


def test_expired_manifest_is_refused_by_the_fake_clock(node, kit, enforced):
    node.serve(kit.manifest_doc(generation=3, files={"/etc/motd": "new\n"}, expires=kit.NOW + 100))
    node.clock[0] = kit.NOW + 101
    _refused(node, "expired", enforced)


def test_wrong_payload_type_is_refused(node, kit, enforced):
    envelope = node.serve(kit.manifest_doc(generation=3))
    node.server.serve(_reenvelope(envelope, payloadType="application/json"))
    _refused(node, "payload_type", enforced)


def test_truncated_envelope_is_refused(node, kit, enforced):
    envelope = node.serve(kit.manifest_doc(generation=3))
    node.server.serve(envelope[: len(envelope) // 2])
    _refused(node, "envelope", enforced)


def test_bad_base64_is_refused(node, kit, enforced):
    envelope = node.serve(kit.manifest_doc(generation=3))
    node.server.serve(_reenvelope(envelope, payload="%%%not-base64%%%"))
    _refused(node, "envelope", enforced)


def test_duplicate_json_keys_in_the_envelope_are_refused(node, kit, enforced):
    envelope = node.serve(kit.manifest_doc(generation=3))
    node.server.serve(envelope.replace(b'{"payload":', b'{"payloadType":"x","payload":', 1))
    _refused(node, "envelope", enforced)


def test_duplicate_json_keys_in_the_signed_payload_are_refused(node, kit, enforced):
    payload = json.dumps(kit.manifest_doc(generation=3), sort_keys=True, separators=(",", ":"))
    payload = payload.replace(
        '"kind":"NodeManifest"', '"kind":"NodeManifest","kind":"NodeManifest"'
    )
    node.serve(payload.encode())
    _refused(node, "schema", enforced)


def test_resource_path_with_dot_dot_fails_that_resource_and_writes_nothing_outside(
    node, kit, enforced
):
    """A path escaping the root is valid JSON Schema-wise; the applier must refuse it without writing."""
    node.serve(kit.manifest_doc(generation=3, files={**GOOD, "/etc/../../escape": "evil\n"}))
    result = node.cycle()
    assert result.refused is None and not result.apply_ok
    assert not (node.tmp / "escape").exists() and not (node.tmp.parent / "escape").exists()
    assert node.sample("treadle_agent_resources", type="file", status="failed") == 1


def test_response_over_the_size_cap_is_cut_off_and_counted(node, kit, enforced):
    node.start(max_manifest_bytes=4096)
    node.serve(kit.manifest_doc(generation=3, files={"/etc/motd": "x" * 8000}))
    result = node.cycle()
    assert result.fetch_failed == "too_large"
    assert node.sample("treadle_agent_fetch_failures_total", reason="too_large") == 1
    assert node.snapshot() == enforced and result.apply_ok


def test_endless_slow_response_is_cut_off_by_the_deadline(node, kit, enforced):
    node.start(fetch_deadline_s=0.5, read_timeout_s=5)
    node.server.serve(b"", mode="trickle")
    result = node.cycle()
    assert result.fetch_failed == "deadline"
    assert node.sample("treadle_agent_fetch_failures_total", reason="deadline") == 1
    assert node.snapshot() == enforced and result.apply_ok


def test_parent_directory_symlinked_outside_the_root_is_not_written_through(node, kit, enforced):
    outside = node.tmp / "outside"
    outside.mkdir()
    (node.tmp / "root/srv").symlink_to(outside)
    node.serve(kit.manifest_doc(generation=3, files={**GOOD, "/srv/app.conf": "evil\n"}))
    result = node.cycle()
    assert result.refused is None and not result.apply_ok
    assert list(outside.iterdir()) == []
    assert (node.tmp / "root/etc/motd").read_text() == "good\n"  # unrelated resources still applied


def test_relative_resource_path_is_refused_by_the_schema(node, kit, enforced):
    doc = kit.manifest_doc(generation=3)
    doc["resources"][0]["path"] = "etc/motd"
    node.serve(doc)
    _refused(node, "schema", enforced)
