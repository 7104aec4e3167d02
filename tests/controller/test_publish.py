"""The publish store: whole files only, crash leftovers cleaned, unsafe names refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadle.daemon.publish import TEMP_PREFIX, PublishStore, valid_node_name
from treadle.errors import StoreError


def test_batch_is_published_and_removed_nodes_disappear(tmp_path: Path) -> None:
    store = PublishStore(tmp_path / "pub")
    store.publish({"n1": b"one", "n2": b"two"})
    store.publish({"n1": b"ONE"}, remove=["n2"])
    assert store.read("n1") == b"ONE" and store.read("n2") is None
    assert (tmp_path / "pub/nodes/n1/manifest").read_bytes() == b"ONE"
    assert store.nodes() == ["n1"]


def test_temp_files_of_a_crashed_batch_are_removed_on_open_and_never_visible(
    tmp_path: Path,
) -> None:
    store = PublishStore(tmp_path / "pub")
    store.publish({"n1": b"old"})
    # A crash after step 1: a temp file beside the target, the target untouched.
    (tmp_path / "pub/nodes/n1" / f"{TEMP_PREFIX}999").write_bytes(b"half")
    assert store.read("n1") == b"old"
    reopened = PublishStore(tmp_path / "pub")
    assert os.listdir(tmp_path / "pub/nodes/n1") == ["manifest"]
    assert reopened.read("n1") == b"old"


def test_republishing_the_same_batch_is_idempotent(tmp_path: Path) -> None:
    store = PublishStore(tmp_path / "pub")
    store.publish({"a": b"1", "b": b"2"})
    store.publish({"a": b"1", "b": b"2"})
    assert [store.read("a"), store.read("b")] == [b"1", b"2"]


@pytest.mark.parametrize(
    "name", ["..", ".", "a/b", "../etc", ".hidden", "", "a\x00b", "x..y", "n\n"]
)
def test_unsafe_node_names_are_refused(tmp_path: Path, name: str) -> None:
    store = PublishStore(tmp_path / "pub")
    with pytest.raises(StoreError, match="cannot be a file name"):
        store.publish({name: b"x"})
    assert store.nodes() == []


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_every_accepted_name_is_one_path_segment_inside_the_store(name: str) -> None:
    if valid_node_name(name):
        resolved = (Path("/store/nodes") / name).resolve()
        assert resolved.parent == Path("/store/nodes") and "/" not in name


def test_prepared_nodes_stay_invisible_until_published_and_their_leftovers_are_cleaned(
    tmp_path: Path,
) -> None:
    store = PublishStore(tmp_path / "pub")
    assert store.prepare(["n1", "n2", "../evil", "n1"]) == 2
    assert store.nodes() == [] and store.read("n1") is None
    assert not (tmp_path / "evil").exists()
    store.publish({"n1": b"one"})
    assert store.nodes() == ["n1"] and os.listdir(tmp_path / "pub/nodes/n1") == ["manifest"]
    assert store.remove_temp_files() == 1  # n2's, left by a cycle that never published it
    assert os.listdir(tmp_path / "pub/nodes/n2") == []


def _etag(data: bytes) -> str:
    import hashlib

    return '"' + hashlib.sha256(data).hexdigest() + '"'


def test_the_index_follows_every_publication_and_removal(tmp_path: Path) -> None:
    store = PublishStore(tmp_path / "pub")
    index = store.index()
    assert index.load() == 0 and index.loaded
    store.publish({"n1": b"one", "n2": b"two"})
    assert index.etag("n1") == _etag(b"one") and index.etag("n2") == _etag(b"two")
    store.publish({"n1": b"ONE"}, remove=["n2"])
    assert index.etag("n1") == _etag(b"ONE") and index.etag("n2") is None
    assert index.read("n1") == b"ONE" and index.read("n2") is None


def test_a_loaded_index_answers_from_memory_only(tmp_path: Path) -> None:
    store = PublishStore(tmp_path / "pub")
    store.publish({"before": b"old"})
    index = PublishStore(tmp_path / "pub").index()  # a restart: the store already holds an envelope
    assert index.load() == 1 and index.etag("before") == _etag(b"old")
    # Written behind the store's back: a loaded index neither sees it nor reads the disk for it.
    (tmp_path / "pub/nodes/stray").mkdir()
    (tmp_path / "pub/nodes/stray/manifest").write_bytes(b"x")
    (tmp_path / "pub/nodes/before/manifest").write_bytes(b"changed")
    assert index.etag("stray") is None and index.etag("before") == _etag(b"old")


def test_before_its_load_the_index_reads_the_disk(tmp_path: Path) -> None:
    PublishStore(tmp_path / "pub").publish({"n1": b"one"})
    index = PublishStore(tmp_path / "pub").index()
    assert not index.loaded
    assert index.etag("n1") == _etag(b"one") and index.etag("missing") is None


def test_a_publication_during_the_load_wins_over_what_the_load_reads(tmp_path: Path) -> None:
    first = PublishStore(tmp_path / "pub")
    first.publish({"kept": b"old", "gone": b"old"})
    store = PublishStore(tmp_path / "pub")
    index = store.index()
    store.publish({"kept": b"new"}, remove=["gone"])
    # As if the load had read the files before those renames: older bytes on disk.
    first.publish({"kept": b"old", "gone": b"old"})
    assert index.load() == 0
    assert index.etag("kept") == _etag(b"new") and index.etag("gone") is None


def test_the_index_skips_unsafe_names_and_dot_entries_in_the_store(tmp_path: Path) -> None:
    store = PublishStore(tmp_path / "pub")
    for name in (".hidden", "x..y"):
        (tmp_path / "pub/nodes" / name).mkdir()
        (tmp_path / "pub/nodes" / name / "manifest").write_bytes(b"x")
    index = store.index()
    assert index.load() == 0 and index.etag("x..y") is None
