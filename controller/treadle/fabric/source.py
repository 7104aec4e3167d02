"""Read-only views of a fabric repository: a work tree directory or a git revision.

Both yield the same thing, ``{path: blob id}`` for every regular file plus the
bytes of a file on request, so the parse cache (keyed by git blob id) is shared
between work trees and revisions: a file whose content git already knows is
never parsed again. Symlinks and submodules are not content a fabric may
hold (the agent would get a different tree than the reviewer saw); a source
reports them as problems instead of following them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, cast

import pygit2

from treadle.errors import SourceError, UsageError
from treadle.fabric.patched import Patched

#: Files above this size are never read into memory, whatever fabric.yaml says.
HARD_MAX_FILE_BYTES = 64 * 1024 * 1024
#: Directories a work tree walk does not descend into (tool caches, VCS data).
SKIPPED_DIRS = frozenset({".git", "__pycache__"})

_GIT_SYMLINK = 0o120000
_GIT_GITLINK = 0o160000
_GIT_TREE = 0o040000


def blob_id(data: bytes) -> str:
    """The git blob id of ``data`` (sha1 of ``blob <len>\\0`` + data), as git computes it."""
    h = hashlib.sha1(b"blob %d\x00" % len(data))
    h.update(data)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """Something in the tree a fabric may not contain: ``kind`` is ``symlink``, ``submodule`` or ``too-large``."""

    path: str
    kind: str
    detail: str


class Source(Protocol):
    """What the renderer reads: a listing by blob id, file bytes, and what was refused."""

    commit: str | None
    label: str

    def entries(self) -> dict[str, str]: ...

    def read(self, path: str) -> bytes: ...

    def problems(self) -> list[SourceProblem]: ...


class WorkTreeSource:
    """A directory on disk (the working tree, or a fabric outside git).

    The walk reads every file once to compute its blob id; ``.git`` and
    ``__pycache__`` directories are skipped.

    Raises:
        UsageError: ``path`` is not a directory.
    """

    commit: str | None = None

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        if not self.root.is_dir():
            raise UsageError(f"{self.root}: not a directory (give the fabric repository's path)")
        self.label = str(self.root)
        self._data: dict[str, bytes] = {}
        self._entries: dict[str, str] = {}
        self._problems: list[SourceProblem] = []
        self._walk(self.root, "")

    def _walk(self, directory: str | Path, prefix: str) -> None:
        try:
            children = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            raise SourceError(f"{directory}: cannot list: {e.strerror}") from e
        for entry in children:
            rel = prefix + entry.name
            if entry.name == ".git":
                continue  # the repository's own data (a directory, or a file in worktrees and submodules)
            if entry.is_symlink():
                self._problems.append(
                    SourceProblem(rel, "symlink", f"symlink to {os.readlink(entry.path)}")
                )
            elif entry.is_dir():
                if entry.name in SKIPPED_DIRS:
                    continue
                if os.path.exists(os.path.join(entry.path, ".git")):
                    self._problems.append(
                        SourceProblem(rel, "submodule", "a nested git repository (submodule)")
                    )
                    continue
                self._walk(entry.path, rel + "/")
            elif entry.is_file():
                self._add_file(entry, rel)

    def _add_file(self, entry: os.DirEntry[str], rel: str) -> None:
        try:
            data = _read_file(entry.path)
        except OSError as e:
            raise SourceError(f"{rel}: cannot read: {e.strerror}") from e
        if isinstance(data, int):
            self._problems.append(SourceProblem(rel, "too-large", f"{data} bytes"))
            return
        self._data[rel] = data
        self._entries[rel] = blob_id(data)

    def entries(self) -> dict[str, str]:
        return dict(self._entries)

    def entries_view(self) -> Mapping[str, str]:
        """:meth:`entries` without the copy, read-only (the listing never changes)."""
        return MappingProxyType(self._entries)

    def read(self, path: str) -> bytes:
        try:
            return self._data[path]
        except KeyError:
            raise SourceError(f"{path}: not in {self.label}") from None

    def problems(self) -> list[SourceProblem]:
        return list(self._problems)


def _read_file(path: str) -> bytes | int:
    """The bytes of the file at ``path``, or its size when that is above HARD_MAX_FILE_BYTES.

    Five system calls (open, fstat, two reads, close): a 100,000-node work
    tree is read in about two thirds of the time of ``stat`` then
    ``open().read()``, which adds a stat, an ioctl and more. A file that grows
    while it is read is read to its end, as ``read()`` would.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > HARD_MAX_FILE_BYTES:
            return size
        chunks = [os.read(fd, size + 1)]
        total = len(chunks[0])
        while (
            chunks[-1] and total <= HARD_MAX_FILE_BYTES
        ):  # to the end, as read() does, whatever fstat said
            chunks.append(os.read(fd, 1 << 20))
            total += len(chunks[-1])
    finally:
        os.close(fd)
    if total > HARD_MAX_FILE_BYTES:
        return total
    return chunks[0] if len(chunks) <= 2 else b"".join(chunks)


