"""Rollouts in SQLite: the waves are written once, the moving part after every transition, progress as it moves."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadle.errors import StoreError
from treadle.rollout import machine as m
from treadle.rollout.machine import NodeProgress, NodeStatus, State
from treadle.rollout.store import SCHEMA_VERSION, RolloutStore, to_doc, waves_doc

SHA = "e" * 40
REST = tuple(f"n{i}" for i in range(2, 200))

#: The rollout tables as version 1 wrote them (progress inside the document), to test the migration.
SCHEMA_1 = """
CREATE TABLE rollouts (id INTEGER PRIMARY KEY AUTOINCREMENT, commit_sha TEXT NOT NULL, state TEXT NOT NULL,
                       created_at REAL NOT NULL, updated_at REAL NOT NULL, doc TEXT NOT NULL);
CREATE TABLE rollout_waves (rollout_id INTEGER PRIMARY KEY REFERENCES rollouts(id), waves TEXT NOT NULL);
CREATE TABLE rollout_events (rollout_id INTEGER NOT NULL REFERENCES rollouts(id), at REAL NOT NULL,
                             state TEXT NOT NULL, wave INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE INDEX rollout_events_by_rollout ON rollout_events(rollout_id, at);
CREATE TABLE rollout_previous (rollout_id INTEGER NOT NULL REFERENCES rollouts(id), node TEXT NOT NULL,
                               manifest TEXT NOT NULL, PRIMARY KEY (rollout_id, node));
CREATE TABLE rollout_notes (rollout_id INTEGER PRIMARY KEY REFERENCES rollouts(id), revert_branch TEXT, revert_error TEXT);
"""


def _rollout() -> m.Rollout:
    waves = (
        m.Wave("canary", ("n1",), soak_s=60, timeout_s=600, allowed_failures=0),
        m.Wave("rest", REST, soak_s=60, timeout_s=600, allowed_failures=3),
    )
    return m.Rollout(commit=SHA, waves=waves)


def _soaking(progress: dict[str, NodeProgress], t: float) -> m.Rollout:
    return replace(
        _rollout(), state=State.SOAKING, wave=1, started_at=0.0, progress=progress, reason=f"at {t}"
    )


def _progress_rows(conn: sqlite3.Connection, rid: int) -> list[tuple[str, float | None, list[str]]]:
    rows = conn.execute(
        "SELECT status, since, nodes FROM rollout_progress WHERE rollout_id = ? ORDER BY rowid",
        (rid,),
    )
    return [(status, since, nodes.split("\n")) for status, since, nodes in rows]


def _fresh_read(path: Path, rid: int) -> m.Rollout | None:
    """The rollout as a new connection reads it (nothing kept in memory from the writer)."""
    store = RolloutStore(sqlite3.connect(path))
    try:
        return store.get(rid)
    finally:
        store.close()


def test_waves_are_written_once_and_every_save_rewrites_only_the_moving_part(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    store = RolloutStore(conn)
    r = _rollout()
    rid = store.create(r, now=0)
    stored_waves = conn.execute(
        "SELECT waves FROM rollout_waves WHERE rollout_id = ?", (rid,)
    ).fetchall()
    for t in range(1, 4):
        r = _soaking({"n2": NodeProgress(NodeStatus.APPLIED, float(t))}, t)
        store.save(rid, r, now=t)
    assert (
        conn.execute("SELECT waves FROM rollout_waves WHERE rollout_id = ?", (rid,)).fetchall()
        == stored_waves
    )
    assert json.loads(stored_waves[0][0]) == waves_doc(r)
    doc = json.loads(conn.execute("SELECT doc FROM rollouts WHERE id = ?", (rid,)).fetchone()[0])
    assert "waves" not in doc and "progress" not in doc and doc == to_doc(r)
    assert store.get(rid) == r and _fresh_read(tmp_path / "state.db", rid) == r


def test_a_save_writes_rows_only_for_the_nodes_whose_progress_moved(tmp_path) -> None:
    """Half a wave reporting at once is one row (the nodes share one progress value); nodes that did not
    move are not written again; a node that moves back is one more row, and the log rebuilds the progress."""
    conn = sqlite3.connect(tmp_path / "state.db")
    store = RolloutStore(conn)
    rid = store.create(_rollout(), now=0)
    fresh = dict.fromkeys(REST, NodeProgress())
    r = _soaking(fresh, 1)
    store.save(rid, r, now=1)
    assert _progress_rows(conn, rid) == [
        ("pending", None, list(REST))
    ]  # the new wave: written whole, one row
    applied = NodeProgress(NodeStatus.APPLIED, 2.0)
    r = _soaking({**r.progress, **dict.fromkeys(REST[:99], applied)}, 2)
    store.save(rid, r, now=2, before=r)
    r = _soaking(
        {
            **r.progress,
            "n150": NodeProgress(NodeStatus.FAILED, 3.0, "apply of generation 2 failed"),
        },
        3,
    )
    store.save(rid, r, now=3)
    r = _soaking({**r.progress, "n2": NodeProgress()}, 4)  # lost its report: back to pending
    store.save(rid, r, now=4)
    store.save(rid, r, now=5)  # nothing moved: no row
    assert _progress_rows(conn, rid)[1:] == [
        ("applied", 2.0, list(REST[:99])),
        ("failed", 3.0, ["n150"]),
        ("pending", None, ["n2"]),
    ]
    assert store.get(rid) == r and _fresh_read(tmp_path / "state.db", rid) == r


def test_a_progress_that_lost_nodes_or_whose_log_grew_is_written_whole_again(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    store = RolloutStore(conn)
    rid = store.create(_rollout(), now=0)
    r = _soaking(dict.fromkeys(REST, NodeProgress()), 1)
    store.save(rid, r, now=1)
    for t in range(
        2, 40
    ):  # every node flaps between applied and pending: the log would grow without end
        status = NodeStatus.APPLIED if t % 2 else NodeStatus.PENDING
        r = _soaking(dict.fromkeys(REST, NodeProgress(status, float(t) if t % 2 else None)), t)
        store.save(rid, r, now=t)
        entries = sum(len(nodes) for *_, nodes in _progress_rows(conn, rid))
        assert entries <= 4 * len(REST) + 1024
    assert _fresh_read(tmp_path / "state.db", rid) == r
    r = replace(r, state=State.PENDING, wave=2, progress={})  # the wave passed: its progress goes
    store.save(rid, r, now=50)
    assert _progress_rows(conn, rid) == [] and _fresh_read(tmp_path / "state.db", rid) == r


def test_a_save_after_another_connection_saved_writes_the_progress_whole(tmp_path) -> None:
    """The moves are taken from what this connection wrote last; when another one saved since (the row's
    progress_version says so, checked in the save's transaction), they would be wrong: the save writes it all."""
    path = tmp_path / "state.db"
    one, other = RolloutStore(sqlite3.connect(path)), RolloutStore(sqlite3.connect(path))
    rid = one.create(_rollout(), now=0)
    base = _soaking(dict.fromkeys(REST, NodeProgress()), 1)
    one.save(rid, base, now=1)
    other.save(
        rid, _soaking({**base.progress, "n3": NodeProgress(NodeStatus.FAILED, 2.0, "x")}, 2), now=2
    )
    mine = _soaking({**base.progress, "n4": NodeProgress(NodeStatus.APPLIED, 3.0)}, 3)
    one.save(rid, mine, now=3)
    assert _fresh_read(path, rid) == mine and other.get(rid) == mine


def test_a_node_name_with_a_line_break_is_refused_and_nothing_is_written(tmp_path) -> None:
    store = RolloutStore(sqlite3.connect(tmp_path / "state.db"))
    rid = store.create(_rollout(), now=0)
    r = _soaking({"n2": NodeProgress()}, 1)
    store.save(rid, r, now=1)
    with pytest.raises(ValueError, match="line break"):
        store.save(rid, _soaking({"n2": NodeProgress(), "bad\nname": NodeProgress()}, 2), now=2)
    assert _fresh_read(tmp_path / "state.db", rid) == r


def test_a_save_that_fails_midway_leaves_the_rollout_as_last_saved(tmp_path) -> None:
    """A save is one transaction: the row, the progress rows and the event. When its last write fails,
    nothing of it stays; the next save, from the same store, writes the right progress."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    store = RolloutStore(conn)
    rid = store.create(_rollout(), now=0)
    saved = _soaking(dict.fromkeys(REST, NodeProgress()), 1)
    store.save(rid, saved, now=1)
    with conn:
        conn.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON rollout_events BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    moved = replace(
        _soaking(
            {**saved.progress, **dict.fromkeys(REST[:50], NodeProgress(NodeStatus.APPLIED, 2.0))}, 2
        ),
        paused=True,
    )  # an event is logged: the last write of the save
    with pytest.raises(StoreError, match="disk full"):  # sqlite3.Error, wrapped
        store.save(rid, moved, now=2, before=saved)
    assert _fresh_read(path, rid) == saved and store.get(rid) == saved
    with conn:
        conn.execute("DROP TRIGGER full_disk")
    store.save(rid, moved, now=3, before=saved)
    later = _soaking({**moved.progress, "n199": NodeProgress(NodeStatus.FAILED, 4.0, "y")}, 4)
    store.save(rid, later, now=4)
    assert _fresh_read(path, rid) == later


WRITER = textwrap.dedent("""
    import sqlite3, sys
    from dataclasses import replace
    from treadle.rollout import machine as m
    from treadle.rollout.store import RolloutStore

    def progress(i, nodes):
        if i % 25 == 0:
            return {}
        k = (i * 37) % len(nodes)
        soaking = m.NodeProgress(m.NodeStatus.APPLIED, float(i))
        return {**dict.fromkeys(nodes, m.NodeProgress()), **dict.fromkeys(nodes[:k], soaking)}

    conn = sqlite3.connect(sys.argv[1])
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    store = RolloutStore(conn)
    nodes = tuple(f"n{i:05d}" for i in range(3000))
    r = m.Rollout("f" * 40, (m.Wave("all", nodes, 60, 600, 0),))
    rid = store.create(r, now=0)
    print(rid, flush=True)
    i = 0
    while True:
        i += 1
        new = replace(r, state=m.State.SOAKING, reason=f"save {i}", progress=progress(i, nodes))
        store.save(rid, new, now=i, before=r)
        r = new
""")


def test_a_writer_killed_mid_save_leaves_a_rollout_exactly_as_one_of_its_saves(tmp_path) -> None:
    """Kill -9 a process saving a 3,000-node rollout in a loop (moves, snapshots, emptied progress), then
    read it: its row and its progress are those of one and the same save, every time."""
    (tmp_path / "writer.py").write_text(WRITER)
    namespace: dict[str, object] = {}
    exec(
        WRITER.split("conn = sqlite3.connect")[0], namespace
    )  # the progress() of the writer, to compare
    nodes = tuple(f"n{i:05d}" for i in range(3000))
    for attempt in range(3):
        path = tmp_path / f"state-{attempt}.db"
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "writer.py"), str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            rid = int(proc.stdout.readline())  # type: ignore[union-attr]
            time.sleep(0.4 + 0.3 * attempt)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        r = _fresh_read(path, rid)
        assert r is not None and r.reason.startswith("save ")
        i = int(r.reason.split()[1])
        assert i > 1, "the writer made no save before it was killed"
        assert r.progress == namespace["progress"](i, nodes), (
            f"save {i}: the progress is not that save's"
        )  # type: ignore[operator]


def test_tables_of_version_1_are_migrated_in_place_and_read_back_unchanged(tmp_path) -> None:
    """Progress inside the document (grouped, and the first one-entry-per-node format) and waves inside
    the document move to their tables; every rollout reads back as it was; the store then saves as usual."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_1)
    applied, failed = (
        NodeProgress(NodeStatus.APPLIED, 5.0),
        NodeProgress(NodeStatus.FAILED, 6.0, "apply of generation 2 failed"),
    )
    soaking = _soaking(
        {
            **dict.fromkeys(REST, NodeProgress()),
            **dict.fromkeys(REST[:10], applied),
            "n150": failed,
        },
        7,
    )
    grouped = [
        ["pending", None, "", list(REST[10:148]) + list(REST[149:])],
        ["applied", 5.0, "", list(REST[:10])],
        ["failed", 6.0, "apply of generation 2 failed", ["n150"]],
    ]
    done = replace(
        _rollout(),
        state=State.COMPLETE,
        finished=({"pending": 0, "applied": 0, "healthy": 1, "failed": 0},),
    )
    first_format = _soaking({"n2": applied}, 8)
    with conn:
        for r, progress, waves_inside in (
            (soaking, grouped, False),
            (done, [], True),
            (first_format, {"n2": {"status": "applied", "since": 5.0, "reason": ""}}, True),
        ):
            doc = {
                **to_doc(r),
                "progress": progress,
                **({"waves": waves_doc(r)} if waves_inside else {}),
            }
            cur = conn.execute(
                "INSERT INTO rollouts (commit_sha, state, created_at, updated_at, doc) VALUES (?, ?, 0, 0, ?)",
                (SHA, r.state.value, json.dumps(doc)),
            )
            if not waves_inside:
                conn.execute(
                    "INSERT INTO rollout_waves VALUES (?, ?)",
                    (cur.lastrowid, json.dumps(waves_doc(r))),
                )
    store = RolloutStore(conn)
    assert [r for *_, r in store.list()] == [first_format, done, soaking]
    assert conn.execute("SELECT value FROM rollout_meta WHERE key = 'schema'").fetchone() == (
        SCHEMA_VERSION,
    )
    assert all(
        "progress" not in json.loads(d) and "waves" not in json.loads(d)
        for (d,) in conn.execute("SELECT doc FROM rollouts")
    )
    later = _soaking({**soaking.progress, "n3": applied}, 9)
    store.save(1, later, now=9)
    assert (
        _fresh_read(path, 1) == later and _fresh_read(path, 3) == first_format
    )  # opened again: no second migration


def test_tables_of_version_1_that_cannot_be_migrated_are_left_untouched_with_an_error_naming_the_rollout(
    tmp_path,
) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_1)
    with conn:
        conn.execute(
            "INSERT INTO rollouts (commit_sha, state, created_at, updated_at, doc) VALUES (?, 'soaking', 0, 0, ?)",
            (SHA, json.dumps({**to_doc(_rollout()), "progress": [["exploded", None, "", ["n2"]]]})),
        )
    before = list(conn.iterdump())
    with pytest.raises(
        StoreError, match=r"state\.db: rollout 1 cannot be migrated .*nothing was changed"
    ):
        RolloutStore(conn)
    assert list(conn.iterdump()) == before


def test_tables_of_a_newer_version_are_refused_with_what_to_do(tmp_path) -> None:
    path = tmp_path / "state.db"
    store = RolloutStore(sqlite3.connect(path))
    rid = store.create(_rollout(), now=0)
    store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE rollout_meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION + 1,)
        )
    with pytest.raises(
        StoreError,
        match=f"version {SCHEMA_VERSION + 1}, written by a newer Treadle.*Run the newer Treadle",
    ):
        RolloutStore(conn)
    assert conn.execute("SELECT count(*) FROM rollouts WHERE id = ?", (rid,)).fetchone() == (1,)


