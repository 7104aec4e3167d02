"""sign: stamped manifests verify as an agent checks them; the metadata splice equals a full encoding."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadle.daemon.sign import (
    ManifestSigner,
    ToSign,
    content_digest,
    manifest_from_envelope,
    stamped_canonical,
)
from treadle.errors import SigningKeyError
from treadle_agent.contract.envelope import verify_envelope
from treadle_agent.contract.manifest import canonical_json, parse_time, stamp
from treadle_agent.verify import parse_manifest

COMMIT = "c" * 40


def manifest(node: str = "n1", labels: dict[str, str] | None = None, content: str = "x") -> dict:  # type: ignore[type-arg]
    return {
        "apiVersion": "treadle.dev/v1",
        "kind": "NodeManifest",
        "metadata": {
            "node": node,
            "site": "s",
            "cluster": "c",
            "address": "10.0.0.1",
            "fabric": "f",
            "generation": 0,
            "commit": COMMIT,
            "issued": None,
            "expires": None,
            "lifecycle": "production",
            "labels": labels or {},
        },
        "resources": [
            {
                "type": "file",
                "path": "/etc/motd",
                "ensure": "present",
                "content": content,
                "mode": "0644",
                "sha256": hashlib.sha256(content.encode()).hexdigest(),
                "owner": "root",
                "group": "root",
                "notify": [],
                "requires": [],
            }
        ],
        "health": [],
    }


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    labels=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True), text, max_size=4
    ),
    content=text,
    generation=st.integers(1, 2**40),
)
def test_spliced_metadata_equals_encoding_the_whole_stamped_manifest(
    labels, content, generation
) -> None:  # type: ignore[no-untyped-def]
    m = manifest(labels=labels, content=content)
    item = ToSign("n1", m, content_digest(m), generation, COMMIT, "production", canonical_json(m))
    expected = canonical_json(
        stamp(
            m,
            generation=generation,
            commit=COMMIT,
            issued="2026-01-01T00:00:00Z",
            expires="2026-01-08T00:00:00Z",
        )
    )
    assert (
        stamped_canonical(item, issued="2026-01-01T00:00:00Z", expires="2026-01-08T00:00:00Z")
        == expected
    )


def test_content_digest_ignores_signing_time_metadata_only() -> None:
    m = manifest()
    stamped = stamp(
        m,
        generation=7,
        commit="d" * 40,
        issued="2026-01-01T00:00:00Z",
        expires="2026-01-02T00:00:00Z",
    )
    assert content_digest(m) == content_digest(stamped)
    assert content_digest(m) != content_digest(manifest(content="y"))


def test_signed_manifest_verifies_and_carries_generation_commit_and_lifetime(
    signing_key: Path, trust_root
) -> None:  # type: ignore[no-untyped-def]
    m = manifest()
    signer = ManifestSigner(str(signing_key), lifetime_s=3600)
    [signed] = signer.sign(
        [ToSign("n1", m, content_digest(m), 5, COMMIT, "production", canonical_json(m))],
        now=1_800_000_000,
    )
    doc = parse_manifest(verify_envelope(signed.envelope, trust_root)).doc
    meta = doc["metadata"]
    assert (meta["generation"], meta["commit"]) == (5, COMMIT)
    assert (
        parse_time(meta["expires"]) - parse_time(meta["issued"])
        == 3600
        == signed.expires - 1_800_000_000
    )
    assert manifest_from_envelope(signed.envelope) == doc


def test_unusable_signing_key_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(SigningKeyError, match="treadle keys generate"):
        ManifestSigner(str(tmp_path / "bad.key"), lifetime_s=60)
    with pytest.raises(SigningKeyError):
        ManifestSigner(str(tmp_path / "missing.key"), lifetime_s=60)


class Rendered:
    """The fields of treadle.fabric's RenderedNode that digests read."""

    def __init__(self, manifest: dict) -> None:  # type: ignore[type-arg]
        self.name = manifest["metadata"]["node"]
        self.manifest = manifest
        self.canonical = canonical_json(manifest)
        self.digest = hashlib.sha256(self.canonical).hexdigest()


def test_node_digest_is_the_same_for_the_same_content_at_any_commit() -> None:
    from treadle.daemon.sign import node_digest

    at_c, at_d = manifest(), manifest()
    at_d["metadata"]["commit"] = "d" * 40
    assert node_digest(Rendered(at_c)) == node_digest(Rendered(at_d)) == content_digest(at_c)
    assert node_digest(Rendered(manifest(content="other"))) != content_digest(at_c)


def test_digest_cache_rehashes_when_content_objects_or_metadata_change() -> None:
    from treadle.daemon.sign import DigestCache

    cache = DigestCache()
    m = manifest()
    first = cache(Rendered(m))
    reused = {
        **m,
        "metadata": {**m["metadata"], "commit": "e" * 40},
    }  # what the renderer does for an untouched node
    assert cache(Rendered(reused)) == first
    relabeled = {**m, "metadata": {**m["metadata"], "labels": {"a": "b"}}}
    assert cache(Rendered(relabeled)) == content_digest(relabeled) != first
    rerendered = manifest(content="new")
    assert cache(Rendered(rerendered)) == content_digest(rerendered)