def entries_of(src: object) -> Mapping[str, str]:
    """A source's listing without copying it when the source offers a read-only view (both sources here do)."""
    view = getattr(src, "entries_view", None)
    return view() if view is not None else src.entries()  # type: ignore[attr-defined]


def changed_paths(repo: pygit2.Repository, old: str, new: str) -> set[str]:
    """Paths that differ between the trees of commits ``old`` and ``new`` (added, deleted or modified, any file mode).

    What a tree diff without rename detection names, found by descending only
    into subtrees whose ids differ: a one-file change in a 100,000-file tree
    compares a few hundred entries instead of walking both trees, which
    libgit2's diff does (tens of milliseconds at that size).

    Raises:
        SourceError: a commit is missing or is not a commit.
    """
    try:
        a, b = repo[old].peel(pygit2.Tree), repo[new].peel(pygit2.Tree)
    except (KeyError, ValueError, pygit2.GitError) as e:
        raise SourceError(f"cannot diff {old[:12]}..{new[:12]}: {e}") from e
    out: set[str] = set()
    _diff_trees(repo, a, b, "", out)
    return out


def _tree(repo: pygit2.Repository, oid: pygit2.Oid) -> pygit2.Tree:
    """The tree ``oid`` names (a tree entry of mode 040000 always does)."""
    return cast(pygit2.Tree, repo[oid])


def _diff_trees(
    repo: pygit2.Repository,
    a: pygit2.Tree | None,
    b: pygit2.Tree | None,
    prefix: str,
    out: set[str],
) -> None:
    left = {e.name or "": e for e in a} if a is not None else {}
    right = {e.name or "": e for e in b} if b is not None else {}
    for name in left.keys() | right.keys():
        x, y = left.get(name), right.get(name)
        if x is not None and y is not None and x.id == y.id and x.filemode == y.filemode:
            continue
        x_tree = x is not None and x.filemode == _GIT_TREE
        y_tree = y is not None and y.filemode == _GIT_TREE
        if x_tree or y_tree:
            x_obj = _tree(repo, x.id) if x is not None and x_tree else None
            y_obj = _tree(repo, y.id) if y is not None and y_tree else None
            _diff_trees(repo, x_obj, y_obj, f"{prefix}{name}/", out)
        if (x is not None and not x_tree) or (y is not None and not y_tree):
            out.add(prefix + name)


def open_repository(repo: str | os.PathLike[str] | pygit2.Repository) -> pygit2.Repository:
    """A pygit2 repository from a path (work tree or bare) or an open one.

    Raises:
        UsageError: ``repo`` is not a git repository.
    """
    if isinstance(repo, pygit2.Repository):
        return repo
    found = pygit2.discover_repository(str(repo))
    if found is None:
        raise UsageError(f"{repo}: not a git repository (--rev needs one)")
    try:
        return pygit2.Repository(found)
    except pygit2.GitError as e:
        raise SourceError(f"{repo}: cannot open git repository: {e}") from e


def _prefix_in(repo: pygit2.Repository, given: object) -> str:
    """``sub/dir/`` when ``given`` is a path below the work tree's root, else ``""``."""
    if isinstance(given, pygit2.Repository) or repo.workdir is None:
        return ""
    rel = os.path.relpath(
        os.path.realpath(os.fspath(cast("str | os.PathLike[str]", given))),
        os.path.realpath(repo.workdir),
    )
    return "" if rel == "." else rel.replace(os.sep, "/") + "/"