_STATUSES = [
    NodeProgress(),
    NodeProgress(NodeStatus.APPLIED, 1.0),
    NodeProgress(NodeStatus.APPLIED, 2.0),
    NodeProgress(NodeStatus.HEALTHY, 1.0),
    NodeProgress(NodeStatus.FAILED, 3.0, "apply failed"),
]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(REST[:12]), st.integers(0, len(_STATUSES) - 1), max_size=12
        ),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_any_sequence_of_saves_reads_back_as_the_last_one(tmp_path_factory, steps, share) -> None:
    """Moves, removals and re-adds, with values shared between saves or equal copies of them: a new
    connection reads what was saved last, and so does the writer."""
    path = tmp_path_factory.mktemp("saves") / "state.db"
    store = RolloutStore(sqlite3.connect(path))
    rid = store.create(_rollout(), now=0)
    r = _rollout()
    for t, (step, keep) in enumerate(zip(steps, share, strict=False), start=1):
        # Shared values (the machine's way: unchanged nodes keep their object), or equal copies of them.
        new = _soaking(
            {n: (_STATUSES[i] if keep else replace(_STATUSES[i])) for n, i in step.items()}, t
        )
        store.save(rid, new, now=t)
        r = new
    assert store.get(rid) == r and _fresh_read(path, rid) == r


