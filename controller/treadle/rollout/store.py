"""Rollouts in SQLite: one row per rollout, rewritten after every transition, plus an event log.

A rollout is stored as JSON in two parts: its waves (the node lists, fixed
when it is created) once in ``rollout_waves``, and everything that moves
(state, wave, per-node progress) in the ``rollouts`` row, rewritten after
every transition. Together they are exactly what
:func:`treadle.rollout.machine.step` needs to continue. Writes happen in one
transaction each; with WAL and ``synchronous=FULL`` a transition that returned
is on disk.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from treadle.errors import StoreError
from treadle.rollout.machine import NodeProgress, NodeStatus, Rollout, State, Wave
from treadle_agent.contract.manifest import parse_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    commit_sha TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_waves (
    rollout_id INTEGER PRIMARY KEY REFERENCES rollouts(id),
    waves TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_events (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    at REAL NOT NULL,
    state TEXT NOT NULL,
    wave INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_events_by_rollout ON rollout_events(rollout_id, at);
CREATE TABLE IF NOT EXISTS rollout_previous (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    node TEXT NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (rollout_id, node)
);
CREATE TABLE IF NOT EXISTS rollout_notes (
    rollout_id INTEGER PRIMARY KEY REFERENCES rollouts(id),
    revert_branch TEXT,
    revert_error TEXT
);
"""


#: The columns every reading query returns: the row, and the rollout's waves.
_SELECT = ("SELECT r.id, r.created_at, r.updated_at, r.doc, w.waves FROM rollouts r "
           "LEFT JOIN rollout_waves w ON w.rollout_id = r.id")


def waves_doc(r: Rollout) -> list[dict[str, Any]]:
    """The rollout's waves, the part that never changes after it is created."""
    return [{"name": w.name, "nodes": list(w.nodes), "soak_s": w.soak_s, "timeout_s": w.timeout_s,
             "allowed_failures": w.allowed_failures, "approval": w.approval} for w in r.waves]


def to_doc(r: Rollout) -> dict[str, Any]:
    """Everything of the rollout but its waves (see :func:`waves_doc`)."""
    # Built by hand: dataclasses.asdict deep-copies every progress entry first (78 ms for 9,000 nodes).
    return {
        "commit": r.commit,
        "failure_policy": r.failure_policy,
        "immediate": r.immediate,
        "state": r.state.value,
        "wave": r.wave,
        "started_at": r.started_at,
        "progress": _group_progress(r.progress),
        "approved": sorted(r.approved),
        "paused": r.paused,
        "reason": r.reason,
        "finished": [dict(c) for c in r.finished],
    }


def from_doc(doc: dict[str, Any], waves: list[dict[str, Any]]) -> Rollout:
    return Rollout(
        commit=doc["commit"],
        waves=tuple(Wave(**{**w, "nodes": tuple(w["nodes"])}) for w in waves),
        failure_policy=doc["failure_policy"],
        immediate=doc["immediate"],
        state=State(doc["state"]),
        wave=doc["wave"],
        started_at=doc["started_at"],
        progress=_ungroup_progress(doc["progress"]),
        approved=frozenset(doc["approved"]),
        paused=doc["paused"],
        reason=doc["reason"],
        finished=tuple(doc.get("finished", ())),
    )


def _group_progress(progress: Mapping[str, NodeProgress]) -> list[list[Any]]:
    """Progress as [[status, since, reason, [nodes...]], ...]: nodes of a wave mostly share one entry
    (they report on the same tick), and lists of names encode far faster than one object per node.

    Nodes are grouped by progress object first (the state machine shares one object among nodes that
    moved together, and an id hashes faster than a tuple of an enum and two more), then by value.
    """
    by_object: dict[int, tuple[NodeProgress, list[str]]] = {}
    for node, p in progress.items():
        entry = by_object.get(id(p))
        if entry is None:
            entry = by_object[id(p)] = (p, [])
        entry[1].append(node)
    groups: dict[tuple[str, float | None, str], list[str]] = {}
    for p, nodes in by_object.values():
        groups.setdefault((str(p.status), p.since, p.reason), []).extend(nodes)
    return [[status, since, reason, nodes] for (status, since, reason), nodes in groups.items()]


