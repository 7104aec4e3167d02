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
which is the safe direction.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from treadle_agent.errors import StateError
from treadle_agent.log import get_logger
from treadle_agent.state import write_atomic

VERSION = 1
FILE_NAME = "inventory.json"
log = get_logger("inventory")

Entry = dict[str, Any]


def stat_key(st: os.stat_result) -> list[int]:
    """The stat data a no-op run compares: any write, chmod, chown or replacement moves one of them."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode, st.st_uid, st.st_gid]


class Inventory:
    """The inventory of one state dir; see the module docstring."""

    def __init__(self, path: Path, resources: dict[str, Entry] | None = None, pending_restarts: list[str] | None = None) -> None:
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
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("resources"), dict):
                raise ValueError(f"not a version {VERSION} inventory")
            return cls(path, doc["resources"], list(doc.get("pending_restarts", [])))
        except (ValueError, UnicodeDecodeError) as e:
            if read_only:
                log.warning("inventory.corrupt", path=str(path), error=str(e), consequence="read as empty")
                return cls(path)
            aside = path.with_name(f"{FILE_NAME}.corrupt-{int(time.time())}")
            try:
                os.replace(path, aside)
            except OSError as e2:
                raise StateError(f"{path} is corrupt ({e}) and cannot be moved aside: {e2.strerror or e2}") from e2
            log.warning("inventory.corrupt", path=str(path), error=str(e), moved_to=str(aside),
                        consequence="starting empty: nothing is pruned until resources are managed again")
            return cls(path)

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
        doc = {"version": VERSION, "resources": self.resources, "pending_restarts": self.pending_restarts}
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        write_atomic(self.path, data)
        self.dirty = False
        return True
