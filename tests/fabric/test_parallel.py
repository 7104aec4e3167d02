"""fork_map and the forked render: the same results, in the same order, as running everything here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import treadle.fabric.pool as pool
import treadle.fabric.render as render
from treadle.fabric import ParseCache, WorkTreeSource, render_fabric
from treadle.fabric.pool import fork_map


@pytest.fixture
def forking(monkeypatch):
    """Fork whatever the machine's load: the tests must exercise the worker, not the serial fallback."""
    monkeypatch.setattr(pool, "can_fork", lambda: True)


def test_fork_map_returns_every_result_in_job_order(forking):
    parent = os.getpid()
    results = fork_map(list(range(60)), lambda n: (n * n, os.getpid()))
    assert [square for square, _ in results] == [n * n for n in range(60)]
    assert len({pid for _, pid in results} - {parent}) <= 1


def test_jobs_the_helper_fails_are_run_again_here(forking):
    parent = os.getpid()

    def only_here(n: int) -> int:
        if os.getpid() != parent:
            raise RuntimeError("the helper cannot do this job")
        return n + 1

    assert fork_map(list(range(20)), only_here) == list(range(1, 21))


def test_a_helper_that_dies_loses_no_job(forking):
    parent = os.getpid()

    def die_in_helper(n: int) -> int:
        if os.getpid() != parent:
            os._exit(3)
        return -n

    assert fork_map(list(range(20)), die_in_helper) == [-n for n in range(20)]


def test_an_error_in_a_job_run_here_is_raised(forking):
    def fail(n: int) -> int:
        raise ValueError(f"job {n} failed")

    with pytest.raises(ValueError, match="failed"):
        fork_map([1, 2, 3], fail)


def test_the_serial_path_runs_in_this_process_when_asked():
    parent = os.getpid()
    assert fork_map([1, 2, 3], lambda n: os.getpid(), parallel=False) == [parent] * 3


def _many_nodes(fabric, count: int) -> None:
    for i in range(count):
        fabric.write(f"sites/s1/c1/nodes/m{i:03d}.yaml", f"kind: Node\naddress: 10.1.0.{i}\n")
    # problems spread over the jobs: a template error on some nodes, an unknown profile, a bad mode
    fabric.write(
        "templates/chrony.conf.j2",
        "{{ data.ntp.servers[0] }} {{ node.name }}\n"
        "{% if node.name.endswith('7') %}{{ data.nothing.here }}{% endif %}\n",
    )
    fabric.write("sites/s1/c1/nodes/m005.yaml", "kind: Node\naddress: 10.1.1.5\nprofiles: [nope]\n")
    fabric.write(
        "sites/s1/c1/nodes/m031.yaml",
        "kind: Node\naddress: 10.1.1.31\nfiles:\n  /etc/x: {content: x, mode: '9999'}\n",
    )
    fabric.write(
        "sites/s1/c1/nodes/m044.yaml", "kind: Node\naddress: [10.1.1.44\n"
    )  # a YAML error, found by a parse job


def test_a_forked_render_equals_a_serial_one_byte_for_byte(fabric, monkeypatch, forking):
    _many_nodes(fabric, 60)
    monkeypatch.setattr(render, "PARALLEL_MIN_NODES", 10**9)
    serial = render_fabric(WorkTreeSource(fabric.root), ParseCache())
    monkeypatch.setattr(render, "PARALLEL_MIN_NODES", 0)
    monkeypatch.setattr(render, "_JOB_NODES", 3)
    monkeypatch.setattr(
        render, "_JOB_FILES", 4
    )  # the files are parsed by several jobs, some in the helper
    cache = ParseCache()
    forked = render_fabric(WorkTreeSource(fabric.root), cache)
    assert not serial.ok and serial.diagnostics  # the problems above are reported...
    assert (
        forked.diagnostics == serial.diagnostics
    )  # ...identically, template errors naming the same first node
    assert list(forked.nodes) == list(serial.nodes)
    assert {n: v.canonical for n, v in forked.nodes.items()} == {
        n: v.canonical for n, v in serial.nodes.items()
    }
    assert forked.deps == serial.deps
    assert cache.parse_count == len(
        set(WorkTreeSource(fabric.root).entries().values())
        - {  # each file parsed once
            b
            for p, b in WorkTreeSource(fabric.root).entries().items()
            if p.startswith("templates/")
        }
    )
    again = render_fabric(
        WorkTreeSource(fabric.root), cache
    )  # the helper's nodes were stored in the parse cache
    assert all(again.nodes[n] is forked.nodes[n] for n in forked.nodes)


def test_results_larger_than_the_pipe_arrive_whole_and_in_order(forking):
    parent = os.getpid()
    results = fork_map(list(range(12)), lambda n: (bytes([n]) * (3 * 2**20 + n), os.getpid()))
    assert [data for data, _ in results] == [bytes([n]) * (3 * 2**20 + n) for n in range(12)]
    assert {pid for _, pid in results} - {parent}  # some were the helper's: they crossed the pipe


def test_a_result_the_helper_cannot_pickle_is_made_here(forking):
    parent = os.getpid()

    def unpicklable_in_helper(n: int):  # type: ignore[no-untyped-def]
        return n if os.getpid() == parent else (lambda: n)

    assert fork_map(list(range(20)), unpicklable_in_helper) == list(range(20))


def test_an_error_here_stops_the_helper_and_leaves_no_child_behind(forking):
    parent = os.getpid()

    def slow_there_failing_here(n: int) -> int:
        if os.getpid() != parent:
            import time

            time.sleep(30)
        raise ValueError("failed here")

    before = _children()
    with pytest.raises(ValueError, match="failed here"):
        fork_map(list(range(4)), slow_there_failing_here)
    # Reaped, not left running or as a zombie: no child of this process beyond those it had before
    # (under xdist a worker may hold other tests' children).
    assert _children() <= before


def _children() -> set[int]:
    """This process's child pids, from /proc (zombies included: they stay children until reaped)."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        found.update(int(pid) for pid in (task / "children").read_text().split())
    return found
