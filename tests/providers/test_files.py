"""file, directory and symlink resources applied into a real temp root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.providers import directory, file, manifest, snapshot, symlink
from treadle_agent.inventory import FILE_NAME


def statuses(report) -> dict[str, str]:
    return {r.id: r.status for r in report.results}


def test_second_apply_changes_nothing_on_disk_not_even_the_inventory(env):
    m = manifest(
        directory("/etc/app", mode="0750"),
        file("/etc/app/a.conf", "a\n", mode="0640"),
        file("/etc/app/b.conf", "b\n"),
        symlink("/etc/app/current", "a.conf"),
    )
    applier = env.applier()
    first = applier.apply(m)
    assert set(statuses(first).values()) == {"changed"}
    before, inv_before = snapshot(env.root), (env.state / FILE_NAME).stat()
    second = applier.apply(m)
    assert set(statuses(second).values()) == {"in_sync"}
    assert snapshot(env.root) == before
    inv_after = (env.state / FILE_NAME).stat()
    assert (inv_after.st_mtime_ns, inv_after.st_ino) == (inv_before.st_mtime_ns, inv_before.st_ino)
    # A fresh process (new Applier, inventory read from disk) agrees.
    assert set(statuses(env.applier().apply(m)).values()) == {"in_sync"}
    assert snapshot(env.root) == before


def test_written_file_has_content_mode_and_a_directory_created_for_it(env):
    env.applier().apply(manifest(file("/etc/deep/er/x.conf", "héllo\n", mode="0600")))
    p = env.root / "etc/deep/er/x.conf"
    assert p.read_bytes() == "héllo\n".encode()
    assert p.stat().st_mode & 0o7777 == 0o600
    assert (env.root / "etc/deep").stat().st_mode & 0o7777 == 0o755


def test_hand_edited_file_is_healed_and_reported(env):
    m = manifest(file("/etc/a.conf", "managed\n"))
    applier = env.applier()
    applier.apply(m)
    (env.root / "etc/a.conf").write_text("edited by hand\n")
    report = applier.apply(m)
    assert statuses(report) == {"file:/etc/a.conf": "healed"}
    assert report.results[0].message == "content differs"
    assert (env.root / "etc/a.conf").read_text() == "managed\n"
    assert report.counts()[("file", "in_sync")] == 1


def test_hand_edit_keeping_size_and_mtime_is_still_detected(env):
    m = manifest(file("/etc/a.conf", "aaaa\n"))
    applier = env.applier()
    applier.apply(m)
    p = env.root / "etc/a.conf"
    st = p.stat()
    with open(p, "r+b") as f:  # in place: same inode, same size
        f.write(b"bbbb\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert statuses(applier.apply(m)) == {"file:/etc/a.conf": "healed"}
    assert p.read_text() == "aaaa\n"


def test_report_policy_reports_drift_and_leaves_the_file_alone(env):
    m = manifest(file("/etc/a.conf", "managed\n", mode="0644"))
    env.applier().apply(m)
    p = env.root / "etc/a.conf"
    p.write_text("edited\n")
    p.chmod(0o600)
    reporter = env.applier("report")
    inv_before = (env.state / FILE_NAME).read_bytes()
    report = reporter.apply(m)
    assert statuses(report) == {"file:/etc/a.conf": "drifted"}
    assert report.results[0].message == "content differs; mode is 0600, want 0644"
    assert report.counts()[("file", "drifted")] == 1
    assert p.read_text() == "edited\n" and p.stat().st_mode & 0o7777 == 0o600
    assert (env.state / FILE_NAME).read_bytes() == inv_before
    assert statuses(reporter.apply(m)) == {"file:/etc/a.conf": "drifted"}


def test_report_policy_still_applies_what_the_manifest_changes(env):
    env.applier().apply(manifest(file("/etc/a.conf", "v1\n")))
    report = env.applier("report").apply(manifest(file("/etc/a.conf", "v2\n")))
    assert statuses(report) == {"file:/etc/a.conf": "changed"}
    assert (env.root / "etc/a.conf").read_text() == "v2\n"


def test_mode_drift_is_healed_in_place(env):
    m = manifest(file("/etc/a.conf", "x\n", mode="0640"))
    applier = env.applier()
    applier.apply(m)
    p = env.root / "etc/a.conf"
    ino = p.stat().st_ino
    p.chmod(0o666)
    report = applier.apply(m)
    assert (
        report.results[0].status == "healed"
        and report.results[0].message == "mode is 0666, want 0640"
    )
    assert p.stat().st_mode & 0o7777 == 0o640 and p.stat().st_ino == ino
    assert statuses(applier.apply(m)) == {"file:/etc/a.conf": "in_sync"}


def test_rewrite_keeps_unmanaged_mode_and_owner(env):
    p = env.root / "etc/a.conf"
    p.parent.mkdir()
    p.write_text("old\n")
    p.chmod(0o600)
    os.chown(p, 1234, 4321)  # numeric ids: no such user needs to exist
    env.applier().apply(manifest(file("/etc/a.conf", "new\n")))
    st = p.stat()
    assert p.read_text() == "new\n"
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1234, 4321)


def test_managed_owner_and_group_are_enforced(env):
    p = env.root / "etc/a.conf"
    p.parent.mkdir()
    p.write_text("same\n")
    os.chown(p, 1234, 4321)
    report = env.applier().apply(
        manifest(file("/etc/a.conf", "same\n", owner="root", group="root"))
    )
    assert report.results[0].message == "owner is uid 1234, want root; group is gid 4321, want root"
    assert (p.stat().st_uid, p.stat().st_gid) == (0, 0)


def test_unknown_owner_fails_that_file_only(env):
    report = env.applier().apply(
        manifest(
            file("/etc/a.conf", "a\n", owner="no-such-user-treadle"), file("/etc/b.conf", "b\n")
        )
    )
    assert statuses(report) == {"file:/etc/a.conf": "failed", "file:/etc/b.conf": "changed"}
    assert "unknown user 'no-such-user-treadle'" in report.results[0].message


def test_dropped_file_the_agent_created_is_removed_and_a_preexisting_one_is_left(env):
    (env.root / "etc").mkdir()
    (env.root / "etc/preexisting.conf").write_text("mine\n")
    applier = env.applier()
    applier.apply(
        manifest(
            file("/etc/created.conf", "agent\n"),
            file("/etc/preexisting.conf", "agent\n"),
            directory("/srv/data"),
            symlink("/etc/link", "created.conf"),
        )
    )
    report = applier.apply(manifest())
    removed = {r.id: r.message for r in report.removed}
    assert removed["file:/etc/created.conf"].startswith("removed")
    assert removed["file:/etc/preexisting.conf"].startswith("forgotten")
    assert not (env.root / "etc/created.conf").exists() and not (env.root / "etc/link").is_symlink()
    assert not (env.root / "srv/data").exists()
    assert (env.root / "etc/preexisting.conf").read_text() == "agent\n"
    assert applier.inventory.resources == {}
    # Forgotten means forgotten: a later manifest without it does not touch it.
    applier.apply(manifest())
    assert (env.root / "etc/preexisting.conf").exists()


def test_dropped_directory_with_foreign_files_is_left_in_place(env):
    applier = env.applier()
    applier.apply(manifest(directory("/srv/data")))
    (env.root / "srv/data/user-file").write_text("keep me\n")
    report = applier.apply(manifest())
    assert report.removed[0].message.startswith("left in place and forgotten")
    assert (env.root / "srv/data/user-file").read_text() == "keep me\n"


def test_absent_file_directory_and_symlink_are_removed(env):
    (env.root / "etc/old.d/sub").mkdir(parents=True)
    (env.root / "etc/old.d/sub/x").write_text("x")
    (env.root / "etc/gone.conf").write_text("x")
    (env.root / "etc/gone-link").symlink_to("gone.conf")
    m = manifest(
        directory("/etc/old.d", ensure="absent"),
        file("/etc/gone.conf", None, ensure="absent"),
        symlink("/etc/gone-link", None, ensure="absent"),
        file("/etc/never.conf", None, ensure="absent"),
    )
    applier = env.applier()
    report = applier.apply(m)
    assert statuses(report) == {
        "directory:/etc/old.d": "changed",
        "file:/etc/gone.conf": "changed",
        "symlink:/etc/gone-link": "changed",
        "file:/etc/never.conf": "in_sync",
    }
    assert sorted(p.name for p in (env.root / "etc").iterdir()) == []
    assert set(statuses(applier.apply(m)).values()) == {"in_sync"}


def test_symlink_is_retargeted_atomically_and_a_directory_in_its_way_fails(env):
    applier = env.applier()
    applier.apply(manifest(symlink("/etc/current", "v1")))
    report = applier.apply(manifest(symlink("/etc/current", "v2")))
    assert report.results[0].message == "points to v1, want v2"
    assert os.readlink(env.root / "etc/current") == "v2"
    (env.root / "etc/dir").mkdir()
    report = applier.apply(manifest(symlink("/etc/current", "v2"), symlink("/etc/dir", "x")))
    assert statuses(report)["symlink:/etc/dir"] == "failed"
    assert "is a directory" in report.results[1].message


def test_file_replaces_a_symlink_instead_of_writing_through_it(env, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("outside\n")
    (env.root / "etc").mkdir()
    (env.root / "etc/a.conf").symlink_to(outside)
    env.applier().apply(manifest(file("/etc/a.conf", "inside\n")))
    assert outside.read_text() == "outside\n"
    assert (
        not (env.root / "etc/a.conf").is_symlink()
        and (env.root / "etc/a.conf").read_text() == "inside\n"
    )


def test_manifest_sha256_not_matching_content_is_refused(env):
    bad = file("/etc/a.conf", "real content\n")
    bad["sha256"] = "0" * 64
    report = env.applier().apply(manifest(bad))
    assert (
        report.results[0].status == "failed"
        and "sha256 does not match" in report.results[0].message
    )
    assert not (env.root / "etc/a.conf").exists()


def test_leftover_temp_files_of_a_killed_run_are_removed_on_start(env):
    (env.root / "etc").mkdir()
    (env.root / "etc/.a.conf.treadle-tmp").write_text("half writt")
    (env.root / "etc/.unrelated.tmp").write_text("not ours")
    env.applier().apply(manifest(file("/etc/a.conf", "a\n")))
    assert sorted(p.name for p in (env.root / "etc").iterdir()) == [".unrelated.tmp", "a.conf"]


@pytest.mark.parametrize("garbage", ["{not json", "", '{"version": 99, "resources": {}}', "[]"])
def test_corrupt_inventory_is_set_aside_and_the_agent_starts_empty(env, garbage):
    env.state.mkdir()
    (env.state / FILE_NAME).write_text(garbage)
    applier = env.applier()
    assert applier.inventory.resources == {}
    assert [p.name.split("-")[0] for p in env.state.iterdir()] == ["inventory.json.corrupt"]
    assert applier.apply(manifest(file("/etc/a.conf", "a\n"))).ok
    assert (env.state / FILE_NAME).exists()


def test_file_with_unmanaged_content_is_created_empty_and_never_rewritten(env):
    applier = env.applier()
    applier.apply(manifest(file("/var/log/app.log", None, mode="0640")))
    p = Path(env.root / "var/log/app.log")
    assert p.read_bytes() == b""
    p.write_text("log line\n")
    assert statuses(applier.apply(manifest(file("/var/log/app.log", None, mode="0640")))) == {
        "file:/var/log/app.log": "in_sync"
    }
    assert p.read_text() == "log line\n"


def test_no_op_run_hashes_nothing_and_a_touched_file_is_hashed_once(env, monkeypatch):
    from treadle_agent.providers.paths import RootFS

    hashed: list[str] = []
    real = RootFS.sha256
    monkeypatch.setattr(
        RootFS, "sha256", lambda self, path: hashed.append(path) or real(self, path)
    )
    m = manifest(*(file(f"/etc/f{i}", f"{i}\n") for i in range(20)))
    applier = env.applier()
    applier.apply(m)
    applier.apply(m)
    assert hashed == []
    os.utime(env.root / "etc/f7")  # new mtime, same content
    assert {r.status for r in applier.apply(m).results} == {"in_sync"}
    assert hashed == ["/etc/f7"]
    applier.apply(m)
    assert hashed == ["/etc/f7"]  # the inventory learned the new stat data


def test_content_without_a_sha256_is_still_compared(env):
    f = file("/etc/a.conf", "a\n")
    f["sha256"] = None
    m = manifest(f)
    applier = env.applier()
    assert applier.apply(m).results[0].status == "changed"
    (env.root / "etc/a.conf").write_text("b\n")
    assert applier.apply(m).results[0].status == "healed"
    assert (env.root / "etc/a.conf").read_text() == "a\n"
