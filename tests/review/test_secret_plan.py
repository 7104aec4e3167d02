"""A plan over a secret file shows that it changed and the ciphertext's digest, never the ciphertext or a plaintext."""

from __future__ import annotations

import json

import pyrage

from support.review import run_cli

NODE = "sites/meyrin/batch/nodes/batch-003.yaml"
MARKER_1, MARKER_2 = "PLAINTEXT-ONE-77ab", "PLAINTEXT-TWO-19cd"


def test_a_secret_change_is_planned_by_digest_alone(fabric_repo, tmp_path):
    me = pyrage.x25519.Identity.generate()
    text = fabric_repo.path(NODE).read_text()
    fabric_repo.path(NODE).write_text(
        text + f"identity: {me.to_public()}\n"
        "files:\n  /etc/munge/munge.key: {secret: secrets/munge.key.age}\n"
    )
    plain = tmp_path / "plain"
    plain.write_text(MARKER_1)
    assert (
        run_cli(
            "secret", "encrypt", "munge.key", "--in", str(plain), "--repo", str(fabric_repo.root)
        )[0]
        == 0
    )
    fabric_repo.commit("Deliver the munge key")
    fabric_repo.branch("change")
    plain.write_text(MARKER_2)
    assert (
        run_cli(
            "secret", "encrypt", "munge.key", "--in", str(plain), "--repo", str(fabric_repo.root)
        )[0]
        == 0
    )
    fabric_repo.commit("Rotate the munge key")
    new_box = fabric_repo.path("secrets/munge.key.age").read_bytes()
    code, out, err = run_cli("plan", str(fabric_repo.root), "main", "change")
    assert code == 0, err
    assert "secret changed (ciphertext sha256 " in out, out
    code, js, err = run_cli("plan", str(fabric_repo.root), "main", "change", "--format", "json")
    assert code == 0, err and json.loads(js)
    for text in (out, js, err):
        assert MARKER_1 not in text and MARKER_2 not in text
        assert new_box.splitlines()[1].decode() not in text  # not even the ciphertext
