"""What the agent manages, whether it created it, and what it last saw.

One JSON file in the state dir, ``inventory.json``::

    {"version": 1,
     "resources": {"file:/etc/x": {"want": [...], "created": true,
                                   "stat": [size, mtime_ns, ctime_ns, inode, mode, uid, gid],
                                   "sha256": "..."}, ...},
     "pending_restarts": ["chronyd"]}

``want`` is a provider's fingerprint of the desired state the agent last
enforced: when the desired state is unchanged but the host differs, that is
drift; when ``want`` changed, it is a change the manifest asks for. ``stat`` and
``sha256`` let a no-op run skip hashing files whose stat data did not move.
``created`` decides whether a resource a newer manifest dropped is removed
(created by the agent) or left alone and forgotten.

The file is rewritten (atomically) only when an entry changed, so a no-op run
leaves even its mtime alone. A corrupt inventory is set aside and the agent
starts empty: it then prunes nothing (it no longer knows what it created),
which is the safe direction. Each entry is validated when read
(:func:`valid_entry`): one of the wrong shape is dropped with a log line, as if
that resource were new (its next inspection records it again, and it is not
pruned since the agent no longer knows it created it), and the rest is kept.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from treadle_agent.contract.files import write_atomic
from treadle_agent.contract.log import get_logger
from treadle_agent.contract.manifest import ManifestFormatError, is_plain_json, parse_json
from treadle_agent.errors import PathEscapeError, StateError
from treadle_agent.providers.paths import split_path

VERSION = 1
FILE_NAME = "inventory.json"
log = get_logger("inventory")

Entry = dict[str, Any]


_SHA256 = re.compile(r"[0-9a-f]{64}")
_RID = re.compile(r"[a-z0-9._-]+:.+", re.DOTALL)
_SERVICE = re.compile(r"[^\x00/]{1,256}")
_PATH_TYPES = ("directory", "file", "symlink")


def valid_entry(rid: object, entry: object) -> str | None:
    """Why inventory entry ``rid`` -> ``entry`` cannot be used, or None when it can."""
    if not isinstance(rid, str) or not _RID.fullmatch(rid) or len(rid) > 8192:
        return "the resource id is not type:key"
    rtype, _, key = rid.partition(":")
    if rtype in _PATH_TYPES:
        try:
            split_path(key)
        except PathEscapeError:
            # A relative or unnormalized path could never be removed or checked: kept, it would fail every run.
            return "the resource path is not absolute and normalized"
    if not isinstance(entry, dict):
        return "the entry is not an object"
    if (
        "want" in entry
        and entry["want"] is not None
        and not (isinstance(entry["want"], list) and is_plain_json(entry["want"]))
    ):
        return "want is not a list or null"
    if type(entry.get("created", False)) is not bool:
        return "created is not true or false"
    st = entry.get("stat")
    if st is not None and not (
        isinstance(st, list) and len(st) == 7 and all(type(v) is int for v in st)
    ):
        return "stat is not a list of 7 integers"
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        return "sha256 is not a hex digest"
    if not is_plain_json(entry):
        return "the entry holds a value JSON cannot"
    return None


def stat_key(st: os.stat_result) -> list[int]:
    """The stat data a no-op run compares: any write, chmod, chown or replacement moves one of them."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode, st.st_uid, st.st_gid]


class Inventory:
    """The inventory of one state dir; see the module docstring."""

    def __init__(
        self,
        path: Path,
        resources: dict[str, Entry] | None = None,
        pending_restarts: list[str] | None = None,
    ) -> None:
        self.path = path
        self.resources: dict[str, Entry] = resources or {}
        self.pending_restarts: list[str] = pending_restarts or []
        self.dirty = False

    @classmethod
    def load(cls, state_dir: Path, *, read_only: bool = False) -> Inventory:
        """The inventory in ``state_dir`` (empty if there is none).

        ``read_only`` (``treadle-agent check``) creates no state dir and leaves
        a corrupt inventory where it is, reading it as empty.

        Raises:
            StateError: the state dir cannot be created or read, or a corrupt
                inventory cannot be moved aside.
        """
        path = Path(state_dir) / FILE_NAME
        try:
            if not read_only:
                os.makedirs(state_dir, mode=0o700, exist_ok=True)
            data = path.read_bytes()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise StateError(f"{path}: cannot read the inventory: {e.strerror or e}") from e
        try:
            doc = parse_json(data)
            if (
                not isinstance(doc, dict)
                or doc.get("version") != VERSION
                or not isinstance(doc.get("resources"), dict)
            ):
                raise ValueError(f"not a version {VERSION} inventory")
            return cls._validated(path, doc)
        except (ManifestFormatError, ValueError, UnicodeDecodeError) as e:
            if read_only:
                log.warning(
                    "inventory.corrupt", path=str(path), error=str(e), consequence="read as empty"
                )
                return cls(path)
            aside = path.with_name(f"{FILE_NAME}.corrupt-{int(time.time())}")
            try:
                os.replace(path, aside)
            except OSError as e2:
                raise StateError(
                    f"{path} is corrupt ({e}) and cannot be moved aside: {e2.strerror or e2}"
                ) from e2
            log.warning(
                "inventory.corrupt",
                path=str(path),
                error=str(e),
                moved_to=str(aside),
                consequence="starting empty: nothing is pruned until resources are managed again",
            )
            return cls(path)

    @classmethod
    def _validated(cls, path: Path, doc: dict[str, Any]) -> Inventory:
        """The inventory of ``doc`` without the entries that fail :func:`valid_entry` (each one logged)."""
        resources: dict[str, Entry] = {}
        dropped = False
        for rid, entry in doc["resources"].items():
            why = valid_entry(rid, entry)
            if why is None:
                resources[rid] = entry
            else:
                dropped = True
                log.warning(
                    "inventory.entry_dropped",
                    path=str(path),
                    resource=str(rid)[:200],
                    why=why,
                    consequence="managed as new: inspected again, and not pruned",
                )
        pending = doc.get("pending_restarts", [])
        if not isinstance(pending, list):
            pending, dropped = [], True
        names = [n for n in pending if isinstance(n, str) and _SERVICE.fullmatch(n)]
        if len(names) != len(pending):
            dropped = True
            log.warning(
                "inventory.entry_dropped",
                path=str(path),
                resource="pending_restarts",
                why="not service names",
            )
        inventory = cls(path, resources, names)
        inventory.dirty = dropped  # rewrite it without them at the next save
        return inventory

    def get(self, rid: str) -> Entry | None:
        return self.resources.get(rid)

    def put(self, rid: str, entry: Entry) -> None:
        if self.resources.get(rid) != entry:
            self.resources[rid] = entry
            self.dirty = True

    def forget(self, rid: str) -> None:
        if self.resources.pop(rid, None) is not None:
            self.dirty = True

    def set_pending_restarts(self, names: list[str]) -> None:
        if names != self.pending_restarts:
            self.pending_restarts = names
            self.dirty = True

    def save(self) -> bool:
        """Write the inventory atomically if it changed; returns whether it wrote.

        Raises:
            StateError: the file could not be written.
        """
        if not self.dirty:
            return False
        doc = {
            "version": VERSION,
            "resources": self.resources,
            "pending_restarts": self.pending_restarts,
        }
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        write_atomic(self.path, data)
        self.dirty = False
        return True
