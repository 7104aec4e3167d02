"""Helpers of the plan suite: real git repositories made from the fabric template with the git CLI.

Commits carry a fixed identity and date, so their ids are the same on every
run and every machine; the goldens name them by branch all the same
(``normalize_commits``), so that an edit of the template elsewhere does not
touch them. Regenerate the goldens after a deliberate change
of the report or of the template with::

    TREADLE_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/review -q
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from support import REPO, copy_template
from support.git import git, git_env
from treadle.cli import main

GOLDEN = REPO / "tests" / "review" / "golden"
REGENERATE = os.environ.get("TREADLE_REGEN_GOLDEN") == "1"

#: A fixed identity and date: the commit ids are the same on every run and machine.
IDENTITY = ("Fabric Admin", "admin@example.org")
DATES = {"GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
GIT_ENV = {k: v for k, v in git_env(IDENTITY, **DATES).items() if k.startswith("GIT_")}


@dataclass
class FabricRepo:
    """A git work tree holding a copy of the template, committed as branch ``main``."""

    root: Path

    def git(self, *args: str) -> str:
        return git(self.root, *args, identity=IDENTITY, env=DATES)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def edit(self, rel: str, old: str, new: str) -> None:
        """Replace ``old`` (which must occur) by ``new`` in a file."""
        text = self.path(rel).read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {rel}"
        self.path(rel).write_text(text.replace(old, new, 1), encoding="utf-8")

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def branch(self, name: str) -> None:
        self.git("checkout", "-q", "-b", name)


def make_repo(root: Path) -> FabricRepo:
    """The template, committed as the first commit of ``main``."""
    copy_template(root)
    repo = FabricRepo(root)
    repo.git("init", "-q", "-b", "main")
    repo.commit("Example fabric")
    return repo


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``treadle ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def normalize_commits(text: str, commits: dict[str, str]) -> str:
    """Commit ids (full and 12-character) replaced by their names, e.g. ``<main>``: the goldens then
    survive edits elsewhere in the template, which change every commit id."""
    for sha, label in commits.items():
        text = text.replace(sha, f"<{label}>").replace(sha[:12], f"<{label}>")
    return text


def check_golden(name: str, text: str) -> None:
    """``text`` equals golden/NAME (rewritten instead when TREADLE_REGEN_GOLDEN=1)."""
    path = GOLDEN / name
    if REGENERATE:
        path.write_text(text, encoding="utf-8")
        return
    assert path.is_file(), f"{path} is missing: run with TREADLE_REGEN_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, (
        f"{name} differs from the golden file (TREADLE_REGEN_GOLDEN=1 rewrites it after a deliberate change)"
    )
