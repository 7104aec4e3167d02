"""gate: decide whether a fetched head may deploy at all, before anything is rendered.

Two rules, both refusals a human must resolve (they are never retried into success):

- **Fast-forward only.** The new head must descend from the deployed commit.
  A rewritten history (force-push) is refused with reason
  ``non_fast_forward`` until an operator accepts that exact commit
  (``treadle rollout accept-history SHA``), and the acceptance is recorded.
- **Signed commits** (optional). Every commit new to the controller must
  carry an SSH signature (git's format: ``gpg.format=ssh``) by a key in an
  OpenSSH allowed_signers file, verified with ``ssh-keygen -Y verify`` in the
  ``git`` namespace exactly as git itself does. "New" means between the
  deployed commit (or, after an accepted rewrite, the merge base) and the
  head; on the very first deployment only the head itself, since trust has to
  start somewhere and the operator chose that repository.

Raises:
    GateError: reasons ``non_fast_forward``, ``unsigned``, ``untrusted_signer``.
    SourceError: a commit is missing from the mirror.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pygit2

from treadle.errors import GateError, SourceError

SSH_SIGNATURE_HEADER = b"-----BEGIN SSH SIGNATURE-----"
SSH_KEYGEN_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class GateDecision:
    """A head allowed to deploy. ``kind``: initial, fast_forward, accepted_rewrite, unchanged."""

    commit: str
    previous: str | None
    kind: str
    signers: tuple[str, ...] = ()


class SignaturePolicy:
    """Commits must be SSH-signed by a principal in ``allowed_signers``."""

    def __init__(self, allowed_signers: Path) -> None:
        self.allowed_signers = allowed_signers
        self._verified: dict[
            str, str
        ] = {}  # commit id -> principal; a commit's signature never changes

    def verify(self, repo: pygit2.Repository, commit_id: str) -> str:
        """The principal that signed ``commit_id``.

        Raises:
            GateError: ``unsigned`` (no signature, or not an SSH one) or ``untrusted_signer``.
        """
        if commit_id in self._verified:
            return self._verified[commit_id]
        signature, payload = _commit(repo, commit_id).gpg_signature
        if not signature:
            raise GateError(
                "unsigned",
                f"commit {commit_id} is not signed; sign it with an SSH key listed in {self.allowed_signers}",
            )
        if not signature.lstrip().startswith(SSH_SIGNATURE_HEADER):
            raise GateError(
                "unsigned",
                f"commit {commit_id} carries a non-SSH (OpenPGP or X.509) signature; "
                "only SSH signatures (git config gpg.format ssh) are accepted",
            )
        principal = self._check(commit_id, signature, payload)
        self._verified[commit_id] = principal
        return principal

    def _check(self, commit_id: str, signature: bytes, payload: bytes) -> str:
        with tempfile.NamedTemporaryFile(prefix="treadle-sig-", suffix=".sig") as sig:
            sig.write(signature)
            sig.flush()
            found = _ssh_keygen(
                ["-Y", "find-principals", "-f", str(self.allowed_signers), "-s", sig.name], b""
            )
            principals = (
                found.stdout.decode("utf-8", "replace").split() if found.returncode == 0 else []
            )
            if not principals:
                raise GateError(
                    "untrusted_signer",
                    f"commit {commit_id} is signed by a key not in {self.allowed_signers}; "
                    "add the signer's public key there or re-sign the commit with an allowed key",
                )
            for principal in principals:
                result = _ssh_keygen(
                    [
                        "-Y",
                        "verify",
                        "-f",
                        str(self.allowed_signers),
                        "-I",
                        principal,
                        "-n",
                        "git",
                        "-s",
                        sig.name,
                    ],
                    payload,
                )
                if result.returncode == 0:
                    return principal
        raise GateError(
            "untrusted_signer",
            f"commit {commit_id}: the signature does not verify for {', '.join(principals)} "
            f"in {self.allowed_signers} (the commit was altered, or the key is not valid for namespace git)",
        )


def _ssh_keygen(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["ssh-keygen", *args],
            input=stdin,
            capture_output=True,
            timeout=SSH_KEYGEN_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as e:
        raise GateError(
            "untrusted_signer",
            "ssh-keygen is not installed; install openssh-client to verify commit signatures",
        ) from e
    except subprocess.TimeoutExpired as e:
        raise GateError(
            "untrusted_signer", f"ssh-keygen took longer than {SSH_KEYGEN_TIMEOUT_S} s"
        ) from e


def _commit(repo: pygit2.Repository, commit_id: str) -> pygit2.Commit:
    try:
        return repo[commit_id].peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError) as e:
        raise SourceError(f"commit {commit_id} is not in the mirror: {e}") from e


def check(
    repo: pygit2.Repository,
    deployed: str | None,
    head: str,
    *,
    history_accepted: bool,
    policy: SignaturePolicy | None,
) -> GateDecision:
    """Decide whether ``head`` may replace ``deployed``; see the module docstring.

    Raises:
        GateError, SourceError: see the module docstring.
    """
    _commit(repo, head)
    if deployed == head:
        return GateDecision(head, deployed, "unchanged")
    if deployed is None:
        kind, base = "initial", None
    elif _descends(repo, head, deployed):
        kind, base = "fast_forward", deployed
    elif history_accepted:
        kind, base = "accepted_rewrite", _merge_base(repo, head, deployed)
    else:
        raise GateError(
            "non_fast_forward",
            f"commit {head} does not descend from the deployed commit {deployed} "
            f"(history was rewritten); if intended, run `treadle rollout accept-history {head}`",
        )
    signers: tuple[str, ...] = ()
    if policy is not None:
        signers = tuple(policy.verify(repo, c) for c in new_commits(repo, head, base))
    return GateDecision(head, deployed, kind, signers)


def _descends(repo: pygit2.Repository, head: str, ancestor: str) -> bool:
    try:
        return repo.descendant_of(head, ancestor)
    except (pygit2.GitError, ValueError, KeyError):
        return False  # the deployed commit is gone from the mirror: treat as a rewrite


def _merge_base(repo: pygit2.Repository, a: str, b: str) -> str | None:
    try:
        base = repo.merge_base(a, b)
    except (pygit2.GitError, ValueError, KeyError):
        return None
    return str(base) if base else None


def new_commits(repo: pygit2.Repository, head: str, base: str | None) -> list[str]:
    """Commits reachable from ``head`` but not from ``base``, oldest first; only ``head`` when there is no base."""
    if base is None:
        return [head]
    walker = repo.walk(head, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE)
    walker.hide(base)
    return [str(c.id) for c in walker]
