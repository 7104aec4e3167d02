"""source: mirror any URL git serves, diff commits, and notice a local push within a second."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from treadle.daemon.fetch import GitSource, local_git_dir, watch_refs
from treadle.errors import SourceError


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_fetch_follows_the_branch_from_a_path_or_file_url(
    repo, tmp_path: Path, as_url: bool
) -> None:
    repo.write("a.txt", "1\n")
    first = repo.commit_and_push("first")
    url = f"file://{repo.bare}" if as_url else str(repo.bare)
    source = GitSource(url, "main", tmp_path / "state")
    assert source.fetch() == first
    repo.write("a.txt", "2\n")
    second = repo.commit_and_push("second")
    assert source.fetch() == second
    assert GitSource(url, "main", tmp_path / "state").head() == second  # reopened, not recloned


def test_forced_update_upstream_is_fetched_for_the_gate_to_judge(repo, tmp_path: Path) -> None:
    repo.write("a.txt", "1\n")
    repo.commit_and_push("first")
    source = GitSource(str(repo.bare), "main", tmp_path / "state")
    source.fetch()
    repo.write("a.txt", "rewritten\n")
    rewritten = repo.amend()
    repo.push(force=True)
    assert source.fetch() == rewritten


def test_changed_paths_lists_added_modified_deleted_and_renamed_files(repo, tmp_path: Path) -> None:
    repo.write("keep.txt", "k\n")
    repo.write("mod.txt", "1\n")
    repo.write("del.txt", "d\n")
    repo.write("old.txt", "o\n")
    old = repo.commit_and_push("first")
    repo.write("mod.txt", "2\n")
    (repo.work / "del.txt").unlink()
    repo.git("mv", "old.txt", "new.txt")
    repo.write("add/x.txt", "x\n")
    new = repo.commit_and_push("second")
    source = GitSource(str(repo.bare), "main", tmp_path / "state")
    source.fetch()
    assert source.changed_paths(old, new) == {
        "mod.txt",
        "del.txt",
        "old.txt",
        "new.txt",
        "add/x.txt",
    }


def test_missing_branch_and_unreachable_repository_are_source_errors(repo, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="branch 'main' not found"):
        GitSource(str(repo.bare), "main", tmp_path / "s1").fetch()
    with pytest.raises(SourceError, match="fetch"):
        GitSource(str(tmp_path / "does-not-exist.git"), "main", tmp_path / "s2").fetch()


def test_local_git_dir_is_found_for_bare_and_work_repositories_but_not_remote_urls(repo) -> None:
    assert local_git_dir(str(repo.bare)) == repo.bare
    assert local_git_dir(f"file://{repo.work}") == repo.work / ".git"
    assert local_git_dir("https://example.com/fabric.git") is None


def test_a_push_to_a_local_repository_wakes_the_watcher(repo) -> None:
    # How fast is measured by bench/controller.py (push -> published); here only that it happens.
    repo.write("a.txt", "1\n")
    repo.commit_and_push("first")
    seen: list[float] = []

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_refs, repo.bare, lambda: seen.append(anyio.current_time()), stop)
            await anyio.sleep(0.3)  # let the watcher start
            repo.write("a.txt", "2\n")
            await anyio.to_thread.run_sync(repo.commit_and_push)
            with anyio.move_on_after(10):
                while not seen:
                    await anyio.sleep(0.01)
            stop.set()
            assert seen

    anyio.run(main)


def test_hooks_in_the_mirror_never_run(repo, tmp_path: Path) -> None:
    repo.write("a.txt", "1\n")
    repo.commit_and_push("first")
    source = GitSource(str(repo.bare), "main", tmp_path / "state")
    source.fetch()
    marker = tmp_path / "hook-ran"
    for name in ("reference-transaction", "post-checkout", "post-merge", "pre-auto-gc"):
        hook = source.path / "hooks" / name
        hook.parent.mkdir(exist_ok=True)
        hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
        hook.chmod(0o755)
    repo.write("a.txt", "2\n")
    head = repo.commit_and_push("second")
    assert source.fetch() == head and not marker.exists()


def test_the_mirror_is_repacked_when_it_holds_more_packs_than_the_limit(
    repo, tmp_path: Path
) -> None:
    source = GitSource(str(repo.bare), "main", tmp_path / "state", max_packs=3)
    heads = []
    for i in range(10):  # one pack file per fetch that brings a commit
        repo.write("a.txt", f"{i}\n")
        heads.append(repo.commit_and_push(f"c{i}"))
        assert source.fetch() == heads[-1]
        assert source.pack_count() <= 4
    packs = sorted((source.path / "objects" / "pack").glob("*.pack"))
    # This mirror's descriptors only: the process may hold other tests' mirrors (under pytest-xdist, any of them).
    pack_dir = str(source.path / "objects" / "pack")
    held = [
        os.readlink(f"/proc/self/fd/{fd}")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
        and os.readlink(f"/proc/self/fd/{fd}").startswith(pack_dir)
    ]
    assert all(Path(p).exists() for p in held), held  # no descriptor kept on a deleted pack
    assert len(packs) <= 4
    assert source.changed_paths(heads[0], heads[-1]) == {"a.txt"}  # every commit still readable
    source.close()


def test_only_the_newest_revert_branches_are_kept_in_the_mirror(repo, tmp_path: Path) -> None:
    import pygit2

    repo.write("a.txt", "1\n")
    repo.commit_and_push("first")
    source = GitSource(str(repo.bare), "main", tmp_path / "state")
    source.fetch()
    mirror = source.repo
    head = mirror.references[source.tracking_ref].peel(pygit2.Commit)
    sig = pygit2.Signature("Treadle", "treadle@localhost")
    for i in range(5):
        sig = pygit2.Signature("Treadle", "treadle@localhost", 1_700_000_000 + i, 0)
        commit = mirror.create_commit(None, sig, sig, f"revert {i}", head.tree.id, [head.id])
        mirror.references.create(f"refs/heads/treadle/revert-{i:012x}", commit)
    gone = source.prune_revert_branches(2)
    assert sorted(gone) == [f"refs/heads/treadle/revert-{i:012x}" for i in range(3)]
    assert sorted(n for n in mirror.references if "revert-" in n) == [
        f"refs/heads/treadle/revert-{i:012x}" for i in (3, 4)
    ]
    assert source.head() == str(head.id)


def test_without_the_git_command_the_mirror_still_fetches_and_gc_is_retried_only_after_more_packs(
    repo, tmp_path: Path, monkeypatch, caplog
) -> None:
    source = GitSource(str(repo.bare), "main", tmp_path / "state", max_packs=2)
    for i in range(6):
        repo.write("a.txt", f"{i}\n")
        head = repo.commit_and_push(f"c{i}")
        with monkeypatch.context() as m:
            m.setenv(
                "PATH", str(tmp_path / "no-git-here")
            )  # only the controller's fetch misses git
            assert source.fetch() == head
    assert source.pack_count() == 6
    # Tried at 3 packs, then only once another max_packs had come (at 5), not at every fetch.
    assert [r.getMessage() for r in caplog.records].count("mirror.gc_failed") == 2


def test_fetches_from_a_local_upstream_leave_no_pack_locked_and_nothing_loose(
    repo, tmp_path: Path
) -> None:
    # git fetch-pack locks the pack it writes (a .keep file); a lock left behind would keep git gc from ever
    # folding that pack, so the mirror would grow one pack per push for good.
    source = GitSource(str(repo.bare), "main", tmp_path / "state")
    for i in range(3):
        repo.write("a.txt", f"{i}\n")
        head = repo.commit_and_push(f"c{i}")
        assert source.fetch() == head
    pack_dir = source.path / "objects" / "pack"
    assert source.pack_count() == 3
    assert not list(pack_dir.glob("*.keep"))
    assert not list(
        (source.path / "objects").glob("[0-9a-f][0-9a-f]/*")
    )  # kept as packs, not unpacked loose


def test_a_git_that_refuses_the_local_upstream_falls_back_to_libgit2_and_says_so_once(
    repo, tmp_path: Path, monkeypatch, caplog
) -> None:
    # As a git that will not read a repository owned by another user (safe.directory) answers.
    fake = tmp_path / "bin" / "git"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\necho "fatal: detected dubious ownership in repository" >&2\nexit 128\n'
    )
    fake.chmod(0o755)
    source = GitSource(str(repo.bare), "main", tmp_path / "state")
    for i in range(3):
        repo.write("a.txt", f"{i}\n")
        head = repo.commit_and_push(f"c{i}")
        with monkeypatch.context() as m:
            m.setenv(
                "PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
            )  # only the controller's fetch sees it
            assert source.fetch() == head
    assert [r.getMessage() for r in caplog.records].count("mirror.fetch_pack_failed") == 1
