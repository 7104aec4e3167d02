"""A new fabric repository from the shipped template (``treadle init``), committed when git is installed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from treadle.errors import UsageError

_SKIP = {"__pycache__", "__init__.py"}


def new_fabric(target: Path, warn: Callable[[str], None]) -> bool:
    """Copy the template into ``target`` (new or empty) and make its first commit; whether it was committed.

    A git step that fails is passed to ``warn`` and leaves the files uncommitted.

    Raises:
        UsageError: ``target`` is not a new or empty directory, or cannot be written; the template is missing.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"{target}: exists and is not an empty directory (give a new directory)")
    try:
        target.mkdir(parents=True, exist_ok=True)
        _copy_tree(_template_root(), target)
    except OSError as e:
        raise UsageError(f"{target}: cannot write: {e.strerror}") from e
    return _git_init(target, warn)


def _template_root() -> Traversable:
    """The shipped template. A namespace package installed in editable mode has a
    non-directory entry on its path that importlib.resources refuses (Python 3.11);
    then the package's real directory is used."""
    try:
        return resources.files("treadle_template")
    except (NotADirectoryError, ModuleNotFoundError, TypeError):
        spec = importlib.util.find_spec("treadle_template")
        dirs = (
            [p for p in (spec.submodule_search_locations or []) if os.path.isdir(p)] if spec else []
        )
        if not dirs:
            raise UsageError(
                "the fabric template (package treadle_template) is not installed"
            ) from None
        return Path(dirs[0])


def _copy_tree(src: Traversable, dst: Path) -> None:
    for item in src.iterdir():
        if item.name in _SKIP:
            continue
        if item.is_dir():
            (dst / item.name).mkdir(exist_ok=True)
            _copy_tree(item, dst / item.name)
        else:
            (dst / item.name).write_bytes(item.read_bytes())


def _git_init(target: Path, warn: Callable[[str], None]) -> bool:
    """``git init`` and a first commit when git is installed; an identity is supplied only if none is configured."""
    git = shutil.which("git")
    if git is None:
        return False
    env = dict(os.environ)
    if (
        subprocess.run([git, "config", "user.email"], cwd=target, capture_output=True).returncode
        != 0
    ):
        env.update(
            GIT_AUTHOR_NAME="Treadle",
            GIT_AUTHOR_EMAIL="treadle@localhost",
            GIT_COMMITTER_NAME="Treadle",
            GIT_COMMITTER_EMAIL="treadle@localhost",
        )
    steps = (
        [git, "init", "-q"],
        [git, "symbolic-ref", "HEAD", "refs/heads/main"],
        [git, "add", "-A"],
        [git, "commit", "-q", "-m", "New fabric from the Treadle template"],
    )
    for step in steps:
        done = subprocess.run(step, cwd=target, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            warn(f"{' '.join(step[1:3])} failed: {done.stderr.strip()}")
            return False
    return True