def _parse(doc: str, waves: str | None) -> Rollout:
    """A stored rollout; a row written before the waves had their own table carries them in its doc."""
    state = json.loads(doc)
    return from_doc(state, json.loads(waves) if waves is not None else state["waves"])


def _ungroup_progress(groups: list[list[Any]]) -> dict[str, NodeProgress]:
    out: dict[str, NodeProgress] = {}
    for status, since, reason, nodes in groups:
        p = NodeProgress(NodeStatus(status), since, reason)
        for node in nodes:
            out[node] = p
    return out


_C = TypeVar("_C", bound=type)


def _sqlite_errors_as_store_errors(cls: _C) -> _C:
    """Wrap ``__init__`` and each public method of ``cls``: a sqlite3.Error leaves it as a StoreError.

    The controller's error tree (treadle.errors) holds every error it raises on
    purpose; a damaged, locked or read-only database is a StoreError like any
    other, named with its file and the operation that failed.
    """
    for name, method in list(vars(cls).items()):
        if callable(method) and (name == "__init__" or not name.startswith("_")):
            setattr(cls, name, _wrapped(method))
    return cls


def _wrapped(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise StoreError(f"{_database_file(self)}: rollout tables, {method.__name__}: {e} "
                             "(fix: free the disk or the lock; a damaged file: move it aside and restart)") from e
    return call


def _database_file(store: Any) -> str:
    try:
        return store._conn.execute("PRAGMA database_list").fetchone()[2] or "the state database"
    except (sqlite3.Error, AttributeError, TypeError):
        return "the state database"


@_sqlite_errors_as_store_errors
class RolloutStore:
    """Persistence of rollouts over an open SQLite connection (the controller's state database)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        with conn:
            conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` rollouts (never the one in flight), with their waves, events,
        previous manifests and notes; the number of rollouts deleted."""
        active = self.active_id()
        with self._conn:
            gone = [r for (r,) in self._conn.execute(
                "SELECT id FROM rollouts WHERE id NOT IN (SELECT id FROM rollouts ORDER BY id DESC LIMIT ?) AND id != ?",
                (keep, active if active is not None else -1)).fetchall()]
            for table in ("rollout_waves", "rollout_events", "rollout_previous", "rollout_notes"):
                self._conn.executemany(f"DELETE FROM {table} WHERE rollout_id = ?", [(r,) for r in gone])  # noqa: S608
            self._conn.executemany("DELETE FROM rollouts WHERE id = ?", [(r,) for r in gone])
        return len(gone)

    def create(self, r: Rollout, now: float | None = None, previous: Mapping[str, bytes] | None = None) -> int:
        """Store a new rollout and, in the same transaction, what its nodes run before it (for a rollback)."""
        now = time.time() if now is None else now
        with self._conn:
            cur = self._conn.execute(
                "INSERT INTO rollouts (commit_sha, state, created_at, updated_at, doc) VALUES (?, ?, ?, ?, ?)",
                (r.commit, r.state.value, now, now, json.dumps(to_doc(r))))
            rid = int(cur.lastrowid)
            self._conn.execute("INSERT INTO rollout_waves (rollout_id, waves) VALUES (?, ?)", (rid, json.dumps(waves_doc(r))))
            self._event(rid, r, now)
            if previous:
                self._conn.executemany("INSERT INTO rollout_previous (rollout_id, node, manifest) VALUES (?, ?, ?)",
                                       [(rid, n, m) for n, m in previous.items()])
        return rid

    def save(self, rid: int, r: Rollout, now: float | None = None, before: Rollout | None = None) -> None:
        """Persist ``r``; an event is logged when its state, wave, reason or pause flag changed.

        ``before`` is the rollout as last saved, when the caller has it (saves re-reading it).
        Its waves are those it was created with: they are not written again.
        """
        now = time.time() if now is None else now
        before = before if before is not None else self.get(rid)
        with self._conn:
            self._conn.execute("UPDATE rollouts SET state = ?, updated_at = ?, doc = ? WHERE id = ?",
                               (r.state.value, now, json.dumps(to_doc(r)), rid))
            if before is None or (before.state, before.wave, before.reason, before.paused) != (r.state, r.wave, r.reason, r.paused):
                self._event(rid, r, now)

    def _event(self, rid: int, r: Rollout, now: float) -> None:
        state = f"{r.state.value} (paused)" if r.paused else r.state.value
        self._conn.execute("INSERT INTO rollout_events (rollout_id, at, state, wave, reason) VALUES (?, ?, ?, ?, ?)",
                           (rid, now, state, r.wave, r.reason))

    def get(self, rid: int) -> Rollout | None:
        found = self.row(rid)
        return found[3] if found else None

    def active_id(self) -> int | None:
        """The id of the rollout in flight (at most one: a newer commit supersedes the older), without parsing it."""
        terminal = tuple(s.value for s in (State.COMPLETE, State.HALTED, State.ROLLED_BACK, State.SUPERSEDED, State.ABORTED))
        row = self._conn.execute(
            f"SELECT id FROM rollouts WHERE state NOT IN ({','.join('?' * len(terminal))}) ORDER BY id DESC LIMIT 1",
            terminal).fetchone()
        return int(row[0]) if row else None

    def active(self) -> tuple[int, Rollout] | None:
        """The rollout in flight, parsed."""
        rid = self.active_id()
        r = self.get(rid) if rid is not None else None
        return (rid, r) if rid is not None and r is not None else None

    def latest_id(self) -> int | None:
        row = self._conn.execute("SELECT max(id) FROM rollouts").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def latest(self) -> tuple[int, Rollout] | None:
        found = self.list(1)
        return (found[0][0], found[0][3]) if found else None

    def list(self, limit: int = 20) -> list[tuple[int, float, float, Rollout]]:
        """(id, created_at, updated_at, rollout), newest first."""
        rows = self._conn.execute(f"{_SELECT} ORDER BY r.id DESC LIMIT ?", (limit,)).fetchall()
        return [(int(i), float(c), float(u), _parse(d, w)) for i, c, u, d, w in rows]

    def updated_at(self, rid: int) -> float | None:
        """When rollout ``rid`` was last saved: a cheap way to know whether a copy in hand is current."""
        row = self._conn.execute("SELECT updated_at FROM rollouts WHERE id = ?", (rid,)).fetchone()
        return float(row[0]) if row else None

    def row(self, rid: int) -> tuple[int, float, float, Rollout] | None:
        """(id, created_at, updated_at, rollout) of one rollout."""
        row = self._conn.execute(f"{_SELECT} WHERE r.id = ?", (rid,)).fetchone()
        return (int(row[0]), float(row[1]), float(row[2]), _parse(row[3], row[4])) if row else None

    def for_commit(self, commit: str) -> tuple[int, Rollout] | None:
        """The newest rollout of ``commit``, whatever its state."""
        row = self._conn.execute(f"{_SELECT} WHERE r.commit_sha = ? ORDER BY r.id DESC LIMIT 1", (commit,)).fetchone()
        return (int(row[0]), _parse(row[3], row[4])) if row else None

    def previous(self, rid: int) -> dict[str, dict[str, Any]]:
        """What the rollout's nodes ran before it (kept by :meth:`create`), parsed."""
        rows = self._conn.execute("SELECT node, manifest FROM rollout_previous WHERE rollout_id = ?", (rid,)).fetchall()
        return {n: parse_json(m) for n, m in rows}

    def note_revert(self, rid: int, branch: str | None, error: str | None) -> None:
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO rollout_notes (rollout_id, revert_branch, revert_error) VALUES (?, ?, ?)",
                               (rid, branch, error))

    def revert_note(self, rid: int) -> tuple[str | None, str | None]:
        row = self._conn.execute("SELECT revert_branch, revert_error FROM rollout_notes WHERE rollout_id = ?", (rid,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def events(self, rid: int) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT at, state, wave, reason FROM rollout_events WHERE rollout_id = ? ORDER BY at, rowid",
                                  (rid,)).fetchall()
        return [{"at": at, "state": s, "wave": w, "reason": reason} for at, s, w, reason in rows]
