"""Secret files: age ciphertext in the signed manifest, decrypted by the node with its own identity.

Real pyrage, a real HTTP server on 127.0.0.1, the agent in-process and as a
process; every place the agent writes to (logs, metrics, check output, the
state dir) is searched for a known plaintext marker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import pyrage

from support.procs import agent_cli
from treadle_agent import identity

MARKER = "PLAINTEXT-MARKER-5f1c"
SECRET_PATH = "/etc/munge/munge.key"


def secret_resource(
    plain: str, recipients: list[str], *, mode: str | None = "0400"
) -> dict[str, Any]:
    box = pyrage.encrypt(plain.encode(), [pyrage.x25519.Recipient.from_str(r) for r in recipients])
    return {
        "type": "file",
        "path": SECRET_PATH,
        "ensure": "present",
        "content": None,
        "sha256": None,
        "secret": {
            "age": base64.b64encode(box).decode(),
            "sha256": hashlib.sha256(box).hexdigest(),
        },
        "mode": mode,
        "owner": None,
        "group": None,
        "notify": [],
        "requires": [],
    }


def doc_with(kit, resource: dict[str, Any], generation: int = 1) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    doc = kit.manifest_doc(generation=generation)
    doc["resources"] = [*doc["resources"], resource]
    return doc


def _state_bytes(tmp_path) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(p.read_bytes() for p in sorted((tmp_path / "state").rglob("*")) if p.is_file())


def test_a_secret_reaches_only_its_file_never_logs_metrics_check_or_state(tmp_path, node, kit):
    me = identity.enroll(tmp_path / "state").recipient
    envelope = node.serve(doc_with(kit, secret_resource(f"{MARKER}\n", [me])))
    assert MARKER.encode() not in envelope  # what the controller and mirrors hold
    node.start()
    assert node.cycle().ok
    written = tmp_path / "root" / SECRET_PATH.lstrip("/")
    assert written.read_text() == f"{MARKER}\n" and os.stat(written).st_mode & 0o777 == 0o400
    assert MARKER.encode() not in node.agent.metrics.exposition()
    assert MARKER.encode() not in _state_bytes(
        tmp_path
    )  # inventory, envelope, facts: ciphertext digest only
    assert node.sample("treadle_agent_resources", type="file", status="in_sync") == 2

    # In sync: check says so without the content. Changed on disk: check names the ciphertext, not the content.
    checked = agent_cli("check", "--config", str(node.config_path), "--offline", "--format", "json")
    assert checked.returncode == 0, checked.stderr
    written.write_text(f"{MARKER} edited by hand\n")
    checked = agent_cli("check", "--config", str(node.config_path), "--offline", "--format", "json")
    text = agent_cli("check", "--config", str(node.config_path), "--offline")
    assert checked.returncode == 1 and "secret changed (ciphertext sha256 " in checked.stdout
    for out in (checked, text):
        assert MARKER not in out.stdout + out.stderr

    # A real process heals it, logging in JSON: nothing of the content in the log.
    healed = agent_cli("once", "--config", str(node.config_path), "--log-format", "json")
    assert healed.returncode == 0, healed.stderr
    assert written.read_text() == f"{MARKER}\n"
    assert "secret changed" in healed.stderr and MARKER not in healed.stdout + healed.stderr
    assert MARKER.encode() not in _state_bytes(tmp_path)


def test_a_secret_without_a_mode_is_written_0600(tmp_path, node, kit):
    me = identity.enroll(tmp_path / "state").recipient
    node.serve(doc_with(kit, secret_resource("k\n", [me], mode=None)))
    node.start()
    assert node.cycle().ok
    assert os.stat(tmp_path / "root" / SECRET_PATH.lstrip("/")).st_mode & 0o777 == 0o600


def test_a_node_outside_the_recipients_is_refused_counted_and_keeps_the_last_good_file(
    tmp_path, node, kit
):
    me = identity.enroll(tmp_path / "state").recipient
    other = str(pyrage.x25519.Identity.generate().to_public())
    node.serve(doc_with(kit, secret_resource("good\n", [me]), generation=1))
    node.start()
    assert node.cycle().ok
    node.serve(doc_with(kit, secret_resource(f"{MARKER}\n", [other]), generation=2))
    result = node.cycle()
    assert not result.ok and result.generation == 2
    assert (tmp_path / "root" / SECRET_PATH.lstrip("/")).read_text() == "good\n"
    assert node.sample("treadle_agent_resources", type="file", status="failed") == 1
    assert (
        node.sample("treadle_agent_resources", type="file", status="in_sync") == 1
    )  # the motd still converged
    checked = agent_cli("check", "--config", str(node.config_path), "--offline", "--format", "json")
    report = json.loads(checked.stdout)
    failed = [r for r in report["resources"] if r["status"] == "failed"]
    assert len(failed) == 1 and f"not encrypted to this node's identity {me}" in failed[0]["diff"]
    assert MARKER not in checked.stdout + checked.stderr


def test_a_node_without_an_identity_cannot_open_a_secret(tmp_path, node, kit):
    someone = str(pyrage.x25519.Identity.generate().to_public())
    node.serve(doc_with(kit, secret_resource(f"{MARKER}\n", [someone])))
    node.start()
    assert not node.cycle().ok
    assert not (tmp_path / "root" / SECRET_PATH.lstrip("/")).exists()
    assert node.sample("treadle_agent_resources", type="file", status="failed") == 1


def test_a_ciphertext_that_does_not_match_its_digest_is_refused(tmp_path, node, kit):
    me = identity.enroll(tmp_path / "state").recipient
    res = secret_resource("x\n", [me])
    res["secret"]["sha256"] = "0" * 64
    node.serve(doc_with(kit, res))
    node.start()
    assert not node.cycle().ok
    assert not (tmp_path / "root" / SECRET_PATH.lstrip("/")).exists()


def test_a_secret_with_content_beside_it_is_refused_by_the_schema(tmp_path, node, kit):
    me = identity.enroll(tmp_path / "state").recipient
    res = {
        **secret_resource("x\n", [me]),
        "content": "x\n",
        "sha256": hashlib.sha256(b"x\n").hexdigest(),
    }
    node.serve(doc_with(kit, res))
    node.start()
    result = node.cycle()
    assert result.refused == "schema" and result.generation is None
