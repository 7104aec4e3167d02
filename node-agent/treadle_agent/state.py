"""What the agent keeps in its state dir across restarts, written atomically.

    <state_dir>/envelope.json      the last accepted envelope, byte for byte
    <state_dir>/agent-state.json   {"generation", "etag", "envelope_sha256", "trust_root_sha256"}

The envelope is written first and the small state file second, so a crash in
between leaves a state file that does not describe the envelope
(``envelope_sha256`` differs) and the envelope is verified again at start-up.
The highest generation is taken as the larger of the recorded one and the
stored manifest's, so neither file alone can lower it.

A corrupt or empty file is moved aside as ``<name>.corrupt-<unix time>`` with a
log line and the agent starts as if it had none: it fetches again rather than
crash-looping on a file it cannot read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from treadle_agent.errors import StateError
from treadle_agent.log import get_logger
from treadle_agent.manifest import digest

ENVELOPE = "envelope.json"
STATE = "agent-state.json"
#: Copies of a corrupt state file kept for a post-mortem (the newest ones).
CORRUPT_COPIES_KEPT = 3

log = get_logger("state")


@dataclass(frozen=True, slots=True)
class StoredState:
    envelope: bytes | None = None
    generation: int = 0
    etag: str | None = None
    envelope_sha256: str | None = None
    trust_root_sha256: str | None = None

    def envelope_intact(self) -> bool:
        """The envelope is the one the state file describes (no crash between the two writes, no bit rot)."""
        return self.envelope is not None and self.envelope_sha256 == digest(self.envelope)


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


class StateStore:
    """The state dir on disk."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.dir = state_dir
        self.clock = clock

    def load(self) -> StoredState:
        """What the last run left; empty when nothing (usable) is there.

        Raises:
            StateError: the state dir cannot be created or read at all.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(f"{self.dir}: cannot create the state dir: {e.strerror}") from e
        envelope = self._read(ENVELOPE)
        meta = self._read_meta()
        return StoredState(envelope=envelope, **meta)

    def save(self, envelope: bytes, generation: int, etag: str | None, trust_root_sha256: str) -> None:
        """Record a newly accepted envelope (envelope first, see the module docstring).

        Raises:
            StateError: a write failed.
        """
        write_atomic(self.dir / ENVELOPE, envelope)
        meta = {"generation": generation, "etag": etag, "envelope_sha256": digest(envelope), "trust_root_sha256": trust_root_sha256}
        write_atomic(self.dir / STATE, json.dumps(meta, sort_keys=True).encode())

    def set_aside(self, name: str, why: str) -> Path | None:
        """Move a corrupt state file out of the way, keeping it for a post-mortem."""
        src = self.dir / name
        dst = src.with_name(f"{name}.corrupt-{int(self.clock())}")
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"{src}: corrupt ({why}) and cannot be moved aside: {e.strerror}") from e
        log.warning("state.corrupt", file=str(src), moved_to=str(dst), why=why, action="fetching the manifest again")
        # Keep the newest few copies only: a disk that keeps corrupting a file must not fill up with them.
        copies = sorted((p for p in self.dir.glob(f"{name}.corrupt-*") if p.name.rsplit("-", 1)[1].isdigit()),
                        key=lambda p: int(p.name.rsplit("-", 1)[1]))
        for old in copies[:-CORRUPT_COPIES_KEPT]:
            old.unlink(missing_ok=True)
        return dst

    def _read(self, name: str) -> bytes | None:
        try:
            data = (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"{self.dir / name}: cannot read: {e.strerror}") from e
        if not data:
            self.set_aside(name, "empty file")
            return None
        return data

    def _read_meta(self) -> dict[str, object]:
        data = self._read(STATE)
        if data is None:
            return {}
        try:
            doc = json.loads(data)
            meta = {
                "generation": doc["generation"],
                "etag": doc["etag"],
                "envelope_sha256": doc["envelope_sha256"],
                "trust_root_sha256": doc["trust_root_sha256"],
            }
            if type(meta["generation"]) is not int or meta["generation"] < 0:
                raise ValueError("generation is not a non-negative integer")
            if not all(v is None or isinstance(v, str) for k, v in meta.items() if k != "generation"):
                raise ValueError("etag and digests must be strings or null")
        except (ValueError, KeyError, TypeError) as e:
            self.set_aside(STATE, f"unreadable: {e}")
            return {}
        return meta
