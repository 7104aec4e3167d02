"""The controller's durable state: SQLite in WAL mode in the state directory.

What it keeps: the deployed commit; per node its generation, content digest,
the generation known to be published, expiry and lifecycle; refused commits
with their reasons and diagnostics; accepted history rewrites; the history of
deployments. The schema is versioned (``PRAGMA user_version``) and migrated
forward on open; a database from a newer Treadle is refused, never guessed at.

Crash safety rests on one rule, kept by :mod:`treadle.daemon.pipeline`: generations
are *reserved* here (committed) before the manifests carrying them are
published, and marked published afterwards. A node whose reserved generation
was never marked published is "dirty" after a crash: it may or may not be in
the store, so it is re-signed under a generation above the reserved one. An
agent therefore never sees two different envelopes with one generation, and
no generation ever goes down.

Connections come from a small pool owned by the :class:`StateDB`: a
statement borrows one and returns it, so the API reads on one while the
pipeline writes on another (WAL lets readers proceed during a write), and
the number open is the most ever used at once (two or three), however many
worker threads come and go. :meth:`StateDB.close` closes them all. (One
connection per thread leaked one, with its WAL descriptor, per short-lived
worker thread: tests/controller/test_soak.py.)

History (deployments, refusals, accepted rewrites) is cut to the newest
``history_kept`` rows by :meth:`StateDB.prune`, which also checkpoints the WAL;
each node's publication history keeps its newest ``history_kept`` rows, trimmed
as they are recorded.

Raises:
    StoreError: the database cannot be opened, is from a newer version, or a
        statement failed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from treadle.errors import StoreError

SCHEMA_VERSION = 1
#: The size the WAL file is truncated to after a checkpoint (SQLite's journal_size_limit).
WAL_LIMIT_BYTES = 4 * 1024 * 1024

_SCHEMA_V1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE nodes(
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    published_generation INTEGER NOT NULL DEFAULT 0,
    content_digest TEXT NOT NULL,
    commit_sha TEXT,
    expires REAL NOT NULL,
    lifecycle TEXT NOT NULL,
    present INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE refusals(
    id INTEGER PRIMARY KEY, commit_sha TEXT NOT NULL, reason TEXT NOT NULL,
    message TEXT NOT NULL, diagnostics TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE accepted_history(commit_sha TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE deployments(
    id INTEGER PRIMARY KEY, commit_sha TEXT NOT NULL, previous TEXT,
    changed INTEGER NOT NULL, removed INTEGER NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node as the controller last reserved or published it."""

    name: str
    generation: int
    published_generation: int
    content_digest: str
    commit: str | None
    expires: float
    lifecycle: str
    present: bool = True

    @property
    def dirty(self) -> bool:
        """A generation was reserved but its publication was never confirmed."""
        return self.generation != self.published_generation


@dataclass(frozen=True, slots=True)
class Refusal:
    commit: str
    reason: str
    message: str
    diagnostics: tuple[str, ...]
    at: float


