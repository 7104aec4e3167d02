"""Rollouts in SQLite: the waves once, the moving part after every transition, progress as it moves.

A rollout is stored in three parts, together exactly what
:func:`treadle.rollout.machine.step` needs to continue:

- ``rollout_waves``: its waves (the node lists), written once when it is created;
- ``rollouts``: one row with everything that moves but per-node progress (state, wave, reason, counts
  of passed waves), a small JSON document rewritten by every save, and ``progress_version``, counted up
  by every save;
- ``rollout_progress``: the current wave's per-node progress as a log of moves. Each row is one progress
  value (status, since, reason) and the nodes that moved to it in one save, their names one per line;
  the rows of a rollout, in order, rebuild its progress. A save appends rows only for the nodes whose
  progress changed (found by identity, in C: the state machine shares one value among the nodes that
  moved together), so half of a 90,000-node wave reporting at once is one row, not 45,000.
  A progress that lost nodes (a new wave), a log grown past four times the wave, or a log this connection did
  not write last (another writer, checked by ``progress_version`` in the same transaction) is written
  whole again instead: a snapshot, one row per distinct value.

Why a log and not one row per node: 45,000 per-node upserts take 60–90 ms in SQLite here, one row of
45,000 names 3 ms. Every save is one transaction (WAL, ``synchronous=FULL`` in the controller): the
row, the progress rows and the event commit together or not at all
(tests/rollout/test_store.py kills a writer mid-save and reopens).

The tables share the controller's state database, whose ``user_version`` belongs to
:mod:`treadle.daemon.state`; the rollout tables keep their own version in ``rollout_meta``. Tables written by an
earlier version (progress inside the JSON document) are migrated when a store opens them, in one
transaction; tables of a newer version are refused with an error saying so.
"""

from __future__ import annotations

import builtins
import functools
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import compress, repeat
from operator import is_, is_not
from typing import Any, TypeVar, cast

from treadle.errors import StoreError
from treadle.rollout.machine import NodeProgress, NodeStatus, Rollout, State, Wave
from treadle_agent.contract.manifest import parse_json

