"""Safe paths below the managed root, and atomic writes.

Rules this module enforces for every file the agent touches:

- A resource path is absolute, has no ``.``/``..``/empty components and no NUL
  (:func:`split_path`); otherwise PathEscapeError.
- Parents are opened one component at a time relative to the previous
  directory's fd with ``O_NOFOLLOW``, so a symlink is never followed by the
  kernel. A symlinked parent is resolved here, against the root (an absolute
  target means ``root/target``, as in a chroot); a target that climbs above the
  root is a PathEscapeError. The final component is never followed: it is
  stat'ed, replaced or removed as what it is.
- Directory fds are cached for one run (:class:`RootFS` is a context manager),
  so checking 1,000 files in one directory costs one open and 1,000 ``fstatat``.
- Writes are atomic: a temp file in the same directory, fsync, rename over the
  target, and an fsync of the directory (batched: once per directory per run,
  before the run's inventory is saved). Temp files are named
  ``.<name>.treadle-tmp`` so that a killed run's leftovers can be found
  (:meth:`RootFS.remove_temp_files`) and are never mistaken for content.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from pathlib import Path

from treadle_agent.errors import HostError, PathEscapeError

TEMP_SUFFIX = ".treadle-tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40


@functools.lru_cache(maxsize=65536)
def split_path(path: str) -> tuple[str, ...]:
    """The components of absolute resource ``path``; raises PathEscapeError if it is unsafe."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise PathEscapeError(
            f"resource path {path!r} is relative: write it from the root, e.g. /etc/foo.conf"
        )
    if "\0" in path:
        raise PathEscapeError(f"resource path {path!r} contains a NUL byte")
    parts = tuple(path[1:].split("/"))
    if parts == ("",):
        raise PathEscapeError("resource path '/' is the managed root itself; name a path below it")
    for p in parts:
        if p in ("", ".", ".."):
            raise PathEscapeError(
                f"resource path {path!r} has a {p or 'empty'!r} component: write it without '.', '..' or '//'"
            )
    return parts


def temp_name(name: str) -> str:
    """The fixed temp name used while replacing ``name`` (hashed if it would be too long)."""
    t = f".{name}{TEMP_SUFFIX}"
    if len(t.encode()) > 255:
        t = f".{hashlib.sha256(name.encode()).hexdigest()[:32]}{TEMP_SUFFIX}"
    return t


def _oserror(path: str, action: str, e: OSError) -> HostError:
    return HostError(f"{path}: cannot {action}: {e.strerror or e}")


