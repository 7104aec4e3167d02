"""The state database: WAL, versioned schema, reservations that survive a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from treadle.daemon.state import SCHEMA_VERSION, NodeRecord, StateDB
from treadle.errors import StoreError


def rec(name: str, generation: int, digest: str = "d", lifecycle: str = "production") -> NodeRecord:
    return NodeRecord(name, generation, 0, digest, "c" * 40, 2e9, lifecycle)


def test_database_is_in_wal_mode_with_the_current_schema_version(tmp_path: Path) -> None:
    StateDB(tmp_path / "s.db")
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_reserved_generation_is_dirty_until_its_deployment_is_recorded_and_survives_reopen(
    tmp_path: Path,
) -> None:
    db = StateDB(tmp_path / "s.db")
    db.reserve([rec("n1", 1), rec("n2", 1)])
    assert all(r.dirty for r in StateDB(tmp_path / "s.db").nodes().values())
    db.record_deployment("a" * 40, None, ["n1"], [])
    again = StateDB(tmp_path / "s.db")
    assert again.deployed_commit() == "a" * 40
    assert not again.nodes()["n1"].dirty and again.nodes()["n2"].dirty
    assert again.deployments()[0]["changed"] == 1


def test_removed_node_keeps_its_generation_and_leaves_the_counts(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    db.reserve([rec("n1", 3), rec("n2", 1, lifecycle="draining")])
    db.record_deployment("a" * 40, None, ["n1", "n2"], [])
    db.record_deployment("b" * 40, "a" * 40, [], ["n1"])
    assert db.nodes()["n1"].generation == 3 and not db.nodes()["n1"].present
    assert db.lifecycle_counts() == {"draining": 1}


def test_refusal_is_recorded_with_diagnostics_and_pending_history_until_accepted(
    tmp_path: Path,
) -> None:
    db = StateDB(tmp_path / "s.db")
    db.record_refusal("f" * 40, "non_fast_forward", "rewritten", ["a.yaml:1:2: bad"])
    assert db.last_refusal().diagnostics == ("a.yaml:1:2: bad",)
    assert db.pending_history() == "f" * 40
    db.accept_history("f" * 40)
    assert db.pending_history() is None and db.history_accepted("f" * 40)


def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        StateDB(tmp_path / "s.db")


def test_a_file_that_is_not_a_database_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "s.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="move it aside"):
        StateDB(tmp_path / "s.db")


def test_in_memory_nodes_always_equal_a_fresh_read_of_the_database(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    db.nodes()  # prime the in-memory copy
    db.reserve([rec("n1", 1), rec("n2", 1)])
    assert db.nodes() == StateDB(tmp_path / "s.db").nodes()
    db.record_deployment("a" * 40, None, ["n1", "n2"], [])
    db.reserve([rec("n1", 2, digest="e"), rec("n3", 1)])
    assert db.nodes() == StateDB(tmp_path / "s.db").nodes()
    db.record_deployment("b" * 40, "a" * 40, ["n1", "n3"], ["n2"])
    db.reserve([rec("n2", 2)])  # a removed node comes back above its old generation
    assert db.nodes() == StateDB(tmp_path / "s.db").nodes()
    assert db.nodes()["n2"].present and db.nodes()["n2"].dirty
    _same_derived(db, StateDB(tmp_path / "s.db"))


def _same_derived(db: StateDB, fresh: StateDB) -> None:
    """The dirty set and the lifecycle counts kept beside the records equal those computed from a fresh read."""
    records = fresh.nodes()
    assert db.dirty() == frozenset(n for n, r in records.items() if r.dirty) == fresh.dirty()
    counts: dict[str, int] = {}
    for r in records.values():
        if r.present:
            counts[r.lifecycle] = counts.get(r.lifecycle, 0) + 1
    assert db.lifecycle_counts() == counts == fresh.lifecycle_counts()
    assert dict(db.records()) == records


def test_dirty_names_and_lifecycle_counts_follow_every_write(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "s.db")
    db.reserve([rec("n1", 1), rec("n2", 1, lifecycle="draining"), rec("n3", 1)])
    _same_derived(db, StateDB(tmp_path / "s.db"))
    assert db.dirty() == {"n1", "n2", "n3"}
    db.record_deployment("a" * 40, None, ["n1", "n2"], [])
    _same_derived(db, StateDB(tmp_path / "s.db"))
    db.reserve([rec("n2", 2, lifecycle="production")])
    db.record_deployment("b" * 40, "a" * 40, ["n2", "n3"], ["n1"])
    _same_derived(db, StateDB(tmp_path / "s.db"))
    assert db.dirty() == frozenset() and db.lifecycle_counts() == {"production": 2}


def test_history_beyond_the_retention_setting_is_pruned_and_the_wal_truncated(
    tmp_path: Path,
) -> None:
    db = StateDB(tmp_path / "s.db")
    for i in range(30):
        db.record_deployment(f"{i:040x}", None, [], ())
        db.record_refusal(f"{i:040x}", "invalid", f"bad {i}")
        db.accept_history(f"{i:040x}")
    wal = tmp_path / "s.db-wal"
    assert wal.stat().st_size > 0
    assert db.prune(10) == 3 * 20
    assert [d["commit"] for d in db.deployments(limit=100)] == [
        f"{i:040x}" for i in range(29, 19, -1)
    ]
    assert len(db.refusals(limit=100)) == 10 and db.last_refusal().message == "bad 29"
    assert db.history_accepted(f"{29:040x}") and not db.history_accepted(f"{0:040x}")
    assert db.deployed_commit() == f"{29:040x}"
    assert wal.stat().st_size == 0  # checkpointed and truncated


def test_connections_are_pooled_not_opened_per_thread_and_all_closed(tmp_path: Path) -> None:
    import threading

    db = StateDB(tmp_path / "s.db")
    for i in range(20):  # twenty short-lived threads, as anyio's workers come and go
        t = threading.Thread(target=lambda i=i: db.record_deployment(f"{i:040x}", None, [], ()))
        t.start()
        t.join()
    assert db.handles == 1
    db.close()
    assert db.handles == 0
    assert db.deployed_commit() == f"{19:040x}"  # a later statement opens a connection again


def test_each_nodes_publication_history_keeps_its_newest_rows_only(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.sqlite3", node_history_kept=3)
    for gen in range(1, 8):
        db.record_history([("n1", gen, f"c{gen}", "A <a@example.org>", "rollout")], at=float(gen))
    db.record_history([("n2", 1, "c1", None, "new node")], at=1.0)
    assert [h["generation"] for h in db.node_history("n1")] == [7, 6, 5]
    assert [h["generation"] for h in db.node_history("n2")] == [
        1
    ]  # another node's history is its own
    reopened = StateDB(tmp_path / "state.sqlite3", node_history_kept=3)
    assert [h["commit"] for h in reopened.node_history("n1")] == ["c7", "c6", "c5"]
