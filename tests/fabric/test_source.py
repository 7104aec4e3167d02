"""Sources: work trees and git revisions list the same blob ids; symlinks and submodules are refused."""

from __future__ import annotations

import subprocess

import pygit2
import pytest

from treadle.errors import UsageError
from treadle.fabric import GitRevisionSource, WorkTreeSource, blob_id, render_fabric


def test_blob_id_is_gits(fabric):
    fabric.commit()
    expected = subprocess.run(
        ["git", "hash-object", "fabric.yaml"], cwd=fabric.root, capture_output=True, text=True
    ).stdout.strip()
    assert blob_id((fabric.root / "fabric.yaml").read_bytes()) == expected


def test_work_tree_and_revision_list_the_same_files_and_blobs(fabric):
    fabric.commit()
    assert WorkTreeSource(fabric.root).entries() == GitRevisionSource(fabric.root, "HEAD").entries()


def test_revision_accepts_any_rev_spec_and_an_open_repository(fabric):
    first = fabric.commit("one")
    fabric.commit("two")
    repo = pygit2.Repository(str(fabric.root))
    assert GitRevisionSource(repo, "HEAD~1").commit == first
    assert GitRevisionSource(fabric.root, first[:10]).commit == first
    assert WorkTreeSource(fabric.root).commit is None


def test_unknown_revision_is_a_usage_error(fabric):
    fabric.commit()
    with pytest.raises(UsageError, match="no such revision"):
        GitRevisionSource(fabric.root, "no-such-branch")


def test_git_revision_with_a_symlink_is_refused(fabric):
    (fabric.root / "profiles" / "alias.yaml").symlink_to("base.yaml")
    fabric.commit()
    result = render_fabric(GitRevisionSource(fabric.root, "HEAD"))
    assert not result.ok
    assert [(d.file, d.code) for d in result.diagnostics] == [("profiles/alias.yaml", "symlink")]


def test_git_revision_with_a_submodule_is_refused(fabric, tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=sub, check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=x",
            "-c",
            "user.email=x@x",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        cwd=sub,
        check=True,
    )
    fabric.commit()
    fabric.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "vendor")
    fabric.commit("add submodule")
    result = render_fabric(GitRevisionSource(fabric.root, "HEAD"))
    codes = {(d.file, d.code) for d in result.diagnostics}
    assert ("vendor", "submodule") in codes
    assert (".gitmodules", "submodule") in codes


def test_work_tree_skips_git_and_cache_directories(fabric):
    fabric.commit()
    fabric.write("__pycache__/x.pyc", "junk")
    assert not any(
        p.startswith((".git/", "__pycache__/")) for p in WorkTreeSource(fabric.root).entries()
    )


def test_work_tree_of_a_missing_directory_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a directory"):
        WorkTreeSource(tmp_path / "nope")


def test_a_fabric_in_a_subdirectory_of_a_repository_is_read_from_that_directory(fabric, tmp_path):
    outer = fabric.root.parent
    subprocess.run(["git", "init", "-q"], cwd=outer, check=True)
    subprocess.run(["git", "add", "-A"], cwd=outer, check=True)
    subprocess.run(
        ["git", "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "x"],
        cwd=outer,
        check=True,
    )
    source = GitRevisionSource(fabric.root, "HEAD")
    assert source.prefix == "fabric/"
    assert source.entries() == WorkTreeSource(fabric.root).entries()
    assert render_fabric(source).ok


def _changed(repo: pygit2.Repository, old: str, new: str) -> set[str]:
    diff = repo.diff(repo.get(old).peel(pygit2.Tree), repo.get(new).peel(pygit2.Tree))
    return {p for d in diff.deltas for p in (d.old_file.path, d.new_file.path)}


def test_a_revision_derived_from_an_earlier_one_lists_what_a_walk_lists(fabric):
    import shutil

    first = fabric.commit("one")
    edits = [
        lambda: fabric.write(
            "sites/s1/c1/nodes/n1.yaml", "kind: Node\naddress: 127.0.0.9\n"
        ),  # modified
        lambda: fabric.write(
            "sites/s1/c1/nodes/n9.yaml", "kind: Node\naddress: 127.0.0.19\n"
        ),  # added
        lambda: (fabric.root / "sites/s1/c1/nodes/n9.yaml").unlink(),  # deleted
        lambda: fabric.write("templates/deep/x.j2", "x"),  # a new directory
        lambda: shutil.rmtree(fabric.root / "templates/deep"),  # a directory gone
    ]
    repo = pygit2.Repository(str(fabric.root))
    base, before = GitRevisionSource(repo, first), first
    for edit in edits:
        edit()
        head = fabric.commit("edit")
        derived = GitRevisionSource.derived(base, head, _changed(repo, before, head))
        assert derived is not None and derived.commit == head
        assert derived.entries() == GitRevisionSource(repo, head).entries()
        assert derived.read("fabric.yaml") == GitRevisionSource(repo, head).read("fabric.yaml")
        base, before = derived, head


def test_a_derived_revision_meeting_a_symlink_or_a_directory_walks_the_tree_instead(fabric):
    first = fabric.commit("one")
    repo = pygit2.Repository(str(fabric.root))
    (fabric.root / "profiles" / "alias.yaml").symlink_to("base.yaml")
    head = fabric.commit("symlink")
    assert (
        GitRevisionSource.derived(GitRevisionSource(repo, first), head, _changed(repo, first, head))
        is None
    )
    assert (
        GitRevisionSource.derived(GitRevisionSource(repo, first), head, {"sites"}) is None
    )  # a directory now


def test_changed_paths_names_what_a_libgit2_tree_diff_names(fabric):
    """Added, deleted, modified, a file turned into a directory, a mode change, a symlink: the same set as pygit2's diff."""
    import os
    import shutil

    from treadle.fabric.source import changed_paths

    repo_first = fabric.commit("one")
    repo = pygit2.Repository(str(fabric.root))
    edits = [
        lambda: fabric.write("sites/s1/c1/nodes/n1.yaml", "kind: Node\naddress: 127.0.0.9\n"),
        lambda: fabric.write("templates/deep/er/x.j2", "x"),
        lambda: shutil.rmtree(fabric.root / "templates/deep"),
        lambda: (fabric.root / "templates/x.j2").write_text("x"),
        lambda: (
            (fabric.root / "templates/x.j2").unlink(),
            fabric.write("templates/x.j2/inner.j2", "y"),
        ),
        lambda: os.chmod(fabric.root / "fabric.yaml", 0o755),
        lambda: (fabric.root / "profiles" / "alias.yaml").symlink_to("base.yaml"),
        lambda: (fabric.root / "sites/s1/c1/nodes/n1.yaml").unlink(),
    ]
    before = repo_first
    for edit in edits:
        edit()
        head = fabric.commit("edit")
        assert changed_paths(repo, before, head) == _changed(repo, before, head)
        assert changed_paths(repo, repo_first, head) == _changed(repo, repo_first, head)
        before = head