class RootFS:
    """Directory fds below ``root`` for one run; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_real = os.path.realpath(root)
        try:
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise HostError(f"managed root {root}: cannot open: {e.strerror or e}") from e
        self._fds: dict[tuple[str, ...], int] = {(): root_fd}
        #: Logical components -> the real components below root they resolved to.
        self._real_of: dict[tuple[str, ...], tuple[str, ...]] = {(): ()}
        self._dirty_dirs: dict[int, None] = {}

    def __enter__(self) -> RootFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in set(self._fds.values()):
            os.close(fd)
        self._fds.clear()

    # --- resolution ---------------------------------------------------------

    def dir_fd(
        self, comps: tuple[str, ...], *, create: bool = False, _links: int = 0
    ) -> int | None:
        """An fd of directory ``comps`` (below root), or None if it does not exist and ``create`` is false.

        Raises:
            PathEscapeError: a symlink on the way leads outside the root.
            HostError: a component is not a directory, or cannot be opened or created.
        """
        fd = self._fds.get(comps)
        if fd is not None:
            return fd
        parent = self.dir_fd(comps[:-1], create=create, _links=_links)
        if parent is None:
            return None
        name = comps[-1]
        where = "/" + "/".join(comps)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            self._real_of[comps] = self._real(comps[:-1]) + (name,)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
            except FileExistsError:
                pass
            except OSError as e:
                raise _oserror(where, "create directory", e) from e
            self.mark_dirty(parent)
            return self.dir_fd(comps, create=create, _links=_links)
        except OSError as e:
            fd = self._through_link(comps, parent, create, _links, e)
        self._fds[comps] = fd
        return fd

    def _through_link(
        self, comps: tuple[str, ...], parent: int, create: bool, links: int, err: OSError
    ) -> int:
        where = "/" + "/".join(comps)
        try:
            st = os.stat(comps[-1], dir_fd=parent, follow_symlinks=False)
        except OSError as e:
            raise _oserror(where, "open directory", e) from e
        if stat.S_ISDIR(st.st_mode):
            raise _oserror(where, "open directory", err) from err
        if not stat.S_ISLNK(st.st_mode):
            raise HostError(f"{where} is not a directory")
        if links >= _MAX_LINKS:
            raise PathEscapeError(f"{where}: too many levels of symbolic links")
        target = os.readlink(comps[-1], dir_fd=parent)
        resolved = self._resolve(comps[:-1], target, where)
        fd = self.dir_fd(resolved, create=create, _links=links + 1)
        if fd is None:
            raise HostError(f"{where} is a symlink to {target}, which does not exist")
        self._real_of[comps] = self._real(resolved)
        return fd

    def _resolve(self, base: tuple[str, ...], target: str, where: str) -> tuple[str, ...]:
        """Lexically resolve symlink ``target`` found in directory ``base`` (whose components are real)."""
        if "\0" in target or not target:
            raise PathEscapeError(f"{where} is a symlink with an unusable target")
        # base may itself have been reached through a link; the key stays the
        # logical path, but ".." must climb the real one.
        if target.startswith("/"):
            inside = (
                self._root_real == "/"
                or target == self._root_real
                or target.startswith(self._root_real + "/")
            )
            if not inside:
                raise PathEscapeError(
                    f"{where} is a symlink to {target}, which leads outside the managed root {self.root}"
                )
            target = target[len(self._root_real) :] if self._root_real != "/" else target
            out: list[str] = []
        else:
            out = list(self._real(base))
        for p in target.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if not out:
                    raise PathEscapeError(
                        f"{where} is a symlink to {target}, which leads outside the managed root {self.root}"
                    )
                out.pop()
            else:
                out.append(p)
        return tuple(out)

    def _real(self, comps: tuple[str, ...]) -> tuple[str, ...]:
        return self._real_of.get(comps, comps)

    def parent(self, path: str, *, create: bool = False) -> tuple[int | None, str]:
        """(fd of the parent directory or None if missing, final name) of resource ``path``."""
        comps = split_path(path)
        return self.dir_fd(comps[:-1], create=create), comps[-1]

    def forget(self, path: str) -> None:
        """Drop cached fds at or below ``path`` (it was removed or replaced), and aliases of them."""
        comps = split_path(path)
        n = len(comps)
        gone = {
            self._fds[k]
            for k in self._fds
            if k and (k[:n] == comps or self._real_of.get(k, k)[:n] == comps)
        }
        for key in [k for k, fd in self._fds.items() if k and fd in gone]:
            del self._fds[key]
            self._real_of.pop(key, None)
        for fd in gone:
            self._dirty_dirs.pop(fd, None)
            os.close(fd)

    # --- reading ------------------------------------------------------------

    def lstat(self, path: str) -> os.stat_result | None:
        """lstat of ``path`` (not following a final symlink), or None if it or a parent is missing."""
        fd, name = self.parent(path)
        if fd is None:
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _oserror(path, "stat", e) from e

    def open_regular(self, path: str, flags: int = os.O_RDONLY) -> int:
        """An fd of regular file ``path``, never through a final symlink."""
        fd, name = self.parent(path)
        if fd is None:
            raise HostError(f"{path}: parent directory does not exist")
        try:
            f = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            raise _oserror(path, "open", e) from e
        if not stat.S_ISREG(os.fstat(f).st_mode):
            os.close(f)
            raise HostError(f"{path} is not a regular file")
        return f

    def read(self, path: str) -> bytes | None:
        """The bytes of regular file ``path``, or None if it does not exist."""
        fd, name = self.parent(path)
        if fd is None:
            return None
        try:
            f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _oserror(path, "open", e) from e
        try:
            if not stat.S_ISREG(os.fstat(f).st_mode):
                raise HostError(f"{path} is not a regular file")
            chunks = []
            while chunk := os.read(f, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(f)

    def sha256(self, path: str) -> str:
        """Hex sha256 of regular file ``path``."""
        f = self.open_regular(path)
        try:
            h = hashlib.sha256()
            while chunk := os.read(f, 1 << 20):
                h.update(chunk)
            return h.hexdigest()
        finally:
            os.close(f)

    # --- writing ------------------------------------------------------------

    def mark_dirty(self, dir_fd: int | None) -> None:
        """Note that ``dir_fd``'s entries changed (None, a directory that is missing: nothing to sync)."""
        if dir_fd is not None:
            self._dirty_dirs[dir_fd] = None

    def sync_dirs(self) -> None:
        """fsync every directory whose entries changed this run."""
        for fd in self._dirty_dirs:
            os.fsync(fd)
        self._dirty_dirs.clear()

    def write_atomic(
        self, path: str, data: bytes, *, mode: int, uid: int = -1, gid: int = -1
    ) -> os.stat_result:
        """Replace ``path`` by a file holding ``data`` (creating parents); returns the new file's stat.

        The old file (or symlink) stays in place, whole, until the rename.
        """
        fd, name = self.parent(path, create=True)
        assert fd is not None
        tmp = temp_name(name)
        try:
            os.unlink(tmp, dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _oserror(path, "remove stale temp file", e) from e
        try:
            f = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=fd,
            )
        except OSError as e:
            raise _oserror(path, "create temp file", e) from e
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(f, view) :]
                os.fchmod(f, mode)
                if uid != -1 or gid != -1:
                    os.fchown(f, uid, gid)
                os.fsync(f)
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError as e:
                _unlink_quietly(tmp, fd)
                raise _oserror(path, "write", e) from e
            self.mark_dirty(fd)
            return os.fstat(f)
        finally:
            os.close(f)

    def unlink(self, path: str) -> None:
        fd, name = self.parent(path)
        if fd is None:
            return
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return
        except OSError as e:
            raise _oserror(path, "remove", e) from e
        self.mark_dirty(fd)

    def remove_temp_files(self, dirs: set[str]) -> list[str]:
        """Remove leftover temp files of a killed run from directories ``dirs``; returns what was removed."""
        removed = []
        for d in sorted(dirs):
            comps = split_path(d) if d != "/" else ()
            try:
                fd = self.dir_fd(comps)
            except HostError:
                continue
            if fd is None:
                continue
            with os.scandir(fd) as it:
                stale = [
                    e.name for e in it if e.name.endswith(TEMP_SUFFIX) and e.name.startswith(".")
                ]
            for n in stale:
                _unlink_quietly(n, fd)
                removed.append(f"{d.rstrip('/')}/{n}")
                self.mark_dirty(fd)
        return removed


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
