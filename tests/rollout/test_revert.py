"""The revert branch holds exactly the inverse of the bad commit, pushed to the real fabric repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.git import git
from treadle.errors import SourceError
from treadle.rollout.revert import write_revert_branch


@pytest.fixture
def fabric(tmp_path: Path) -> tuple[Path, Path]:
    """A bare 'origin' and the controller's clone of it, with a good and a bad commit."""
    origin, work, clone = tmp_path / "origin.git", tmp_path / "work", tmp_path / "clone"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(tmp_path, "clone", "-q", str(origin), str(work))
    (work / "chrony.yaml").write_text("servers: [a, b]\nother: 1\n")
    git(work, "add", "."), git(work, "commit", "-qm", "good")
    (work / "chrony.yaml").write_text("servers: [a, BAD]\nother: 1\n")
    git(work, "commit", "-qam", "bad ntp server")
    git(work, "push", "-q", "origin", "main")
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    return origin, clone


def test_revert_branch_undoes_the_bad_commit_and_reaches_origin(fabric) -> None:
    origin, clone = fabric
    bad = git(clone, "rev-parse", "HEAD")
    branch = write_revert_branch(clone, str(origin), bad, bad, "wave canary: 1 of 1 nodes failed")
    assert branch.name == f"treadle/revert-{bad[:12]}"
    assert git(origin, "rev-parse", f"refs/heads/{branch.name}") == branch.commit
    diff = git(origin, "diff", "main", branch.name)
    assert "-servers: [a, BAD]" in diff and "+servers: [a, b]" in diff
    log = git(origin, "log", "-1", "--format=%B", branch.name)
    assert f"This reverts commit {bad}" in log and "wave canary" in log
    assert git(origin, "rev-parse", "main") == bad  # the tracked branch is never touched


def test_conflicting_revert_is_reported_not_forced(fabric) -> None:
    origin, clone = fabric
    bad = git(clone, "rev-parse", "HEAD")
    (clone / "chrony.yaml").write_text("servers: [a, c]\nother: 1\n")
    git(clone, "commit", "-qam", "later change to the same line")
    with pytest.raises(SourceError, match="conflicts in chrony.yaml"):
        write_revert_branch(clone, str(origin), bad, "HEAD", "x")
