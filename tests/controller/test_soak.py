"""A controller runs for months: what it opens per commit it closes or reuses, and its mirror stays small.

The controller is built in-process from a config (real bare repository, real
SQLite, real signing) and driven through 200 commits, each cycle on a
new thread as anyio's worker threads come and go in the daemon (an idle worker
exits after ten seconds, so at production commit rates every cycle meets a new
thread). Commits are written into the upstream repository with pygit2, which
is much faster than the git CLI. Open descriptors are read from /proc/self/fd.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pygit2
import pytest

from treadle.daemon import config as config_mod
from treadle.daemon import process as daemon

COMMITS = 200
WARM_UP = 20
MAX_PACKS = 4


def open_descriptors(root: Path) -> Counter[str]:
    """This process's open descriptors by kind: sqlite (database, WAL) and pack (the mirror's packs) of the
    controller under ``root``, other (everything else but other tests' databases and packs).

    Databases and packs are counted under ``root`` only: in a full test run, controllers of earlier tests
    may still hold theirs, and this test is about the controller it builds.
    """
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used
        kind = (
            "sqlite"
            if ".sqlite3" in target
            else "pack"
            if "mirror.git/objects/pack/" in target
            else "other"
        )
        if kind == "other" or target.startswith(f"{root}/"):
            kinds[kind] += 1
    return kinds


def live_objects() -> int:
    """Objects the cyclic collector tracks, frozen ones included (a render freezes its survivors)."""
    return len(gc.get_objects()) + gc.get_freeze_count()


def on_new_thread(fn: Any) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


class Upstream:
    """Commits one node file's new content straight into the bare repository the controller fetches from."""

    def __init__(self, bare: Path, path: str, text: str) -> None:
        self.repo, self.path, self.text = pygit2.Repository(str(bare)), path, text

    def commit(self, i: int) -> str:
        head = self.repo.references["refs/heads/main"].peel(pygit2.Commit)
        index = pygit2.Index()
        index.read_tree(head.tree)
        blob = self.repo.create_blob(
            self.text.replace("labels: {", f"labels: {{soak: v{i}, ", 1).encode()
        )
        index.add(pygit2.IndexEntry(self.path, blob, pygit2.enums.FileMode.BLOB))
        sig = pygit2.Signature("Soak", "soak@example.com")
        return str(
            self.repo.create_commit(
                "refs/heads/main", sig, sig, f"soak {i}", index.write_tree(self.repo), [head.id]
            )
        )


@pytest.fixture
def controller(make_fabric, signing_key: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    repo, fabric = make_fabric(1, 2, 3)
    node = fabric.nodes[0]
    doc = {
        "repository": str(repo.bare),
        "state_dir": "state",
        "publish_dir": "publish",
        "signing_key": str(signing_key),
        "listen": "127.0.0.1:0",
        "retention": {"mirror_max_packs": MAX_PACKS, "rollouts_kept": 5, "history_kept": 20},
    }
    ctl = daemon.build(config_mod.from_dict(doc, tmp_path / "controller.toml"))
    upstream = Upstream(
        repo.bare, node.path.relative_to(repo.work).as_posix(), node.path.read_text()
    )
    yield ctl, upstream, tmp_path
    ctl.close()


def test_two_hundred_commits_leave_descriptors_threads_memory_and_database_handles_flat(
    controller,
) -> None:  # type: ignore[no-untyped-def]
    ctl, upstream, root = controller
    state = ctl.pipeline.state
    samples, objects = [], []
    for i in range(COMMITS):
        head = upstream.commit(i)
        outcome = on_new_thread(ctl._cycle)
        assert outcome is not None and outcome.result == "deployed" and outcome.commit == head, (
            outcome
        )
        assert (
            on_new_thread(state.deployed_commit) == head
        )  # the API reads on threads of its own too
        if i >= WARM_UP:
            samples.append((open_descriptors(root), threading.active_count(), state.handles))
            objects.append(live_objects())
    first, last = samples[0], samples[-1]
    assert first[0]["sqlite"] > 0 and first[0]["pack"] > 0, (
        first
    )  # the scan sees this controller's files
    # Pack files come and go between repacks (at most MAX_PACKS + 1 of them); nothing else moves.
    for fds, threads, handles in samples:
        assert fds["pack"] <= MAX_PACKS + 1, fds
        assert fds["sqlite"] <= first[0]["sqlite"] and fds["other"] <= first[0]["other"], (
            fds,
            first[0],
        )
        # At most: an idle worker thread an earlier test left may exit meanwhile, none may be added.
        assert threads <= first[1] and handles <= 2, (threads, handles)
    assert last[0]["sqlite"] == first[0]["sqlite"]
    assert ctl.pipeline.source.pack_count() <= MAX_PACKS + 1
    # Memory: each render's garbage is collected and the parse cache holds one revision's files, so the
    # objects alive do not grow with the commits (before: ~2,000 more per commit, frozen by the render).
    assert max(objects) - objects[0] < 20 * (COMMITS - WARM_UP), (objects[0], max(objects))
    assert len(ctl.pipeline.renderer.cache._parsed) <= 30
    # History on disk: the retention settings of the config above.
    assert len(state.deployments(limit=1000)) == 20
    assert len(ctl.pipeline.rollouts.documents(limit=1000)) <= 5 + 1
    published = [p for p in ctl.pipeline.store.root.rglob("*") if p.is_file()]
    assert sorted(p.parent.name for p in published) == sorted(
        ctl.pipeline.store.nodes()
    )  # one envelope per node, no temp file
    assert len(published) == 6


def test_closing_the_controller_closes_every_database_and_pack_descriptor(controller) -> None:  # type: ignore[no-untyped-def]
    ctl, upstream, root = controller
    before = open_descriptors(root)
    for i in range(3):
        upstream.commit(i)
        on_new_thread(ctl._cycle)
    ctl.close()
    after = open_descriptors(root)
    assert before["sqlite"] > 0, before  # the scan sees this controller's database
    assert after["sqlite"] == 0 and after["pack"] == 0, after
    assert after["other"] <= before["other"]