class GitRevisionSource:
    """The tree of one commit (any rev spec git understands: HEAD, a branch, a sha, HEAD~2).

    Given the path of a directory inside a work tree, the fabric is that
    directory of the commit (``prefix``); given a repository object, its root.

    Raises:
        UsageError: the repository, the revision or the directory in it does not exist.
    """

    def __init__(self, repo: str | os.PathLike[str] | pygit2.Repository, rev: str = "HEAD") -> None:
        self.repo = open_repository(repo)
        try:
            commit = self.repo.revparse_single(rev).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError) as e:
            raise UsageError(f"{rev!r}: no such revision in {self.repo.path}") from e
        self.commit: str | None = str(commit.id)
        self.rev = rev
        self.label = f"{rev} ({self.commit[:12]})"
        self.prefix = _prefix_in(self.repo, repo)
        tree = commit.tree
        if self.prefix:
            try:
                tree = self.repo[tree[self.prefix.rstrip("/")].id].peel(pygit2.Tree)
            except (KeyError, ValueError, pygit2.GitError) as e:
                raise UsageError(
                    f"{self.prefix.rstrip('/')}: not a directory in revision {rev}"
                ) from e
        walked: dict[str, str] = {}
        self._problems: list[SourceProblem] = []
        self._walk(tree, "", walked)
        self._entries: Mapping[str, str] = walked

    @classmethod
    def derived(
        cls, base: GitRevisionSource, rev: str, changed: set[str] | frozenset[str]
    ) -> GitRevisionSource | None:
        """The source of ``rev`` made from ``base`` (an earlier revision's source) and the paths that differ
        between the two (``changed``, from a tree diff): only those paths are looked up in the new tree.

        A listing of a 100,000-node fabric walks 100,000 tree entries; a
        one-file change needs one lookup. None when the shortcut does not
        apply (a base with a prefix or problems, a changed path that is not a
        plain file in the new tree but exists there, e.g. a symlink, a
        submodule, or a directory): walk the whole tree instead. The listing
        equals a walk's (tests/fabric/test_source.py).
        """
        if base.prefix or base._problems:
            return None
        self = cls.__new__(cls)
        self.repo = base.repo
        try:
            commit = self.repo.revparse_single(rev).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError) as e:
            raise UsageError(f"{rev!r}: no such revision in {self.repo.path}") from e
        self.commit, self.rev, self.prefix = str(commit.id), rev, ""
        self.label = f"{rev} ({self.commit[:12]})"
        self._problems = []
        tree = commit.tree
        patch, gone = {}, set()
        for path in changed:
            if any(part in SKIPPED_DIRS for part in path.split("/")[:-1]):
                continue
            try:
                entry = tree[path]
            except KeyError:
                gone.add(path)  # deleted
                continue
            if entry.filemode in (_GIT_TREE, _GIT_SYMLINK, _GIT_GITLINK):
                return None
            patch[path] = str(entry.id)
        self._entries = Patched.of(base._entries, patch, gone)  # not a copy of the whole listing
        return self

    def _walk(self, tree: pygit2.Tree, prefix: str, into: dict[str, str]) -> None:
        for entry in tree:
            rel = prefix + (entry.name or "")
            mode = entry.filemode
            if mode == _GIT_TREE:
                if entry.name in SKIPPED_DIRS:
                    continue
                self._walk(_tree(self.repo, entry.id), rel + "/", into)
            elif mode == _GIT_SYMLINK:
                self._problems.append(SourceProblem(rel, "symlink", "symlink blob"))
            elif mode == _GIT_GITLINK:
                self._problems.append(
                    SourceProblem(rel, "submodule", f"submodule at commit {entry.id}")
                )
            else:
                into[rel] = str(entry.id)

    def entries(self) -> dict[str, str]:
        return dict(self._entries)

    def entries_view(self) -> Mapping[str, str]:
        """:meth:`entries` without the copy, read-only (the listing never changes)."""
        return (
            self._entries if isinstance(self._entries, Patched) else MappingProxyType(self._entries)
        )

    def read(self, path: str) -> bytes:
        try:
            return cast(pygit2.Blob, self.repo[self._entries[path]]).data
        except KeyError:
            raise SourceError(f"{path}: not in {self.label}") from None

    def problems(self) -> list[SourceProblem]:
        return list(self._problems)
