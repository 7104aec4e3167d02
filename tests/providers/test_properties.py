"""Properties over generated small manifests: applying twice equals applying once; any manifest converges."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from support.providers import directory, file, make_env, manifest, snapshot, symlink, sysctl
from treadle_agent.inventory import FILE_NAME

DIRS = ["/d1", "/d1/d2"]
FILES = ["/d1/f1", "/d1/d2/f2", "/f3"]
LINKS = ["/d1/l1", "/l2"]
MODES = st.sampled_from([None, "0644", "0600", "0755"])
ENSURE = st.sampled_from(["present", "absent"])


@st.composite
def manifests(draw):
    resources = []
    for p in DIRS:
        if draw(st.booleans()):
            resources.append(directory(p, ensure=draw(ENSURE), mode=draw(MODES)))
    for p in FILES:
        if draw(st.booleans()):
            ensure = draw(ENSURE)
            text = draw(st.text(max_size=20)) if ensure == "present" else None
            resources.append(
                file(p, text, ensure=ensure, mode=draw(MODES) if ensure == "present" else None)
            )
    for p in LINKS:
        if draw(st.booleans()):
            ensure = draw(ENSURE)
            resources.append(
                symlink(
                    p,
                    draw(st.sampled_from(["f1", "/f3", "../x"])) if ensure == "present" else None,
                    ensure=ensure,
                )
            )
    if draw(st.booleans()):
        resources.append(sysctl("vm.swappiness", str(draw(st.integers(0, 100)))))
    # A directory declared absent with something present below it contradicts itself;
    # the controller rejects such manifests, so they are not generated here.
    absent_dirs = [
        r["path"] for r in resources if r["type"] == "directory" and r["ensure"] == "absent"
    ]
    present = [r["path"] for r in resources if r.get("path") and r["ensure"] == "present"]
    assume(not any(p.startswith(d + "/") for d in absent_dirs for p in present))
    return manifest(*resources)


def holds(env, m) -> None:
    """Every resource of ``m`` is as it says on disk."""
    for r in m.resources:
        if r["type"] == "sysctl":
            assert env.sysctl_value(r["key"]) == r["value"] + "\n"
            continue
        p = env.root / r["path"].lstrip("/")
        if r["ensure"] == "absent":
            assert not os.path.lexists(p)
        elif r["type"] == "directory":
            assert p.is_dir() and not p.is_symlink()
            assert r["mode"] is None or p.stat().st_mode & 0o7777 == int(r["mode"], 8)
        elif r["type"] == "file":
            assert not p.is_symlink() and p.read_bytes() == r["content"].encode()
            assert r["mode"] is None or p.stat().st_mode & 0o7777 == int(r["mode"], 8)
        else:
            assert os.readlink(p) == r["target"]


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@SETTINGS
@given(manifests())
def test_applying_twice_equals_applying_once(m):
    with tempfile.TemporaryDirectory() as d:
        env = make_env(Path(d))
        applier = env.applier()
        first = applier.apply(m)
        assert first.ok, first
        holds(env, m)
        disk, inv = (
            snapshot(env.root),
            (env.state / FILE_NAME).stat().st_mtime_ns
            if (env.state / FILE_NAME).exists()
            else None,
        )
        second = applier.apply(m)
        assert {r.status for r in second.results} <= {"in_sync"}
        assert snapshot(env.root) == disk
        assert ((env.state / FILE_NAME).stat().st_mtime_ns if inv is not None else None) == inv


@SETTINGS
@given(manifests(), manifests())
def test_any_manifest_converges_from_any_earlier_one(m1, m2):
    with tempfile.TemporaryDirectory() as d:
        env = make_env(Path(d))
        applier = env.applier()
        applier.apply(m1)
        report = applier.apply(m2)
        assert report.ok, report
        holds(env, m2)
        assert {r.status for r in applier.apply(m2).results} <= {"in_sync"}


PATH_TEXT = st.lists(
    st.sampled_from(["etc", "..", ".", "", "a\0b", "x.conf", "~", "-n"]), min_size=0, max_size=5
)


@settings(max_examples=200, deadline=None)
@given(PATH_TEXT, st.booleans())
def test_split_path_accepts_only_clean_absolute_paths(parts, absolute):
    from treadle_agent.errors import PathEscapeError
    from treadle_agent.providers.paths import split_path

    path = ("/" if absolute else "") + "/".join(parts)
    try:
        comps = split_path(path)
    except PathEscapeError:
        assert not absolute or not parts or any(p in ("..", ".", "") or "\0" in p for p in parts)
        return
    assert path.startswith("/") and "/" + "/".join(comps) == path
    assert not any(c in ("..", ".", "") or "\0" in c for c in comps)


LINK_TARGETS = st.sampled_from(
    [
        "..",
        "../..",
        "/",
        "/tmp",
        "{outside}",
        "{root}/real",
        "real",
        "../real",
        "real/../..",
        "./real",
        "loop",
        "{root}/../outside",
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    LINK_TARGETS,
    LINK_TARGETS,
    st.sampled_from(["/link/f", "/link/sub/f", "/d/link2/f", "/link/link2/f"]),
)
def test_no_symlink_layout_makes_a_write_land_outside_the_root(t1, t2, target_path):
    with tempfile.TemporaryDirectory() as d:
        env = make_env(Path(d))
        outside = Path(d) / "outside"
        outside.mkdir()
        (outside / "f").write_text("outside\n")
        (env.root / "real").mkdir()
        (env.root / "d").mkdir()
        fill = {"outside": str(outside), "root": str(env.root)}
        (env.root / "link").symlink_to(t1.format(**fill))
        (env.root / "d/link2").symlink_to(t2.format(**fill))
        (env.root / "real/link2").symlink_to(t2.format(**fill))
        (env.root / "loop").symlink_to("loop")
        before = snapshot(Path(d) / "outside")
        report = env.applier().apply(manifest(file(target_path, "inside\n")))
        assert snapshot(Path(d) / "outside") == before
        assert not (Path(d) / "f").exists() and sorted(os.listdir(d)) == [
            "outside",
            "proc_sys",
            "root",
            "state",
        ]
        if report.ok:
            landed = [p for p in env.root.rglob("f") if p.is_file() and not p.is_symlink()]
            assert [p.read_text() for p in landed] == ["inside\n"]
            assert all(str(p.resolve()).startswith(str(env.root.resolve()) + "/") for p in landed)
