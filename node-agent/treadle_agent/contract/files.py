"""Files either side writes or trusts: an atomic replace, a full write, the private-file check.

The controller writes trust roots, targets files and encrypted secrets with
:func:`write_atomic` (a reader never sees half a file); the agent writes its
state dir with it and refuses a trust root or state dir that someone other
than root or its user could change (:func:`check_private`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from treadle_agent.contract.errors import ConfigError, StateError


def check_private(path: Path, what: str) -> None:
    """Refuse ``path`` when someone other than root and this user could change it, as OpenSSH's StrictModes does.

    The file (or directory) and every directory above it must be owned by root
    or by the effective user and must not be writable by group or others; a
    directory above it with the sticky bit (``/tmp``) may be world-writable,
    since nobody else can rename or remove what is in it.

    Raises:
        ConfigError: naming the path, what is wrong, and the fix.
    """
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot resolve the {what}: {e}") from e
    me = os.geteuid()
    for n, p in enumerate((real, *real.parents)):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue  # a state dir is created later, privately
        except OSError as e:
            raise ConfigError(f"{p}: cannot stat the {what}: {e.strerror}") from e
        if st.st_uid not in (0, me):
            raise ConfigError(
                f"{p}: the {what} {'is' if n == 0 else 'is below a directory'} owned by uid {st.st_uid}, "
                f"neither root nor the agent's user (fix: chown root {p})"
            )
        sticky_dir = n > 0 and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_mode & 0o022 and not sticky_dir:
            raise ConfigError(
                f"{p}: the {what} {'is' if n == 0 else 'is below a directory that is'} writable by "
                f"group or others (mode {st.st_mode & 0o7777:04o}; fix: chmod go-w {p})"
            )


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` and fsync it (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file in the same dir, fsync, rename, fsync of the dir.

    Raises:
        StateError: the write failed; the old file is untouched.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StateError(f"{path}: cannot write: {e.strerror}") from e
