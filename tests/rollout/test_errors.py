"""Every way a rollout operation fails raises a typed error of the controller's tree (treadle.errors).

Real SQLite throughout: a file that is not a database, a database opened read-only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from treadle.errors import (
    NoSuchRolloutError,
    PolicyError,
    RolloutError,
    StoreError,
    TransitionError,
    TreadleError,
)
from treadle.rollout import machine
from treadle.rollout.machine import Observation, State
from treadle.rollout.observe import Target
from treadle.rollout.policy import from_doc
from treadle.rollout.service import RolloutService
from treadle.rollout.store import RolloutStore

SHA = "d" * 40


class NobodyAnswers:
    """A health source that is never asked: these tests only read and act."""

    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        raise AssertionError("not asked")


def _rollout(state: State = State.PENDING) -> machine.Rollout:
    wave = machine.Wave("all", ("n1", "n2"), soak_s=0, timeout_s=60, allowed_failures=0)
    return replace(machine.Rollout(commit=SHA, waves=(wave,)), state=state)


def test_a_store_file_that_is_not_a_database_is_a_store_error_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is no SQLite database, only text long enough to have a header" * 20)
    with pytest.raises(StoreError, match="state.db") as raised:
        RolloutStore(sqlite3.connect(db))
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(StoreError, match="state.db"):
        RolloutService(db, NobodyAnswers())


def test_writes_to_a_read_only_database_are_store_errors_and_reads_still_work(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    writable = RolloutStore(sqlite3.connect(db))
    writable.create(_rollout(State.COMPLETE), now=0.5)  # a finished one, for prune to delete
    rid = writable.create(_rollout(), now=1.0)
    writable.close()
    store = RolloutStore(
        sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    )  # the tables exist: nothing to write
    assert store.get(rid) == _rollout()
    with pytest.raises(StoreError, match="readonly") as raised:
        store.create(_rollout(), now=2.0)
    assert "create" in str(raised.value) and isinstance(
        raised.value.__cause__, sqlite3.OperationalError
    )
    with pytest.raises(StoreError, match="save"):
        store.save(rid, replace(_rollout(), state=State.ABORTED), now=3.0)
    with pytest.raises(StoreError, match="prune"):
        store.prune(0)


def test_a_closed_store_raises_a_store_error_not_sqlite3s(tmp_path: Path) -> None:
    store = RolloutStore(sqlite3.connect(tmp_path / "state.db"))
    store.close()
    with pytest.raises(StoreError):
        store.latest_id()


def test_no_such_rollout_is_a_typed_error_and_not_a_key_error(tmp_path: Path) -> None:
    svc = RolloutService(tmp_path / "state.db", NobodyAnswers())
    with pytest.raises(NoSuchRolloutError, match="no rollout 7") as raised:
        svc.document(7)
    assert (
        raised.value.rid == 7
        and isinstance(raised.value, RolloutError)
        and not isinstance(raised.value, KeyError)
    )
    with pytest.raises(NoSuchRolloutError):
        svc.act(7, "approve")


def test_an_action_that_does_not_apply_is_a_transition_error_of_the_tree(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    svc = RolloutService(db, NobodyAnswers())
    rid = RolloutStore(sqlite3.connect(db)).create(_rollout(State.COMPLETE), now=1.0)
    with pytest.raises(TransitionError, match="complete") as raised:
        svc.act(rid, "approve")
    assert isinstance(raised.value, RolloutError) and isinstance(raised.value, TreadleError)
    assert not isinstance(
        raised.value, ValueError
    )  # no caller relies on it: every one names TransitionError
    with pytest.raises(
        ValueError, match="unknown action"
    ):  # a bad action name stays a ValueError (the API's 404)
        svc.act(rid, "explode")


def test_a_meaningless_rollout_policy_is_a_policy_error_of_the_tree() -> None:
    with pytest.raises(PolicyError, match="time zone") as raised:
        from_doc(
            {
                "waves": [{"name": "w"}],
                "windows": [
                    {"days": ["mon"], "start": "01:00", "end": "02:00", "timezone": "Mars/Olympus"}
                ],
            }
        )
    assert isinstance(raised.value, TreadleError) and not isinstance(raised.value, ValueError)
    with pytest.raises(PolicyError, match="unique"):
        from_doc({"waves": [{"name": "w"}, {"name": "w"}]})
