"""A template that loops too long is stopped at its deadline and reported at the line it was running."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time

import pytest

from treadle.fabric import ParseCache, WorkTreeSource, render_fabric
from treadle.fabric.deadline import RenderTimeout, time_limit

RUNAWAY = (
    "# header\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"
)


def _spin(seconds: float) -> int:
    """Pure-Python work for about ``seconds`` (what a template's compiled loop is)."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        n += 1
    return n


def test_a_runaway_template_is_an_error_at_its_line_and_the_other_nodes_render(fabric) -> None:
    fabric.write(
        "fabric.yaml",
        (fabric.root / "fabric.yaml").read_text() + "limits:\n  max_template_ms: 200\n",
    )
    fabric.write("templates/slow.j2", RUNAWAY)
    fabric.write(
        "sites/s1/c1/nodes/n2.yaml",
        "kind: Node\naddress: 10.0.0.2\nfiles:\n  /etc/slow: {template: slow.j2}\n",
    )
    result = render_fabric(WorkTreeSource(fabric.root), ParseCache())
    [problem] = [d for d in result.diagnostics if d.file == "templates/slow.j2"]
    assert problem.line == 2 and "longer than 200 ms" in problem.message and "n2" in problem.message
    assert "limits.max_template_ms" in problem.message
    assert set(result.nodes) == {"n1"}


def test_a_limit_above_what_the_template_needs_changes_nothing(fabric) -> None:
    fabric.write(
        "fabric.yaml",
        (fabric.root / "fabric.yaml").read_text() + "limits:\n  max_template_ms: 10\n",
    )
    result = render_fabric(WorkTreeSource(fabric.root), ParseCache())
    assert result.ok and set(result.nodes) == {"n1", "n2"}


def test_the_timeout_never_escapes_the_guarded_block() -> None:
    """Thousands of renders ending around their deadline, then work outside any limit: nothing is raised there."""
    timed_out = 0
    for i in range(300):
        try:
            with time_limit(0.002):
                _spin(0.0015 + (i % 7) * 0.0002)
        except RenderTimeout:
            timed_out += 1
    _spin(0.3)  # a stray pending exception would be raised here
    assert timed_out < 300


def test_an_endless_block_is_interrupted() -> None:
    started = time.monotonic()
    with pytest.raises(RenderTimeout):
        with time_limit(0.1):
            while True:
                pass
    assert (
        time.monotonic() - started < 30
    )  # it did end (the bound only keeps a broken watchdog from hanging CI)


def _limited_spin_in_child() -> str:
    try:
        with time_limit(0.1):
            _spin(60)
    except RenderTimeout:
        return "stopped"
    return "ran to the end"


def test_the_limit_holds_in_a_forked_render_worker() -> None:
    """Large renders fork workers (treadle.fabric.pool); the watchdog must run there too."""
    with time_limit(5):  # the parent's watchdog is running, with a render in flight, when it forks
        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("fork")
        ) as pool:
            assert pool.submit(_limited_spin_in_child).result(timeout=120) == "stopped"
