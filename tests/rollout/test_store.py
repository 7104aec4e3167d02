"""Rollouts in SQLite: the waves are written once, the moving part after every transition."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

from treadle.rollout import machine as m
from treadle.rollout.machine import NodeProgress, NodeStatus, State
from treadle.rollout.store import RolloutStore, to_doc, waves_doc

SHA = "e" * 40


def _rollout() -> m.Rollout:
    waves = (m.Wave("canary", ("n1",), soak_s=60, timeout_s=600, allowed_failures=0),
             m.Wave("rest", tuple(f"n{i}" for i in range(2, 200)), soak_s=60, timeout_s=600, allowed_failures=3))
    return m.Rollout(commit=SHA, waves=waves)


def test_waves_are_written_once_and_every_save_rewrites_only_the_moving_part(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    store = RolloutStore(conn)
    r = _rollout()
    rid = store.create(r, now=0)
    stored_waves = conn.execute("SELECT waves FROM rollout_waves WHERE rollout_id = ?", (rid,)).fetchall()
    for t in range(1, 4):
        r = replace(r, state=State.SOAKING, wave=1, progress={"n2": NodeProgress(NodeStatus.APPLIED, float(t))})
        store.save(rid, r, now=t)
    assert conn.execute("SELECT waves FROM rollout_waves WHERE rollout_id = ?", (rid,)).fetchall() == stored_waves
    assert json.loads(stored_waves[0][0]) == waves_doc(r)
    doc = json.loads(conn.execute("SELECT doc FROM rollouts WHERE id = ?", (rid,)).fetchone()[0])
    assert "waves" not in doc and doc["progress"] == [["applied", 3.0, "", ["n2"]]]
    assert store.get(rid) == r


def test_a_row_written_with_its_waves_inside_is_still_read(tmp_path) -> None:
    """Rows saved before the waves had their own table carry them in the doc; they load unchanged."""
    conn = sqlite3.connect(tmp_path / "state.db")
    store = RolloutStore(conn)
    r = _rollout()
    with conn:
        conn.execute("INSERT INTO rollouts (commit_sha, state, created_at, updated_at, doc) VALUES (?, ?, 0, 0, ?)",
                     (SHA, r.state.value, json.dumps({**to_doc(r), "waves": waves_doc(r)})))
    rid = store.active_id()
    assert rid is not None
    assert store.get(rid) == r and store.for_commit(SHA) == (rid, r) and store.list()[0][3] == r


def test_pruning_keeps_the_newest_rollouts_and_the_one_in_flight_with_their_rows(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    store = RolloutStore(conn)
    in_flight = store.create(_rollout(), now=0, previous={"n1": b'{"old": 1}'})  # oldest, still running
    finished = []
    for t in range(1, 9):
        rid = store.create(_rollout(), now=t, previous={"n1": b'{"old": 1}'})
        store.save(rid, replace(_rollout(), state=State.COMPLETE), now=t)
        store.note_revert(rid, None, None)
        finished.append(rid)
    assert store.active_id() == in_flight
    assert store.prune(3) == 5
    kept = {rid for rid, *_ in store.list(100)}
    assert kept == {in_flight, *finished[-3:]}
    for table in ("rollout_waves", "rollout_events", "rollout_previous", "rollout_notes"):
        ids = {r for (r,) in conn.execute(f"SELECT DISTINCT rollout_id FROM {table}")}
        assert ids <= kept, table
    assert store.previous(in_flight) == {"n1": {"old": 1}}
    assert store.prune(3) == 0  # idempotent
