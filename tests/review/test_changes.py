"""Per-resource changes between two manifests: what counts as a change, and the diff shown."""

from __future__ import annotations

from treadle.review.changes import diff_manifests


def _manifest(resources, health=(), lifecycle="production", commit="a" * 40, labels=None):
    return {
        "metadata": {
            "node": "n1",
            "site": "s",
            "cluster": "c",
            "address": "10.0.0.1",
            "fabric": "f",
            "commit": commit,
            "generation": 0,
            "issued": None,
            "expires": None,
            "lifecycle": lifecycle,
            "labels": labels or {},
            "wave": None,
        },
        "resources": list(resources),
        "health": list(health),
    }


def _file(path, content, mode="0644"):
    return {
        "type": "file",
        "path": path,
        "ensure": "present",
        "content": content,
        "sha256": str(hash(content)),
        "mode": mode,
        "owner": None,
        "group": None,
        "notify": [],
        "requires": [],
    }


def test_a_new_commit_alone_is_no_change():
    assert (
        diff_manifests(
            _manifest([_file("/etc/a", "x\n")]),
            _manifest([_file("/etc/a", "x\n")], commit="b" * 40),
        )
        == ()
    )


def test_file_content_is_diffed_as_text_lines():
    [change] = diff_manifests(
        _manifest([_file("/etc/a", "one\ntwo\n")]), _manifest([_file("/etc/a", "one\n2\n")])
    )
    assert change.rid == "file:/etc/a" and change.summary == "content changed"
    assert "-two\n+2\n" in change.diff and "--- a/etc/a" in change.diff


def test_a_changed_mode_is_a_field_diff_with_a_short_summary():
    [change] = diff_manifests(
        _manifest([_file("/etc/a", "x")]), _manifest([_file("/etc/a", "x", mode="0600")])
    )
    assert change.summary == "mode 0644 -> 0600"
    assert '-"mode": "0644"\n+"mode": "0600"\n' in change.diff


def test_added_and_removed_resources_and_health_checks_are_named():
    pkg = {"type": "package", "name": "vim", "ensure": "present", "version": None, "requires": []}
    check = {"name": "sshd", "type": "tcp", "port": 22, "host": "127.0.0.1", "timeout_s": 5}
    changes = diff_manifests(_manifest([pkg]), _manifest([], health=[check]))
    assert [(c.rid, c.change) for c in changes] == [
        ("health:sshd", "added"),
        ("package:vim", "removed"),
    ]


def test_a_lifecycle_and_a_label_change_are_node_metadata_changes():
    [change] = diff_manifests(
        _manifest([], labels={"rack": "r1"}),
        _manifest([], lifecycle="draining", labels={"rack": "r2"}),
    )
    assert change.rid == "node:metadata"
    assert change.fields == ("labels.rack", "lifecycle")
    assert change.summary == "labels.rack r1 -> r2, lifecycle production -> draining"


def test_content_without_final_newline_is_marked():
    [change] = diff_manifests(_manifest([_file("/etc/a", "x")]), _manifest([_file("/etc/a", "y")]))
    assert "\\ No newline at end of file" in change.diff
