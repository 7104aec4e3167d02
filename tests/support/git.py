"""The git CLI as the tests drive it: a fixed identity, and no user or system configuration to depend on."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Who commits unless a test says otherwise.
IDENTITY = ("Test Author", "author@example.com")
#: The fabric admin of the fabric, console and differential tests.
ADA = ("Ada Admin", "ada@example.org")


def git_env(identity: tuple[str, str] = IDENTITY, **extra: str) -> dict[str, str]:
    """The environment of a git command: ``identity`` as author and committer, no global or system config."""
    name, email = identity
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        **extra,
    }


def git(
    cwd: Path,
    *args: str,
    identity: tuple[str, str] = IDENTITY,
    author: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run ``git args`` in ``cwd``; its stdout, stripped. ``author`` renames the author only; ``env`` adds variables.

    Raises:
        subprocess.CalledProcessError: git failed (its stderr is on the exception).
    """
    extra = dict(env or {})
    if author:
        extra["GIT_AUTHOR_NAME"] = author
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=git_env(identity, **extra),
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


@dataclass
class Repo:
    """A bare "upstream" repository and a work clone that commits and pushes to its ``main``."""

    bare: Path
    work: Path
    identity: tuple[str, str] = IDENTITY

    @classmethod
    def create(cls, bare: Path, work: Path, identity: tuple[str, str] = IDENTITY) -> Repo:
        """Both repositories, empty (``work`` may already hold files)."""
        bare.parent.mkdir(parents=True, exist_ok=True)
        git(bare.parent, "init", "-q", "--bare", "-b", "main", str(bare))
        work.mkdir(parents=True, exist_ok=True)
        git(work, "init", "-q", "-b", "main")
        git(work, "remote", "add", "origin", str(bare))
        return cls(bare, work, identity)

    def write(self, path: str, text: str) -> None:
        p = self.work / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def git(self, *args: str) -> str:
        return git(self.work, *args, identity=self.identity)

    def commit(self, message: str = "change", *extra: str) -> str:
        """Commit everything (``extra``: options before ``commit``, e.g. signing); the new HEAD."""
        self.git("add", "-A")
        self.git(*extra, "commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def amend(self, message: str = "rewritten") -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--amend", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def push(self, force: bool = False) -> None:
        self.git("push", "-q", *(["--force"] if force else []), "origin", "HEAD:main")

    def commit_and_push(self, message: str = "change", *extra: str) -> str:
        sha = self.commit(message, *extra)
        self.push()
        return sha
