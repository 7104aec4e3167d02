"""The state dir: atomic writes, and corrupt files set aside rather than crash-looped on."""

from __future__ import annotations

import json
import os

import pytest

from treadle_agent.contract.files import write_atomic
from treadle_agent.contract.manifest import digest
from treadle_agent.errors import StateError
from treadle_agent.state import ENVELOPE, STATE, StateStore


def test_saved_state_loads_back_and_describes_its_envelope(tmp_path):
    store = StateStore(tmp_path / "state")
    store.load()
    store.save(b'{"e":1}', 7, '"tag"', "t" * 64)
    loaded = StateStore(tmp_path / "state").load()
    assert loaded.envelope == b'{"e":1}' and loaded.generation == 7 and loaded.etag == '"tag"'
    assert loaded.envelope_intact() and loaded.trust_root_sha256 == "t" * 64
    assert oct((tmp_path / "state" / ENVELOPE).stat().st_mode & 0o777) == "0o600"


def test_envelope_newer_than_the_state_file_is_not_taken_as_verified(tmp_path):
    """A crash between the two writes: the state file's digest names the previous envelope."""
    store = StateStore(tmp_path)
    store.save(b"old", 1, None, "t")
    write_atomic(tmp_path / ENVELOPE, b"new")
    assert not store.load().envelope_intact()


def test_atomic_write_leaves_no_temp_file_and_replaces_whole(tmp_path):
    target = tmp_path / "f"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two" and os.listdir(tmp_path) == ["f"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "d" / "f"
    with pytest.raises(StateError, match="cannot write"):
        write_atomic(target, b"x")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        json.dumps(
            {"generation": -1, "etag": None, "envelope_sha256": None, "trust_root_sha256": None}
        ).encode(),
    ],
)
def test_corrupt_state_file_is_moved_aside_with_a_log_line(tmp_path, content, caplog):
    (tmp_path / STATE).write_bytes(content)
    store = StateStore(tmp_path, clock=lambda: 1234)
    assert store.load().generation == 0
    assert (tmp_path / f"{STATE}.corrupt-1234").read_bytes() == content
    assert not (tmp_path / STATE).exists()
    assert "state.corrupt" in caplog.text


def test_envelope_digest_is_recorded(tmp_path):
    store = StateStore(tmp_path)
    store.save(b"abc", 1, None, "t")
    assert json.loads((tmp_path / STATE).read_text())["envelope_sha256"] == digest(b"abc")


def test_only_the_newest_copies_of_a_corrupt_file_are_kept(tmp_path):
    clock = [1000.0]
    store = StateStore(tmp_path, clock=lambda: clock[0])
    for i in range(10):  # a disk that corrupts the state file at every start
        (tmp_path / STATE).write_bytes(b"{not json")
        clock[0] = 1000.0 + i
        store.load()
    assert sorted(p.name for p in tmp_path.glob(f"{STATE}.corrupt-*")) == [
        f"{STATE}.corrupt-{t}" for t in (1007, 1008, 1009)
    ]
