"""gate: fast-forwards only unless a rewrite is accepted; SSH-signed commits by allowed signers only."""

from __future__ import annotations

from pathlib import Path

import pytest

from treadle.daemon import gate
from treadle.daemon.fetch import GitSource
from treadle.errors import GateError


def mirror(repo, tmp_path: Path) -> GitSource:
    source = GitSource(str(repo.bare), "main", tmp_path / "state")
    source.fetch()
    return source


def test_first_deployment_and_fast_forward_pass(repo, tmp_path: Path) -> None:
    first = repo.commit_and_push("first")
    second = repo.commit_and_push("second")
    src = mirror(repo, tmp_path)
    assert gate.check(src.repo, None, first, history_accepted=False, policy=None).kind == "initial"
    d = gate.check(src.repo, first, second, history_accepted=False, policy=None)
    assert (d.kind, d.previous) == ("fast_forward", first)
    assert (
        gate.check(src.repo, second, second, history_accepted=False, policy=None).kind
        == "unchanged"
    )


def test_rewritten_history_is_refused_until_accepted(repo, tmp_path: Path) -> None:
    repo.commit_and_push("first")
    deployed = repo.commit_and_push("second")
    rewritten = repo.amend("second, rewritten")
    repo.push(force=True)
    src = mirror(repo, tmp_path)
    with pytest.raises(GateError) as e:
        gate.check(src.repo, deployed, rewritten, history_accepted=False, policy=None)
    assert e.value.reason == "non_fast_forward" and f"accept-history {rewritten}" in str(e.value)
    assert (
        gate.check(src.repo, deployed, rewritten, history_accepted=True, policy=None).kind
        == "accepted_rewrite"
    )


def test_going_back_to_an_ancestor_is_a_rewrite(repo, tmp_path: Path) -> None:
    first = repo.commit_and_push("first")
    second = repo.commit_and_push("second")
    src = mirror(repo, tmp_path)
    with pytest.raises(GateError, match="rewritten"):
        gate.check(src.repo, second, first, history_accepted=False, policy=None)


def test_every_new_commit_must_be_signed_by_an_allowed_signer(
    repo, ssh_keys, tmp_path: Path
) -> None:
    base = repo.commit_and_push("base, unsigned, before the policy")
    good = repo.commit("signed by alice", *ssh_keys.opts(ssh_keys.alice))
    unsigned = repo.commit("unsigned")
    repo.push()
    src = mirror(repo, tmp_path)
    policy = gate.SignaturePolicy(ssh_keys.allowed_signers)
    assert gate.check(src.repo, base, good, history_accepted=False, policy=policy).signers == (
        "alice@example.com",
    )
    with pytest.raises(GateError) as e:  # the head is unsigned, on top of a signed commit
        gate.check(src.repo, base, unsigned, history_accepted=False, policy=policy)
    assert e.value.reason == "unsigned" and unsigned in str(e.value)


def test_a_signed_head_does_not_launder_an_unsigned_commit_beneath_it(
    repo, ssh_keys, tmp_path: Path
) -> None:
    base = repo.commit_and_push("base")
    sneaky = repo.commit("unsigned, in the middle")
    head = repo.commit("signed head", *ssh_keys.opts(ssh_keys.alice))
    repo.push()
    src = mirror(repo, tmp_path)
    with pytest.raises(GateError) as e:
        gate.check(
            src.repo,
            base,
            head,
            history_accepted=False,
            policy=gate.SignaturePolicy(ssh_keys.allowed_signers),
        )
    assert e.value.reason == "unsigned" and sneaky in str(e.value)


def test_commit_signed_by_a_key_not_in_allowed_signers_is_refused(
    repo, ssh_keys, tmp_path: Path
) -> None:
    base = repo.commit_and_push("base")
    bad = repo.commit_and_push("signed by mallory", *ssh_keys.opts(ssh_keys.mallory))
    src = mirror(repo, tmp_path)
    with pytest.raises(GateError) as e:
        gate.check(
            src.repo,
            base,
            bad,
            history_accepted=False,
            policy=gate.SignaturePolicy(ssh_keys.allowed_signers),
        )
    assert e.value.reason == "untrusted_signer" and str(ssh_keys.allowed_signers) in str(e.value)


def test_first_deployment_under_the_policy_checks_the_head(repo, ssh_keys, tmp_path: Path) -> None:
    head = repo.commit_and_push("unsigned head")
    src = mirror(repo, tmp_path)
    with pytest.raises(GateError, match="not signed"):
        gate.check(
            src.repo,
            None,
            head,
            history_accepted=False,
            policy=gate.SignaturePolicy(ssh_keys.allowed_signers),
        )