class StateDB:
    """The state database at ``path``; see the module docstring."""

    def __init__(self, path: Path, node_history_kept: int = 1000) -> None:
        self.path = path
        #: Publications kept per node in ``node_history`` (retention.history_kept), trimmed as each is recorded.
        self.node_history_kept = node_history_kept
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._opened: list[sqlite3.Connection] = []
        # The pipeline reads nodes every cycle; it is also the only writer of
        # nodes, so it keeps them in memory and the writes below update them
        # in place exactly as the SQL does (pinned by tests/controller/test_state.py),
        # with the dirty names and the lifecycle counts kept beside them, so
        # that a cycle's reads and writes cost what its nodes cost, not what
        # the fabric's size costs. Other threads read copies, taken under the lock.
        self._nodes: dict[str, NodeRecord] | None = None
        self._dirty: set[str] = set()
        #: Counts changes of the in-memory records (a write or a reload): equal counts, same records.
        self._changes = 0
        self._counts: dict[str, int] = {}
        self._nodes_lock = threading.RLock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()
        self._add_node_history()

    @property
    def handles(self) -> int:
        """How many connections are open (the pool's size)."""
        with self._pool_lock:
            return len(self._opened)

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection of the pool for the duration of the block, opened when none is idle."""
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
            with self._pool_lock:
                self._opened.append(conn)
        try:
            yield conn
        finally:
            with self._pool_lock:
                if conn in self._opened:  # not closed meanwhile
                    self._idle.append(conn)

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a deployment recorded is a deployment that survives power loss.
            conn.execute("PRAGMA synchronous=FULL")
            # The WAL is reused after each checkpoint but never shrinks by itself: cut it back to this size.
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        except sqlite3.Error as e:
            raise StoreError(
                f"{self.path}: cannot open the state database: {e}; move it aside and restart"
            ) from e
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._conn() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: {e}") from e

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._conn() as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e

    def _migrate(self) -> None:
        try:
            with self._conn() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as e:
            raise StoreError(
                f"{self.path}: not a Treadle state database ({e}); move it aside and restart"
            ) from e
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this controller's {SCHEMA_VERSION}; "
                "upgrade Treadle or move the state directory aside"
            )
        if version == 0:
            with self._tx() as c:
                for stmt in filter(str.strip, _SCHEMA_V1.split(";")):
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _add_node_history(self) -> None:
        """The per-node publication history (``GET /v1/nodes/<node>/history``): an additive table, created when missing.

        Additive on purpose: a database without it is still version 1, and an
        older controller reading a newer database ignores it.
        """
        with self._tx() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS node_history(node TEXT NOT NULL, generation INTEGER NOT NULL, "
                "commit_sha TEXT, author TEXT, why TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY(node, generation))"
            )

    def close(self) -> None:
        """Close every connection of the pool (a later statement opens a new one)."""
        with self._pool_lock:
            opened, self._opened, self._idle = self._opened, [], []
        for conn in opened:
            conn.close()

    # -- reads ---------------------------------------------------------------

    def deployed_commit(self) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key='deployed_commit'")
        return rows[0][0] if rows else None

    def nodes(self) -> dict[str, NodeRecord]:
        """Every node ever published, removed ones included (their generation must never be reused): a copy."""
        with self._nodes_lock:
            return dict(self._known())

    def records(self) -> Mapping[str, NodeRecord]:
        """The same records as :meth:`nodes`, as a live read-only view: for the pipeline's thread (the writer), in O(1)."""
        return MappingProxyType(self._known())

    def changes(self) -> int:
        """A number that grows with every change of :meth:`records` (a cache's key: no pass over them)."""
        with self._nodes_lock:
            self._known()
            return self._changes

    def dirty(self) -> frozenset[str]:
        """The nodes whose reserved generation was never confirmed published."""
        with self._nodes_lock:
            self._known()
            return frozenset(self._dirty)

    def _known(self) -> dict[str, NodeRecord]:
        with self._nodes_lock:
            if self._nodes is None:
                self._nodes = self._load_nodes()
                self._changes += 1
                self._dirty = {n for n, r in self._nodes.items() if r.dirty}
                self._counts = {}
                for r in self._nodes.values():
                    self._count(r, 1)
            return self._nodes

    def _count(self, record: NodeRecord, delta: int) -> None:
        if record.present:
            self._counts[record.lifecycle] = self._counts.get(record.lifecycle, 0) + delta

    def _put(self, record: NodeRecord) -> None:
        """Replace one in-memory record, keeping the dirty set and the counts (the lock is held)."""
        assert self._nodes is not None
        old = self._nodes.get(record.name)
        if old is not None:
            self._count(old, -1)
        self._count(record, 1)
        self._nodes[record.name] = record
        self._changes += 1
        if record.dirty:
            self._dirty.add(record.name)
        else:
            self._dirty.discard(record.name)

    def _load_nodes(self) -> dict[str, NodeRecord]:
        rows = self._query(
            "SELECT name, generation, published_generation, content_digest, commit_sha, expires, lifecycle, present FROM nodes"
        )
        return {
            r[0]: NodeRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7])) for r in rows
        }

    def lifecycle_counts(self) -> dict[str, int]:
        """Present nodes by lifecycle (what ``treadle_controller_nodes`` shows)."""
        with self._nodes_lock:
            self._known()
            return {k: v for k, v in self._counts.items() if v}

    def last_refusal(self) -> Refusal | None:
        rows = self._query(
            "SELECT commit_sha, reason, message, diagnostics, at FROM refusals ORDER BY id DESC LIMIT 1"
        )
        return _refusal(rows[0]) if rows else None

    def refusals(self, limit: int = 20) -> list[Refusal]:
        rows = self._query(
            "SELECT commit_sha, reason, message, diagnostics, at FROM refusals ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [_refusal(r) for r in rows]

    def history_accepted(self, commit: str) -> bool:
        return bool(self._query("SELECT 1 FROM accepted_history WHERE commit_sha=?", (commit,)))

    def pending_history(self) -> str | None:
        """The newest commit refused as a history rewrite and not yet accepted or deployed since."""
        rows = self._query(
            "SELECT r.commit_sha FROM refusals r WHERE r.id = (SELECT max(id) FROM refusals) AND r.reason='non_fast_forward' "
            "AND r.commit_sha NOT IN (SELECT commit_sha FROM accepted_history)"
        )
        return rows[0][0] if rows else None

    def deployments(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT commit_sha, previous, changed, removed, kind, at FROM deployments ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            dict(zip(("commit", "previous", "changed", "removed", "kind", "at"), r, strict=False))
            for r in rows
        ]

    # -- writes --------------------------------------------------------------

    def reserve(self, records: Iterable[NodeRecord]) -> None:
        """Commit new generations before the manifests carrying them are published (see the module docstring)."""
        records = list(records)
        rows = [
            (
                r.name,
                r.generation,
                r.published_generation,
                r.content_digest,
                r.commit,
                r.expires,
                r.lifecycle,
            )
            for r in records
        ]
        with self._nodes_lock:
            known = self._known()
            try:
                with self._tx() as c:
                    c.executemany(
                        "INSERT INTO nodes(name, generation, published_generation, content_digest, commit_sha, expires, "
                        "lifecycle, present) "
                        "VALUES(?,?,?,?,?,?,?,1) ON CONFLICT(name) DO UPDATE SET generation=excluded.generation, "
                        "content_digest=excluded.content_digest, commit_sha=excluded.commit_sha, expires=excluded.expires, "
                        "lifecycle=excluded.lifecycle, present=1",
                        rows,
                    )
            except BaseException:
                self._nodes = None  # reloaded from the database: the transaction may or may not have committed
                raise
            for r in records:
                old = known.get(r.name)
                self._put(
                    replace(
                        r,
                        published_generation=old.published_generation
                        if old
                        else r.published_generation,
                        present=True,
                    )
                )

    def record_deployment(
        self,
        commit: str | None,
        previous: str | None,
        published: Iterable[str],
        removed: Iterable[str],
        kind: str = "deploy",
    ) -> None:
        """Mark ``published`` nodes' reserved generations as published, ``removed`` nodes as gone, and move the deployed commit."""
        pub, rem = [(n,) for n in published], [(n,) for n in removed]
        with self._nodes_lock:
            known = self._known()
            try:
                with self._tx() as c:
                    c.executemany(
                        "UPDATE nodes SET published_generation=generation WHERE name=?", pub
                    )
                    c.executemany(
                        "UPDATE nodes SET present=0, published_generation=generation WHERE name=?",
                        rem,
                    )
                    if commit is not None:
                        c.execute(
                            "INSERT INTO meta(key, value) VALUES('deployed_commit', ?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                            (commit,),
                        )
                        c.execute(
                            "INSERT INTO deployments(commit_sha, previous, changed, removed, kind, at) VALUES(?,?,?,?,?,?)",
                            (commit, previous, len(pub), len(rem), kind, time.time()),
                        )
            except BaseException:
                self._nodes = None
                raise
            for (n,) in pub:
                if n in known:
                    self._put(replace(known[n], published_generation=known[n].generation))
            for (n,) in rem:
                if n in known:
                    self._put(
                        replace(known[n], published_generation=known[n].generation, present=False)
                    )

    def record_history(
        self, rows: Iterable[tuple[str, int, str | None, str | None, str]], at: float | None = None
    ) -> None:
        """Remember what was published: ``(node, generation, commit, author, why)`` per node."""
        when = time.time() if at is None else at
        rows = list(rows)
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO node_history(node, generation, commit_sha, author, why, at) VALUES(?,?,?,?,?,?)",
                [(*r, when) for r in rows],
            )
            # Bounded per node, through the primary key's index: only the nodes just published are looked at.
            c.executemany(
                "DELETE FROM node_history WHERE node=? AND generation < (SELECT generation FROM node_history "
                "WHERE node=? ORDER BY generation DESC LIMIT 1 OFFSET ?)",
                [(n, n, self.node_history_kept - 1) for n in sorted({r[0] for r in rows})],
            )

    def node_history(self, node: str, limit: int = 100) -> list[dict[str, Any]]:
        """The generations published for ``node``, newest first."""
        rows = self._query(
            "SELECT generation, commit_sha, author, why, at FROM node_history WHERE node=? "
            "ORDER BY generation DESC LIMIT ?",
            (node, limit),
        )
        return [
            {"generation": g, "commit": c, "author": a, "why": w, "at": at}
            for g, c, a, w, at in rows
        ]

    def record_refusal(
        self, commit: str, reason: str, message: str, diagnostics: Iterable[str] = ()
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO refusals(commit_sha, reason, message, diagnostics, at) VALUES(?,?,?,?,?)",
                (commit, reason, message, json.dumps(list(diagnostics)), time.time()),
            )

    def accept_history(self, commit: str) -> None:
        """Record an operator's acceptance of a rewritten history ending at ``commit``."""
        with self._tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO accepted_history(commit_sha, at) VALUES(?, ?)",
                (commit, time.time()),
            )

    # -- retention -------------------------------------------------------------

    def prune(self, keep: int) -> int:
        """Keep the newest ``keep`` deployment rows, refusal rows and accepted rewrites (each); checkpoint the WAL.

        Nodes are never pruned: a removed node's generation must never be reused.
        The pages freed are reused by later rows, so the file stops growing.
        Returns the number of rows deleted.
        """
        deleted = 0
        with self._tx() as c:
            for table, order in (
                ("deployments", "id"),
                ("refusals", "id"),
                ("accepted_history", "at"),
            ):
                deleted += c.execute(
                    f"DELETE FROM {table} WHERE rowid NOT IN "  # noqa: S608 - fixed names
                    f"(SELECT rowid FROM {table} ORDER BY {order} DESC LIMIT ?)",
                    (keep,),
                ).rowcount
        self.checkpoint()
        return deleted

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (readers in progress may make it partial: harmless)."""
        try:
            with self._conn() as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: checkpoint failed: {e}") from e


def _refusal(row: tuple[Any, ...]) -> Refusal:
    return Refusal(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4])
