"""The generations a rollout's wave expects are read once per change of its records, not once per tick."""

from __future__ import annotations

from pathlib import Path

from treadle.daemon.rollouts import RolloutExecutor
from treadle.daemon.state import NodeRecord, StateDB


def _record(name: str, generation: int) -> NodeRecord:
    return NodeRecord(
        name, generation, generation - 1, "sha256:" + "0" * 64, "c" * 40, 0.0, "active"
    )


def _executor(state: StateDB) -> RolloutExecutor:
    """Only the state database matters to ``expected``: the rest of the executor is never reached here."""
    ex = RolloutExecutor.__new__(RolloutExecutor)
    ex.state = state
    ex._expected = None
    return ex


def test_expected_is_the_same_answer_until_a_record_of_the_wave_changes(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state.db")
    state.reserve([_record("a", 5), _record("b", 7), _record("outside", 9)])
    ex = _executor(state)
    wave = ("a", "b", "unknown")
    first = ex.expected(wave)
    assert first == {"a": 5, "b": 7}
    assert ex.expected(wave) is first
    assert ex.expected(tuple(wave)) is first  # the same nodes in another object
    state.reserve([_record("outside", 10)])
    assert ex.expected(wave) is first  # a node outside the wave changed
    state.reserve([_record("b", 8)])
    assert ex.expected(wave) == {"a": 5, "b": 8}
    state.reserve([_record("unknown", 2)])
    assert ex.expected(wave) == {"a": 5, "b": 8, "unknown": 2}
    assert ex.expected(("a",)) == {"a": 5}


def test_while_no_record_changes_the_wave_is_not_read_again(tmp_path: Path) -> None:
    state = StateDB(tmp_path / "state.db")
    state.reserve([_record("a", 5)])
    ex = _executor(state)
    wave = ("a",)
    first = ex.expected(wave)
    reads: list[int] = []
    records = state.records

    def counted() -> object:
        reads.append(1)
        return records()

    state.records = counted  # type: ignore[method-assign]
    assert ex.expected(wave) is first and not reads
    state.reserve([_record("a", 6)])
    assert ex.expected(wave) == {"a": 6} and reads
