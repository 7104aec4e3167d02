"""What the agent keeps in its state dir across restarts, written atomically.

    <state_dir>/envelope.json        the last accepted envelope, byte for byte
    <state_dir>/agent-state.json     the trusted facts: {"generation", "manifest_sha256", "etag",
                                     "envelope_sha256", "trust_root_sha256"}
    <state_dir>/agent-state.copy.json  the same facts, written after the first

The trusted facts are what rollback and equivocation protection rest on: the
highest generation accepted and the digest of the manifest accepted under it.
They are kept three times over: in both facts files and, implicitly, in the
stored envelope. The envelope is written first, then the facts, then their
copy; at start-up the highest generation among every readable source wins, so
one damaged, missing or stale file never lowers the floor (a crash between two
writes leaves a source that is older, never one that is newer than the truth).
When every source is gone, the node has to be enrolled again (README,
"Security": re-enrolment).

Facts recorded under another trust root do not count: rotating the trust root
resets the generation floor, as TUF resets its timestamp and snapshot versions
when their keys rotate (the way back from a fast-forward; README, "Security").

A corrupt or empty file is moved aside as ``<name>.corrupt-<unix time>`` with a
log line and the agent goes on with the other sources: it fetches again rather
than crash-looping on a file it cannot read. A stored ETag that is not a valid
entity tag is dropped, not sent. Temp files a killed write left behind
(``.<name>.tmp-<pid>`` of a process that is gone) are removed at start-up.

The state dir holds what the node trusts, so it must be private, as OpenSSH
requires of ~/.ssh: owned by root or the agent's user and not writable by group
or others (see :func:`treadle_agent.contract.files.check_private`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from treadle_agent.contract.files import check_private, write_atomic
from treadle_agent.contract.log import get_logger
from treadle_agent.contract.manifest import ManifestFormatError, digest, parse_json
from treadle_agent.errors import StateError

ENVELOPE = "envelope.json"
STATE = "agent-state.json"
STATE_COPY = "agent-state.copy.json"
#: Copies of a corrupt state file kept for a post-mortem (the newest ones).
CORRUPT_COPIES_KEPT = 3

log = get_logger("state")

_TEMP = re.compile(r"\..+\.tmp-([0-9]{1,10})")
_FACT_STRINGS = ("manifest_sha256", "etag", "envelope_sha256", "trust_root_sha256")


@dataclass(frozen=True, slots=True)
class Facts:
    """One facts file: the highest accepted generation, and what was accepted under it."""

    generation: int = 0
    manifest_sha256: str | None = None  # sha256 of the payload accepted at ``generation``
    etag: str | None = None
    envelope_sha256: str | None = None
    trust_root_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class StoredState:
    envelope: bytes | None = None
    facts: tuple[Facts, ...] = ()

    def _best(self, trust_root_sha256: str | None = None) -> Facts:
        usable = [
            f
            for f in self.facts
            if trust_root_sha256 is None or f.trust_root_sha256 in (None, trust_root_sha256)
        ]
        return max(usable, key=lambda f: f.generation, default=Facts())

    @property
    def generation(self) -> int:
        return self._best().generation

    @property
    def etag(self) -> str | None:
        return self._best().etag

    @property
    def envelope_sha256(self) -> str | None:
        return self._best().envelope_sha256

    @property
    def trust_root_sha256(self) -> str | None:
        return self._best().trust_root_sha256

    def floor(self, trust_root_sha256: str) -> Facts:
        """The facts with the highest generation recorded under trust root ``trust_root_sha256``."""
        return self._best(trust_root_sha256)

    def rotated(self, trust_root_sha256: str) -> bool:
        """Facts exist, and none was recorded under this trust root: the trust root was rotated."""
        return bool(self.facts) and all(
            f.trust_root_sha256 not in (None, trust_root_sha256) for f in self.facts
        )

    def envelope_intact(self, trust_root_sha256: str | None = None) -> bool:
        """The envelope is one the facts describe (no crash between the writes, no bit rot), under that trust root."""
        if self.envelope is None:
            return False
        sha = digest(self.envelope)
        return any(
            f.envelope_sha256 == sha
            and (trust_root_sha256 is None or f.trust_root_sha256 == trust_root_sha256)
            for f in self.facts
        )

    def complete(self, trust_root_sha256: str) -> bool:
        """Both facts files are there, agree, and describe the envelope under this trust root."""
        return (
            len(self.facts) == 2
            and self.facts[0] == self.facts[1]
            and self.envelope_intact(trust_root_sha256)
            and self.facts[0].trust_root_sha256 == trust_root_sha256
        )


class StateStore:
    """The state dir on disk."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.dir = state_dir
        self.clock = clock

    def load(self) -> StoredState:
        """What the last run left; empty when nothing (usable) is there. Removes stale temp files.

        Raises:
            ConfigError: the state dir is writable by group or others (:func:`check_private`).
            StateError: the state dir cannot be created or read at all.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(f"{self.dir}: cannot create the state dir: {e.strerror}") from e
        except ValueError as e:  # a NUL in the path
            raise StateError(f"{self.dir}: not a usable state dir: {e}") from e
        check_private(self.dir, "state dir")
        self.remove_stale_temp_files()
        envelope = self._read(ENVELOPE)
        facts = tuple(
            f for f in (self._read_facts(STATE), self._read_facts(STATE_COPY)) if f is not None
        )
        return StoredState(envelope=envelope, facts=facts)

    def save(
        self,
        envelope: bytes,
        generation: int,
        etag: str | None,
        trust_root_sha256: str,
        manifest_sha256: str | None = None,
    ) -> None:
        """Record a newly accepted envelope: the envelope, then the facts, then their copy (module docstring).

        Raises:
            StateError: a write failed.
        """
        write_atomic(self.dir / ENVELOPE, envelope)
        meta = {
            "generation": generation,
            "manifest_sha256": manifest_sha256,
            "etag": etag,
            "envelope_sha256": digest(envelope),
            "trust_root_sha256": trust_root_sha256,
        }
        data = json.dumps(meta, sort_keys=True).encode()
        write_atomic(self.dir / STATE, data)
        write_atomic(self.dir / STATE_COPY, data)

    def remove_stale_temp_files(self) -> list[str]:
        """Remove ``.<name>.tmp-<pid>`` files whose writer is gone (killed mid-write); returns their names."""
        removed = []
        try:
            names = os.listdir(self.dir)
        except OSError as e:
            raise StateError(f"{self.dir}: cannot list the state dir: {e.strerror}") from e
        for name in names:
            m = _TEMP.fullmatch(name)
            if m is None or (int(m[1]) != os.getpid() and _alive(int(m[1]))):
                continue
            try:
                os.unlink(self.dir / name)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("state.temp_file_kept", file=str(self.dir / name), error=e.strerror)
                continue
            removed.append(name)
            log.warning(
                "state.temp_file_removed",
                file=str(self.dir / name),
                why="left by an interrupted write",
            )
        return removed

    def set_aside(self, name: str, why: str) -> Path | None:
        """Move a corrupt state file out of the way, keeping it for a post-mortem."""
        src = self.dir / name
        dst = src.with_name(f"{name}.corrupt-{int(self.clock())}")
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(
                f"{src}: corrupt ({why}) and cannot be moved aside: {e.strerror}"
            ) from e
        log.warning(
            "state.corrupt",
            file=str(src),
            moved_to=str(dst),
            why=why,
            action="going on with the other state files",
        )
        # Keep the newest few copies only: a disk that keeps corrupting a file must not fill up with them.
        copies = sorted(
            (p for p in self.dir.glob(f"{name}.corrupt-*") if p.name.rsplit("-", 1)[1].isdigit()),
            key=lambda p: int(p.name.rsplit("-", 1)[1]),
        )
        for old in copies[:-CORRUPT_COPIES_KEPT]:
            old.unlink(missing_ok=True)
        return dst

    def _read(self, name: str) -> bytes | None:
        try:
            data = (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            self.set_aside(name, "a directory, not a file")
            return None
        except OSError as e:
            raise StateError(f"{self.dir / name}: cannot read: {e.strerror}") from e
        if not data:
            self.set_aside(name, "empty file")
            return None
        return data

    def _read_facts(self, name: str) -> Facts | None:
        data = self._read(name)
        if data is None:
            return None
        try:
            doc = parse_json(data)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            generation = doc["generation"]
            if type(generation) is not int or generation < 0:
                raise ValueError("generation is not a non-negative integer")
            values = {k: doc.get(k) for k in _FACT_STRINGS}
            if not all(
                v is None or (isinstance(v, str) and len(v) <= 1024) for v in values.values()
            ):
                raise ValueError("etag and digests must be strings or null")
            for k in ("envelope_sha256", "trust_root_sha256"):
                if values[k] is None:
                    raise KeyError(k)
        except (ManifestFormatError, ValueError, KeyError, TypeError) as e:
            self.set_aside(name, f"unreadable: {e}")
            return None
        from treadle_agent.fetch import valid_etag

        if values["etag"] is not None and valid_etag(values["etag"]) is None:
            log.warning(
                "state.etag_dropped", file=str(self.dir / name), why="not a valid entity tag"
            )
            values["etag"] = None
        return Facts(generation=generation, **values)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
