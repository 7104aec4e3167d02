"""A process applying 1,000 files is killed with SIGKILL mid-apply; the next run converges.

The kill point is pinned two ways: an audit hook in the child sends itself
SIGKILL just before its k-th rename (so a whole, fsynced temp file is left
behind), and the parent kills the child at a random moment after it starts
applying (which may leave a half-written temp file). Whatever the point:
every file is entirely old or entirely new, the inventory still loads, and
the restarted run removes the temp files and converges.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.providers import file, manifest
from treadle_agent.contract.manifest import Manifest, parse_json
from treadle_agent.inventory import Inventory
from treadle_agent.providers.paths import TEMP_SUFFIX

N = 1000

CHILD = r"""
import os, signal, sys
from pathlib import Path
from treadle_agent.apply import Applier
from treadle_agent.host_sim import SimulatedHost
from treadle_agent.contract.manifest import Manifest, parse_json

root, state, proc, manifest_path, kill_at = sys.argv[1:]
kill_at = int(kill_at)
renames = 0

def hook(event, args):
    global renames
    if event == "os.rename":
        renames += 1
        if renames == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

if kill_at:
    sys.addaudithook(hook)
raw = Path(manifest_path).read_bytes()
m = Manifest(raw, parse_json(raw))
applier = Applier(Path(root), Path(state), SimulatedHost(proc_sys=proc), "heal")
print("applying", flush=True)
report = applier.apply(m)
print("ok" if report.ok else "failed", flush=True)
"""


def content(version: str, i: int) -> str:
    # Old and new differ in length, so a torn write cannot pass for either.
    return f"{version} file {i}\n" * (40 if version == "old" else 90)


def path(i: int) -> str:
    return f"/etc/app{i % 8}/f{i:04d}.conf"


def start_child(env, manifest_path: Path, kill_at: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(env.root),
            str(env.state),
            str(env.proc),
            str(manifest_path),
            str(kill_at),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def check_old_or_new(env) -> tuple[int, list[str]]:
    """(number of new files, temp files present); fails on any torn or stray file."""
    new, temps = 0, []
    for dirpath, _, names in os.walk(env.root):
        for name in names:
            rel = "/" + str(Path(dirpath, name).relative_to(env.root))
            if name.endswith(TEMP_SUFFIX):
                temps.append(rel)
                continue
            i = int(name[1:5])
            assert rel == path(i)
            data = Path(dirpath, name).read_text()
            assert data in (content("old", i), content("new", i)), f"{rel} is torn"
            new += data == content("new", i)
    return new, temps


@pytest.mark.parametrize("kill_at", [0, 437, N])
def test_sigkill_mid_apply_leaves_every_file_old_or_new_and_the_next_run_converges(
    env, tmp_path, kill_at
):
    env.applier().apply(
        manifest(*(file(path(i), content("old", i)) for i in range(N)), validate=False)
    )
    new_manifest = tmp_path / "new.json"
    new_manifest.write_bytes(
        manifest(*(file(path(i), content("new", i)) for i in range(N)), validate=False).raw
    )

    child = start_child(env, new_manifest, kill_at)
    assert child.stdout.readline() == "applying\n"
    if kill_at == 0:  # the parent kills at a random moment of the apply
        time.sleep(random.uniform(0.01, 0.2))
        child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    child.stdout.close()

    new, temps = check_old_or_new(env)
    print(f"killed with {new} of {N} files new, temp files left: {temps}")
    if kill_at:
        assert new == kill_at - 1 and len(temps) == 1
    Inventory.load(env.state)  # still whole

    restarted = start_child(env, new_manifest, 0)
    out, _ = restarted.communicate(timeout=120)
    assert out.splitlines() == ["applying", "ok"]
    assert check_old_or_new(env) == (N, [])
    raw = new_manifest.read_bytes()
    assert {r.status for r in env.applier().apply(Manifest(raw, parse_json(raw))).results} == {
        "in_sync"
    }


def test_files_created_by_a_killed_run_are_still_known_as_created_and_pruned_later(env, tmp_path):
    m = tmp_path / "m.json"
    m.write_bytes(
        manifest(*(file(path(i), content("new", i)) for i in range(N)), validate=False).raw
    )
    child = start_child(env, m, N // 2)
    assert child.stdout.readline() == "applying\n"
    assert child.wait(timeout=60) == -signal.SIGKILL
    child.stdout.close()
    applier = env.applier()
    raw = m.read_bytes()
    assert applier.apply(Manifest(raw, parse_json(raw))).ok
    report = applier.apply(manifest())
    assert {r.message.split(" ")[0] for r in report.removed} == {"removed"}
    assert [f for _, _, fs in os.walk(env.root) for f in fs] == []
