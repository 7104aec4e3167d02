"""The revert branch: after a rollback, git must say what the fabric now runs.

A rollback re-publishes the previous content, so the nodes no longer run what
the tracked branch says. The controller therefore writes ``git revert`` of the
bad commit onto a branch ``treadle/revert-<sha12>`` (on top of the branch head
it was rolling out) and pushes it to the fabric repository, for admins to
review and merge. It never pushes to the tracked branch itself: git stays the
source of truth, changed only by people. The push goes through libgit2 with
the credentials the mirror is fetched with (:class:`treadle.daemon.fetch.GitCredentials`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pygit2

from treadle.daemon.fetch import Callbacks, GitCredentials
from treadle.errors import SourceError

SIGNATURE = ("Treadle", "treadle@localhost")


@dataclass(frozen=True, slots=True)
class RevertBranch:
    name: str
    commit: str


def branch_name(bad_commit: str) -> str:
    return f"treadle/revert-{bad_commit[:12]}"


def write_revert_branch(
    clone: Path,
    remote_url: str,
    bad_commit: str,
    onto: str,
    reason: str,
    credentials: GitCredentials | None = None,
) -> RevertBranch:
    """Commit the revert of ``bad_commit`` on top of ``onto`` and push it as the revert branch.

    Raises:
        SourceError: the revert conflicts (a later commit touched the same
            lines; an admin must revert by hand), or the push failed.
    """
    repo = pygit2.Repository(str(clone))
    try:
        return _write(repo, remote_url, bad_commit, onto, reason, credentials)
    finally:
        repo.free()  # its pack descriptors, shared with the mirror's own handle, close now


def _write(
    repo: pygit2.Repository,
    remote_url: str,
    bad_commit: str,
    onto: str,
    reason: str,
    credentials: GitCredentials | None,
) -> RevertBranch:
    try:
        bad, base = (
            repo.revparse_single(bad_commit).peel(pygit2.Commit),
            repo.revparse_single(onto).peel(pygit2.Commit),
        )
    except (KeyError, ValueError, pygit2.GitError) as e:
        raise SourceError(f"cannot revert {bad_commit[:12]}: {e}") from e
    index = repo.revert_commit(bad, base, mainline=1 if len(bad.parents) > 1 else 0)
    if index.conflicts is not None:
        paths = sorted({(entry or their or ours).path for entry, ours, their in index.conflicts})
        raise SourceError(
            f"git revert of {bad_commit[:12]} conflicts in {', '.join(paths)}; revert it by hand"
        )
    tree = index.write_tree(repo)
    sig = pygit2.Signature(*SIGNATURE)
    subject = bad.message.splitlines()[0] if bad.message else bad_commit[:12]
    message = (
        f'Revert "{subject}"\n\nThis reverts commit {bad.id}.\n\n'
        f"Treadle rolled this change back: {reason}\n"
    )
    commit = repo.create_commit(None, sig, sig, message, tree, [base.id])
    name = branch_name(str(bad.id))
    repo.references.create(f"refs/heads/{name}", commit, force=True)
    _push(repo, remote_url, name, credentials or GitCredentials())
    return RevertBranch(name=name, commit=str(commit))


def _push(repo: pygit2.Repository, remote_url: str, name: str, credentials: GitCredentials) -> None:
    ref = f"refs/heads/{name}"
    callbacks = _PushCallbacks(credentials)
    try:
        repo.remotes.create_anonymous(remote_url).push([f"+{ref}:{ref}"], callbacks=callbacks)
    except (pygit2.GitError, ValueError) as e:
        raise SourceError(f"pushing {name} to {remote_url} failed: {e}") from e
    if callbacks.rejected:
        raise SourceError(
            f"pushing {name} to {remote_url} failed: the server refused it: {callbacks.rejected}"
        )


class _PushCallbacks(Callbacks):
    """The mirror's credentials, plus the server's verdict on the pushed reference (a hook may refuse it)."""

    def __init__(self, credentials: GitCredentials) -> None:
        super().__init__(credentials)
        self.rejected = ""

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected = f"{refname}: {message}"
