"""The controller as a real process against real bare repositories, commits made with the git CLI."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.net import free_port
from treadle_agent.contract.envelope import verify_envelope
from treadle_agent.verify import parse_manifest


def manifests(envelopes: dict[str, bytes], trust_root) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    """Every envelope verified as an agent would, parsed."""
    return {
        n: dict(parse_manifest(verify_envelope(e, trust_root)).doc) for n, e in envelopes.items()
    }


def test_a_one_line_change_reaches_exactly_that_nodes_manifest(
    make_fabric, start_controller, trust_root
) -> None:
    repo, fabric = make_fabric(1, 2, 3)
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(fabric.commit)
    before = ctl.envelopes()
    assert len(before) == 6
    target = fabric.nodes[4]
    path = target.path
    path.write_text(path.read_text().replace("labels: {", "labels: {owner: team-x, ", 1))
    head = repo.commit_and_push("label one node")
    ctl.wait_deployed(head, timeout_s=30)
    after = ctl.envelopes()
    assert {n for n in after if after[n] != before[n]} == {target.name}
    old, new = manifests(before, trust_root)[target.name], manifests(after, trust_root)[target.name]
    assert new["metadata"]["generation"] > old["metadata"]["generation"]
    assert new["metadata"]["labels"]["owner"] == "team-x" and new["metadata"]["commit"] == head
    # the API serves the same bytes, with a strong ETag and a 304 when unchanged
    r = httpx.get(f"{ctl.url}/v1/nodes/{target.name}/manifest")
    assert r.content == after[target.name]
    assert (
        httpx.get(
            f"{ctl.url}/v1/nodes/{target.name}/manifest",
            headers={"If-None-Match": r.headers["etag"]},
        ).status_code
        == 304
    )
    assert httpx.get(f"{ctl.url}/v1/nodes/no-such-node/manifest").status_code == 404
    metrics = httpx.get(f"{ctl.url}/metrics").text
    assert f'treadle_controller_deployed_commit_info{{commit="{head}"}} 1.0' in metrics
    assert 'treadle_controller_commits_total{result="deployed"} 2.0' in metrics
    assert ctl.stop() == 0


def test_invalid_commit_is_refused_with_file_and_line_and_the_next_good_one_deploys(
    make_fabric, start_controller
) -> None:
    repo, fabric = make_fabric(1, 2, 3)
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(fabric.commit)
    before = ctl.envelopes()
    bad_file = fabric.nodes[0].path
    good_text = bad_file.read_text()
    bad_file.write_text(good_text + "labels: {unclosed: [1, 2\n")
    bad = repo.commit_and_push("broken yaml")
    doc = ctl.wait_refused(bad)
    rel = bad_file.relative_to(repo.work).as_posix()
    assert doc["last_refusal"]["reason"] == "invalid" and doc["deployed_commit"] == fabric.commit
    assert any(
        d.startswith(f"{rel}:") and d.split(":")[1].isdigit()
        for d in doc["last_refusal"]["diagnostics"]
    )
    assert ctl.envelopes() == before
    assert (
        'treadle_controller_rejected_commits_total{reason="invalid"} 1.0'
        in httpx.get(f"{ctl.url}/metrics").text
    )
    bad_file.write_text(good_text.replace("labels: {", "labels: {owner: fixed, ", 1))
    good = repo.commit_and_push("fixed")
    ctl.wait_deployed(good)
    after = ctl.envelopes()
    assert {n for n in after if after[n] != before[n]} == {fabric.nodes[0].name}
    out = subprocess.run(
        [sys.executable, "-m", "treadle.cli", "status", "--url", ctl.url],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and good in out.stdout and rel in out.stdout


def test_force_push_is_refused_until_accepted_with_the_cli(
    make_fabric, start_controller, tmp_path: Path
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    token = tmp_path / "admin.token"
    token.write_text("operator-secret\n")
    ctl = start_controller(str(repo.bare), f'admin_token_file = "{token}"\n')
    ctl.wait_deployed(fabric.commit)
    before = ctl.envelopes()
    fabric.nodes[0].path.write_text(
        fabric.nodes[0].path.read_text().replace("labels: {", "labels: {owner: rewritten, ", 1)
    )
    rewritten = repo.amend("rewritten history")
    repo.push(force=True)
    doc = ctl.wait_refused(rewritten)
    assert (
        doc["last_refusal"]["reason"] == "non_fast_forward"
        and doc["pending_history_acceptance"] == rewritten
    )
    assert ctl.envelopes() == before
    cli = [sys.executable, "-m", "treadle.cli"]
    status = subprocess.run([*cli, "status", "--url", ctl.url], capture_output=True, text=True)
    assert status.returncode == 1 and "accept-history" in status.stdout
    no_token = subprocess.run(
        [*cli, "rollout", "accept-history", rewritten, "--url", ctl.url],
        capture_output=True,
        text=True,
    )
    assert no_token.returncode == 2 and "401" in no_token.stderr
    accept = subprocess.run(
        [
            *cli,
            "rollout",
            "accept-history",
            rewritten[:12],
            "--url",
            ctl.url,
            "--token-file",
            str(token),
        ],
        capture_output=True,
        text=True,
    )
    assert accept.returncode == 0, accept.stderr
    doc = ctl.wait_deployed(rewritten)
    assert (
        doc["pending_history_acceptance"] is None
        and doc["deployments"][0]["kind"] == "accepted_rewrite"
    )
    assert ctl.envelopes()[fabric.nodes[0].name] != before[fabric.nodes[0].name]
    assert ctl.stop(signal.SIGINT) == 0 and '"controller.stopped"' in ctl.log.read_text()


def test_signed_policy_refuses_unsigned_and_unknown_signers_and_deploys_an_allowed_one(
    make_fabric, start_controller, ssh_keys
) -> None:
    repo, fabric = make_fabric(1, 1, 2, sign_with=ssh_keys.alice)
    head = repo.git("rev-parse", "HEAD")
    ctl = start_controller(
        str(repo.bare),
        f'[commit_policy]\nrequire_signed = true\nallowed_signers = "{ssh_keys.allowed_signers}"\n',
    )
    ctl.wait_deployed(head)
    before = ctl.envelopes()
    node = fabric.nodes[0].path
    node.write_text(node.read_text().replace("labels: {", "labels: {owner: a, ", 1))
    unsigned = repo.commit_and_push("unsigned")
    assert ctl.wait_refused(unsigned)["last_refusal"]["reason"] == "unsigned"
    node.write_text(node.read_text().replace("owner: a", "owner: b"))
    mallory = repo.commit_and_push("signed by mallory", *ssh_keys.opts(ssh_keys.mallory))
    # mallory's commit sits on top of the unsigned one, and commits are checked oldest first
    refusal = ctl.wait_refused(mallory)["last_refusal"]
    assert refusal["reason"] == "unsigned" and unsigned in refusal["message"]
    repo.git("reset", "-q", "--hard", head)
    node.write_text(node.read_text().replace("labels: {", "labels: {owner: c, ", 1))
    bad_only = repo.commit("mallory alone", *ssh_keys.opts(ssh_keys.mallory))
    repo.push(
        force=True
    )  # upstream drops the two refused commits; bad_only still fast-forwards the deployed one
    assert ctl.wait_refused(bad_only)["last_refusal"]["reason"] == "untrusted_signer"
    assert ctl.envelopes() == before
    repo.git("reset", "-q", "--hard", head)
    node.write_text(node.read_text().replace("labels: {", "labels: {owner: alice, ", 1))
    good = repo.commit("signed by alice", *ssh_keys.opts(ssh_keys.alice))
    repo.push(force=True)
    ctl.wait_deployed(good)


@pytest.fixture
def git_daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`git daemon` on 127.0.0.1 serving tmp_path: a network URL, so no ref watcher, only webhooks and polls."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
            "--export-all",
            f"--base-path={tmp_path}",
            str(tmp_path),
        ],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"git://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


def test_webhook_with_a_bad_hmac_is_401_and_triggers_nothing_while_a_good_one_deploys(
    make_fabric, start_controller, git_daemon, tmp_path: Path
) -> None:
    import hashlib
    import hmac

    repo, fabric = make_fabric(1, 1, 2)
    (tmp_path / "hook.secret").write_text("topsecret\n")
    ctl = start_controller(
        f"{git_daemon}/upstream.git", f'webhook_secret_file = "{tmp_path / "hook.secret"}"\n'
    )
    ctl.wait_deployed(fabric.commit)
    fabric.nodes[0].path.write_text(
        fabric.nodes[0].path.read_text().replace("labels: {", "labels: {owner: hook, ", 1)
    )
    head = repo.commit_and_push("via webhook")
    body = json.dumps({"ref": "refs/heads/main", "after": head}).encode()
    bad = hmac.new(b"wrong", body, hashlib.sha256).hexdigest()
    r = httpx.post(
        f"{ctl.url}/v1/hooks/git", content=body, headers={"X-Hub-Signature-256": f"sha256={bad}"}
    )
    assert r.status_code == 401
    time.sleep(1.5)
    assert ctl.status()["deployed_commit"] == fabric.commit
    good = hmac.new(b"topsecret", body, hashlib.sha256).hexdigest()
    r = httpx.post(
        f"{ctl.url}/v1/hooks/git", content=body, headers={"X-Hub-Signature-256": f"sha256={good}"}
    )
    assert r.status_code == 202
    ctl.wait_deployed(head, timeout_s=30)


def test_sigusr1_writes_every_threads_stack_and_the_controller_goes_on(
    make_fabric, start_controller
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(fabric.commit)
    ctl.proc.send_signal(signal.SIGUSR1)
    ctl.wait_for(
        lambda d: "Current thread" in ctl.log.read_text() or "Thread 0x" in ctl.log.read_text(),
        30,
        "a stack dump in the controller's output",
    )
    assert "treadle/daemon/process.py" in ctl.log.read_text() or "anyio" in ctl.log.read_text()
    assert ctl.proc.poll() is None and ctl.status()["deployed_commit"] == fabric.commit