#: The version of the rollout tables this code reads and writes (1: progress inside the rollout's document).
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    commit_sha TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    doc TEXT NOT NULL,
    progress_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rollout_waves (
    rollout_id INTEGER PRIMARY KEY REFERENCES rollouts(id),
    waves TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_progress (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
    status TEXT NOT NULL,
    since REAL,
    reason TEXT NOT NULL,
    nodes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_progress_by_rollout ON rollout_progress(rollout_id);
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
CREATE TABLE IF NOT EXISTS rollout_meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

#: The tables of a rollout's rows besides ``rollouts`` itself (pruned with it).
_CHILD_TABLES = (
    "rollout_waves",
    "rollout_progress",
    "rollout_events",
    "rollout_previous",
    "rollout_notes",
)

#: The columns every reading query returns: the row, and the rollout's waves.
_SELECT = (
    "SELECT r.id, r.created_at, r.updated_at, r.doc, w.waves, r.progress_version FROM rollouts r "
    "LEFT JOIN rollout_waves w ON w.rollout_id = r.id"
)

#: Rollouts whose parsed waves (they never change once written; ids are never reused) and last known
#: progress a store keeps: reading the rollout in flight again after another writer saved it does not
#: parse 100,000 names again, and reading other rollouts does not make the next save a snapshot.
_KEPT = 4

#: Distinct progress objects up to which grouping nodes takes one pass in C per object.
_C_PASSES = 8
#: The log of a rollout's progress is written whole again once it holds this many times its nodes (plus
#: a margin): reading it back stays cheap, and a wave whose nodes flap does not grow it without end.
_LOG_FACTOR, _LOG_MARGIN = 4, 1024

#: Progress rows as (status, since, reason, names one per line).
_Row = tuple[str, float | None, str, str]


def waves_doc(r: Rollout) -> list[dict[str, Any]]:
    """The rollout's waves, the part that never changes after it is created."""
    return [
        {
            "name": w.name,
            "nodes": list(w.nodes),
            "soak_s": w.soak_s,
            "timeout_s": w.timeout_s,
            "allowed_failures": w.allowed_failures,
            "approval": w.approval,
        }
        for w in r.waves
    ]


def to_doc(r: Rollout) -> dict[str, Any]:
    """Everything of the rollout but its waves (see :func:`waves_doc`) and its progress (rows of their own)."""
    # Built by hand: dataclasses.asdict deep-copies every progress entry first (78 ms for 9,000 nodes).
    return {
        "commit": r.commit,
        "failure_policy": r.failure_policy,
        "immediate": r.immediate,
        "state": r.state.value,
        "wave": r.wave,
        "started_at": r.started_at,
        "approved": sorted(r.approved),
        "paused": r.paused,
        "reason": r.reason,
        "finished": [dict(c) for c in r.finished],
    }


def from_doc(
    doc: dict[str, Any], waves: tuple[Wave, ...], progress: dict[str, NodeProgress]
) -> Rollout:
    return Rollout(
        commit=doc["commit"],
        waves=waves,
        failure_policy=doc["failure_policy"],
        immediate=doc["immediate"],
        state=State(doc["state"]),
        wave=doc["wave"],
        started_at=doc["started_at"],
        progress=progress,
        approved=frozenset(doc["approved"]),
        paused=doc["paused"],
        reason=doc["reason"],
        finished=tuple(doc.get("finished", ())),
    )


def _parse_waves(text: str) -> tuple[Wave, ...]:
    return tuple(Wave(**{**w, "nodes": tuple(w["nodes"])}) for w in json.loads(text))


def _lines(nodes: list[str]) -> str:
    """Node names one per line; a name with a line break in it would not come back, so it is refused."""
    text = "\n".join(nodes)
    if text.count("\n") != len(nodes) - 1:  # counted in C: no check per name
        bad = next(n for n in nodes if "\n" in n)
        raise ValueError(
            f"node name {bad!r} contains a line break: it cannot be stored in a rollout"
        )
    return text


def _row(p: NodeProgress, nodes: list[str]) -> _Row:
    return (p.status.value, p.since, p.reason, _lines(nodes))


def _grouped(nodes: list[str], values: list[NodeProgress]) -> list[_Row]:
    """Rows for ``nodes`` (whose progress is ``values``), one per distinct value.

    Nodes are grouped by progress object first, in C when they all share one (the state machine shares
    one object among nodes that moved together, and an id hashes faster than a tuple of an enum and two
    more), then by value (equal values in distinct objects, e.g. read back from the store, join one row).
    """
    if not nodes:
        return []
    if all(
        map(is_, values, repeat(values[0]))
    ):  # the usual case, in one pass in C that stops at a difference
        return [_row(values[0], nodes)]
    objects = dict(zip(map(id, values), values, strict=False))
    if len(objects) <= _C_PASSES:  # one pass in C per object beats one Python step per node
        by_object = {
            i: list(compress(nodes, map(is_, values, repeat(p)))) for i, p in objects.items()
        }
    else:
        by_object = {i: [] for i in objects}
        for node, p in zip(nodes, values, strict=False):
            by_object[id(p)].append(node)
    groups: dict[tuple[str, float | None, str], list[str]] = {}
    for i, members in by_object.items():
        p = objects[i]
        groups.setdefault((p.status.value, p.since, p.reason), []).extend(members)
    return [
        (status, since, reason, _lines(members))
        for (status, since, reason), members in groups.items()
    ]


def _snapshot(progress: Mapping[str, NodeProgress]) -> list[_Row]:
    """The whole progress as rows, one per distinct value (a new wave's is one row: all its nodes are pending)."""
    return _grouped(list(progress), list(progress.values()))


def _moves(old: Mapping[str, NodeProgress], r: Rollout) -> list[_Row] | None:
    """The rows that take progress ``old`` to ``r``'s (only the nodes whose progress object changed);
    None when ``r``'s lost nodes of ``old`` (a log only adds and overwrites: a snapshot is needed).

    When the step that made ``r`` says it moved ``old`` by some entries (its progress index), those are the
    rows; otherwise the two are compared, by identity, in C.
    """
    new, index = r.progress, r.index
    if (
        index is not None
        and index.progress is new
        and index.base is old
        and index.moved is not None
    ):
        return _grouped(list(index.moved), list(index.moved.values()))
    if len(new) < len(old):
        return None
    if not old:  # a new wave's progress: all of it
        return _snapshot(new)
    keys = list(new)
    moved = list(
        compress(keys, map(is_not, new.values(), map(old.get, keys)))
    )  # compared by identity, in C
    added = len(moved) - sum(map(old.__contains__, moved))
    if len(new) != len(old) + added:
        return None
    return _grouped(moved, list(map(new.__getitem__, moved)))


def _fold(rows: list[tuple[str, float | None, str, str]]) -> tuple[dict[str, NodeProgress], int]:
    """The progress the log rows rebuild, and how many node entries they hold."""
    progress: dict[str, NodeProgress] = {}
    logged = 0
    for status, since, reason, nodes in rows:
        names = nodes.split("\n")
        progress.update(dict.fromkeys(names, NodeProgress(NodeStatus(status), since, reason)))
        logged += len(names)
    return progress, logged


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (two stores opening one database migrate it one after the other)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


@contextmanager
def _reading(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction (a snapshot, with WAL): a rollout's row and its progress rows agree, whatever
    another connection commits meanwhile. Inside a transaction already, that one serves."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.rollback()  # nothing was written: ending it is all that is left to do


def _database(conn: sqlite3.Connection) -> str:
    rows = conn.execute("PRAGMA database_list").fetchall()
    return next(
        (str(path) for _, name, path in rows if name == "main" and path), "the state database"
    )


#: The tables SCHEMA creates.
_SCHEMA_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))


def _tables_and_version(conn: sqlite3.Connection) -> tuple[set[str], int]:
    """The tables present and the version of the rollout tables (1 before versions were recorded)."""
    tables = {
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    version = SCHEMA_VERSION if "rollouts" not in tables else 1
    if "rollout_meta" in tables:
        row = conn.execute("SELECT value FROM rollout_meta WHERE key = 'schema'").fetchone()
        version = int(row[0]) if row else version
    return tables, version


def _prepare(conn: sqlite3.Connection) -> None:
    """Create the rollout tables, or migrate those of version 1; refuse those of a newer version.

    Raises:
        StoreError: the tables are of a newer version, or a stored rollout cannot be migrated
            (the database is left as it was).
    """
    tables, version = _tables_and_version(conn)
    if version == SCHEMA_VERSION and _SCHEMA_TABLES <= tables:
        return  # nothing to create or migrate, so nothing is written: a read-only database opens
    with _immediate(conn):
        tables, version = _tables_and_version(conn)  # again, under the write lock
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{_database(conn)}: its rollout tables are of version {version}, written by a newer "
                f"Treadle; this one reads version {SCHEMA_VERSION} and older. Run the newer Treadle, "
                "or restore the state directory from a backup this version wrote"
            )
        if version == 1:
            conn.execute(
                "ALTER TABLE rollouts ADD COLUMN progress_version INTEGER NOT NULL DEFAULT 0"
            )
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if version == 1:
            _migrate_from_1(conn)
        conn.execute(
            "INSERT OR REPLACE INTO rollout_meta (key, value) VALUES ('schema', ?)",
            (SCHEMA_VERSION,),
        )


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Version 1 kept progress inside each rollout's document (grouped, or earlier one entry per node),
    and before that the waves too: both move to their tables."""
    for rid, text in conn.execute("SELECT id, doc FROM rollouts").fetchall():
        try:
            doc = json.loads(text)
            progress = doc.pop("progress", [])
            if isinstance(
                progress, dict
            ):  # the first format: {node: {"status", "since", "reason"}}
                progress = [
                    [p["status"], p["since"], p["reason"], [n]] for n, p in progress.items()
                ]
            rows = [
                (NodeStatus(status).value, since, str(reason), _lines(list(nodes)))
                for status, since, reason, nodes in progress
                if nodes
            ]
            waves = doc.pop("waves", None)
        except (ValueError, TypeError, KeyError) as e:
            raise StoreError(
                f"{_database(conn)}: rollout {rid} cannot be migrated to rollout tables version "
                f"{SCHEMA_VERSION} ({type(e).__name__}: {e}); nothing was changed. Restore the state "
                "directory from a backup, or remove that rollout's rows"
            ) from e
        if waves is not None:
            conn.execute(
                "INSERT OR IGNORE INTO rollout_waves (rollout_id, waves) VALUES (?, ?)",
                (rid, json.dumps(waves)),
            )
        conn.executemany(
            "INSERT INTO rollout_progress (rollout_id, status, since, reason, nodes) VALUES (?, ?, ?, ?, ?)",
            [(rid, *row) for row in rows],
        )
        conn.execute("UPDATE rollouts SET doc = ? WHERE id = ?", (json.dumps(doc), rid))


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
            raise StoreError(
                f"{_database_file(self)}: rollout tables, {method.__name__}: {e} "
                "(fix: free the disk or the lock; a damaged file: move it aside and restart)"
            ) from e

    return call


def _database_file(store: Any) -> str:
    try:
        return _database(store._conn)
    except (
        sqlite3.Error,
        AttributeError,
    ):  # the connection itself is what failed, or was never opened
        return "the state database"


@_sqlite_errors_as_store_errors
class RolloutStore:
    """Persistence of rollouts over an open SQLite connection (the controller's state database).

    Raises StoreError when opening tables it cannot read (see :func:`_prepare`).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        _prepare(conn)
        #: Per rollout, the progress this connection last wrote or read, as (progress_version, progress, node
        #: entries in its log): a save writes the moves from it when the row still has that version.
        self._known: dict[int, tuple[int, Mapping[str, NodeProgress], int]] = {}
        self._waves: dict[int, tuple[Wave, ...]] = {}

    def close(self) -> None:
        self._conn.close()

    def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` rollouts (never the one in flight), with their waves, progress,
        events, previous manifests and notes; the number of rollouts deleted."""
        active = self.active_id()
        with self._conn:
            gone = [
                r
                for (r,) in self._conn.execute(
                    "SELECT id FROM rollouts WHERE id NOT IN (SELECT id FROM rollouts ORDER BY id DESC LIMIT ?) AND id != ?",
                    (keep, active if active is not None else -1),
                ).fetchall()
            ]
            for table in _CHILD_TABLES:
                self._conn.executemany(
                    f"DELETE FROM {table} WHERE rollout_id = ?", [(r,) for r in gone]
                )  # noqa: S608
            self._conn.executemany("DELETE FROM rollouts WHERE id = ?", [(r,) for r in gone])
        return len(gone)

    def create(
        self, r: Rollout, now: float | None = None, previous: Mapping[str, bytes] | None = None
    ) -> int:
        """Store a new rollout and, in the same transaction, what its nodes run before it (for a rollback)."""
        now = time.time() if now is None else now
        rows = _snapshot(r.progress)
        with self._conn:
            cur = self._conn.execute(
                "INSERT INTO rollouts (commit_sha, state, created_at, updated_at, doc) VALUES (?, ?, ?, ?, ?)",
                (r.commit, r.state.value, now, now, json.dumps(to_doc(r))),
            )
            rid = cast(int, cur.lastrowid)  # an INSERT sets it
            self._conn.execute(
                "INSERT INTO rollout_waves (rollout_id, waves) VALUES (?, ?)",
                (rid, json.dumps(waves_doc(r))),
            )
            self._write_rows(rid, rows)
            self._event(rid, r, now)
            if previous:
                self._conn.executemany(
                    "INSERT INTO rollout_previous (rollout_id, node, manifest) VALUES (?, ?, ?)",
                    [(rid, n, m) for n, m in previous.items()],
                )
        self._remember(self._known, rid, (0, r.progress, len(r.progress)))
        self._remember(self._waves, rid, r.waves)
        return rid

    def save(
        self, rid: int, r: Rollout, now: float | None = None, before: Rollout | None = None
    ) -> None:
        """Persist ``r`` in one transaction; an event is logged when its state, wave, reason or pause flag changed.

        ``before`` is the rollout as last saved, when the caller has it (saves re-reading it); it decides
        the event only. Its waves are those it was created with: they are not written again. Progress is
        written as the moves from what this connection last wrote or read of it (see the module's docstring).

        Raises:
            ValueError: a node name with a line break (nothing is written).
            sqlite3.Error: the write failed (nothing of it stays).
        """
        now = time.time() if now is None else now
        doc = json.dumps(to_doc(r))
        logs_event = self._logs_event(rid, r, before)
        known, moves, logged = self._moves_from_known(rid, r)
        with self._conn:
            version = (
                None if known is None or moves is None else self._update(rid, r, now, doc, known[0])
            )
            if (
                version is None
            ):  # a snapshot is due, or the row was saved by another connection since
                moves, logged = None, len(r.progress)
                version = self._update(rid, r, now, doc, None)
                if version is None:
                    return  # no such rollout
                self._conn.execute("DELETE FROM rollout_progress WHERE rollout_id = ?", (rid,))
            self._write_rows(rid, moves if moves is not None else _snapshot(r.progress))
            if logs_event:
                self._event(rid, r, now)
        self._remember(self._known, rid, (version, r.progress, logged))

    def _moves_from_known(
        self, rid: int, r: Rollout
    ) -> tuple[tuple[int, Mapping[str, NodeProgress], int] | None, list[_Row] | None, int]:
        """What this connection knows of rollout ``rid``'s progress, the rows that take it to ``r``'s (None: write
        it whole), and the node entries of the log afterwards."""
        known = self._known.get(rid)
        if known is None:
            return None, None, len(r.progress)
        moves = [] if known[1] is r.progress else _moves(known[1], r)
        if moves is None:
            return known, None, len(r.progress)
        logged = known[2] + sum(row[3].count("\n") + 1 for row in moves)
        if logged > _LOG_FACTOR * len(r.progress) + _LOG_MARGIN:
            return known, None, len(r.progress)  # the log has grown too long: write it whole again
        return known, moves, logged

    def _logs_event(self, rid: int, r: Rollout, before: Rollout | None) -> bool:
        """Whether saving ``r`` logs an event: its state, wave, reason or pause flag differ from ``before``'s
        (when not given, from the stored row's, read without its progress)."""
        if before is not None:
            return (before.state, before.wave, before.reason, before.paused) != (
                r.state,
                r.wave,
                r.reason,
                r.paused,
            )
        row = self._conn.execute("SELECT doc FROM rollouts WHERE id = ?", (rid,)).fetchone()
        if row is None:
            return True
        doc = json.loads(row[0])
        return (doc["state"], doc["wave"], doc["reason"], doc["paused"]) != (
            r.state.value,
            r.wave,
            r.reason,
            r.paused,
        )

    def _update(
        self, rid: int, r: Rollout, now: float, doc: str, version: int | None
    ) -> int | None:
        """Rewrite the rollout's row (only if it still has ``version``, when given); its new version, or None."""
        guard, args = ("", ()) if version is None else (" AND progress_version = ?", (version,))
        rows = self._conn.execute(
            "UPDATE rollouts SET state = ?, updated_at = ?, doc = ?, progress_version = progress_version + 1 "
            f"WHERE id = ?{guard} RETURNING progress_version",
            (r.state.value, now, doc, rid, *args),
        ).fetchall()
        return int(rows[0][0]) if rows else None

    def _write_rows(self, rid: int, rows: list[_Row]) -> None:
        self._conn.executemany(
            "INSERT INTO rollout_progress (rollout_id, status, since, reason, nodes) VALUES (?, ?, ?, ?, ?)",
            [(rid, *row) for row in rows],
        )

    def _event(self, rid: int, r: Rollout, now: float) -> None:
        state = f"{r.state.value} (paused)" if r.paused else r.state.value
        self._conn.execute(
            "INSERT INTO rollout_events (rollout_id, at, state, wave, reason) VALUES (?, ?, ?, ?, ?)",
            (rid, now, state, r.wave, r.reason),
        )

    def get(self, rid: int) -> Rollout | None:
        found = self.row(rid)
        return found[3] if found else None

    def active_id(self) -> int | None:
        """The id of the rollout in flight (at most one: a newer commit supersedes the older), without parsing it."""
        terminal = tuple(
            s.value
            for s in (
                State.COMPLETE,
                State.HALTED,
                State.ROLLED_BACK,
                State.SUPERSEDED,
                State.ABORTED,
            )
        )
        row = self._conn.execute(
            f"SELECT id FROM rollouts WHERE state NOT IN ({','.join('?' * len(terminal))}) ORDER BY id DESC LIMIT 1",
            terminal,
        ).fetchone()
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
        with _reading(self._conn):  # each row and its progress rows agree
            rows = self._conn.execute(f"{_SELECT} ORDER BY r.id DESC LIMIT ?", (limit,)).fetchall()
            return [(int(row[0]), float(row[1]), float(row[2]), self._rollout(row)) for row in rows]

    def updated_at(self, rid: int) -> float | None:
        """When rollout ``rid`` was last saved: a cheap way to know whether a copy in hand is current."""
        row = self._conn.execute("SELECT updated_at FROM rollouts WHERE id = ?", (rid,)).fetchone()
        return float(row[0]) if row else None

    def row(self, rid: int) -> tuple[int, float, float, Rollout] | None:
        """(id, created_at, updated_at, rollout) of one rollout."""
        with _reading(self._conn):
            row = self._conn.execute(f"{_SELECT} WHERE r.id = ?", (rid,)).fetchone()
            return (int(row[0]), float(row[1]), float(row[2]), self._rollout(row)) if row else None

    def for_commit(self, commit: str) -> tuple[int, Rollout] | None:
        """The newest rollout of ``commit``, whatever its state."""
        with _reading(self._conn):
            row = self._conn.execute(
                f"{_SELECT} WHERE r.commit_sha = ? ORDER BY r.id DESC LIMIT 1", (commit,)
            ).fetchone()
            return (int(row[0]), self._rollout(row)) if row else None

    def _rollout(self, row: tuple[Any, ...]) -> Rollout:
        """The rollout of a row of :data:`_SELECT`, with its progress rebuilt from its log."""
        rid, _created, _updated, doc, waves_text, version = row
        waves = self._waves.get(rid)
        if waves is None:
            waves = self._remember(self._waves, rid, _parse_waves(waves_text))
        logged = self._conn.execute(
            "SELECT status, since, reason, nodes FROM rollout_progress WHERE rollout_id = ? "
            "ORDER BY rowid",
            (rid,),
        ).fetchall()
        progress, entries = _fold(logged)
        self._remember(self._known, rid, (int(version), progress, entries))
        return from_doc(json.loads(doc), waves, progress)

    @staticmethod
    def _remember(kept: dict[int, Any], rid: int, value: Any) -> Any:
        """Keep ``value`` for rollout ``rid`` in ``kept``, with those of the few rollouts used last."""
        kept.pop(rid, None)
        kept[rid] = value
        while len(kept) > _KEPT:
            del kept[next(iter(kept))]
        return value

    def previous(self, rid: int) -> dict[str, dict[str, Any]]:
        """What the rollout's nodes ran before it (kept by :meth:`create`), parsed."""
        rows = self._conn.execute(
            "SELECT node, manifest FROM rollout_previous WHERE rollout_id = ?", (rid,)
        ).fetchall()
        return {n: parse_json(m) for n, m in rows}

    def note_revert(self, rid: int, branch: str | None, error: str | None) -> None:
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO rollout_notes (rollout_id, revert_branch, revert_error) VALUES (?, ?, ?)",
                (rid, branch, error),
            )

    def revert_note(self, rid: int) -> tuple[str | None, str | None]:
        row = self._conn.execute(
            "SELECT revert_branch, revert_error FROM rollout_notes WHERE rollout_id = ?", (rid,)
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def events(self, rid: int) -> builtins.list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT at, state, wave, reason FROM rollout_events WHERE rollout_id = ? ORDER BY at, rowid",
            (rid,),
        ).fetchall()
        return [{"at": at, "state": s, "wave": w, "reason": reason} for at, s, w, reason in rows]