def test_pruning_keeps_the_newest_rollouts_and_the_one_in_flight_with_their_rows(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    store = RolloutStore(conn)
    in_flight = store.create(
        _rollout(), now=0, previous={"n1": b'{"old": 1}'}
    )  # oldest, still running
    finished = []
    for t in range(1, 9):
        rid = store.create(_rollout(), now=t, previous={"n1": b'{"old": 1}'})
        store.save(
            rid,
            replace(
                _rollout(),
                state=State.HALTED,
                wave=1,
                progress={"n2": NodeProgress(NodeStatus.FAILED, 1.0, "x")},
            ),
            now=t,
        )
        store.note_revert(rid, None, None)
        finished.append(rid)
    assert store.active_id() == in_flight
    assert store.prune(3) == 5
    kept = {rid for rid, *_ in store.list(100)}
    assert kept == {in_flight, *finished[-3:]}
    for table in (
        "rollout_waves",
        "rollout_progress",
        "rollout_events",
        "rollout_previous",
        "rollout_notes",
    ):
        ids = {r for (r,) in conn.execute(f"SELECT DISTINCT rollout_id FROM {table}")}
        assert ids <= kept, table
    assert {r for (r,) in conn.execute("SELECT DISTINCT rollout_id FROM rollout_progress")} == set(
        finished[-3:]
    )
    assert store.previous(in_flight) == {"n1": {"old": 1}}
    assert store.prune(3) == 0  # idempotent


def test_the_moves_a_step_reports_are_what_is_written_and_read_back(tmp_path) -> None:
    """A rollout the state machine stepped says which entries moved from which progress; the store writes
    those (no comparison of the wave) and a new connection reads back exactly the stepped rollout."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    store = RolloutStore(conn)
    r = _rollout()
    rid = store.create(r, now=0)
    expected = dict.fromkeys(("n1", *REST), 2)
    good, bad = m.Observation(2, True, True), m.Observation(2, True, False)
    rounds = [
        (0, {}),
        (1, {"n1": good}),
        (70, {"n1": good}),
        (71, {}),  # the canary passes; the rest is published
        (72, {n: good for n in REST[:100]}),
        (73, {**{n: good for n in REST[:100]}, "n150": bad}),
        (74, {n: good for n in REST[:50]}),
        (150, {n: good for n in REST}),
    ]
    before = None
    for t, reports in rounds:
        new, actions = m.step(r, t, reports, expected, None)
        if actions:
            new = m.published(new, t)
        store.save(rid, new, now=t, before=r)
        rows = _progress_rows(conn, rid)
        if before is not None and new.index is not None and new.index.base is r.progress:
            assert len(rows) - before <= len({id(p) for p in new.index.moved.values()}), (
                t
            )  # a row per moved value
        before, r = len(rows), new
        assert _fresh_read(path, rid) == r, t
    # The 50 that kept reporting since 72 are done soaking; the others started again at 150; n150 failed.
    assert r.state is State.SOAKING and r.counts() == {
        "pending": 0,
        "applied": 147,
        "healthy": 50,
        "failed": 1,
    }
