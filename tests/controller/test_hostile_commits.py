"""Every commit is deployed or refused with file:line: commits that used to crash the parser, and a bug of ours.

The controller runs as a real process on real git; the commits are the inputs
that once ended in a traceback (``0b101``, a 5,000-digit integer, ``!!bool``
on a key, a few hundred levels of nesting) or killed the process (a segfault
at tens of thousands of levels). Each must be a refusal that is recorded,
counted, shown by ``treadle status`` and not retried, while the controller
keeps serving and deploys the next good commit.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.controller.test_pipeline import Clock, build

HOSTILE = {
    "binary literal": "labels: {flags: 0b101}\n",
    "huge integer": "labels: {n: " + "9" * 5000 + "}\n",
    "bool-tagged key": "!!bool labels: {a: b}\n",
    "300 levels": "labels: {deep: " + "[" * 300 + "]" * 300 + "}\n",
    "100000 levels": "labels: {deep: " + "[" * 100_000 + "]" * 100_000 + "}\n",
    "yaml 1.1 boolean": "labels: {ssh: no}\n",
    "nul byte": "labels: {a: b}\n# c\x00\n",
}


def test_commits_that_crashed_the_parser_are_refused_located_and_the_controller_keeps_running(
    make_fabric, start_controller
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(fabric.commit)
    before = ctl.envelopes()
    node = fabric.nodes[0].path
    good = re.sub(r"^labels: .*\n", "", node.read_text(), flags=re.M)
    rel = node.relative_to(repo.work).as_posix()
    for what, extra in HOSTILE.items():
        node.write_text(good + extra)
        bad = repo.commit_and_push(what)
        refusal = ctl.wait_refused(bad)["last_refusal"]
        assert refusal["reason"] == "invalid", (what, refusal)
        located = [d for d in refusal["diagnostics"] if d.startswith(f"{rel}:")]
        assert located, (what, refusal)
        line, col = located[0].split(":")[1:3]
        assert int(line) >= 1 and int(col) >= 1, (what, located)
        assert ctl.proc.poll() is None, what
    assert ctl.envelopes() == before
    metrics = httpx.get(f"{ctl.url}/metrics").text
    assert (
        f'treadle_controller_rejected_commits_total{{reason="invalid"}} {float(len(HOSTILE))}'
        in metrics
    )
    log = ctl.log.read_text()
    assert "cycle.crashed" not in log and "Traceback" not in log
    out = subprocess.run(
        [sys.executable, "-m", "treadle.cli", "status", "--url", ctl.url],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "invalid" in out.stdout and rel in out.stdout
    node.write_text(good + "labels: {owner: fixed}\n")
    fixed = repo.commit_and_push("fixed")
    ctl.wait_deployed(fixed)
    assert ctl.stop() == 0


class BuggyRenderer:
    """The real renderer, except that one commit meets a bug of ours (any exception)."""

    def __init__(self, real, bad: str) -> None:  # type: ignore[no-untyped-def]
        self.real, self.bad, self.calls = real, bad, 0

    def __call__(self, repo, commit, previous, changed, base):  # type: ignore[no-untyped-def]
        if commit == self.bad:
            self.calls += 1
            raise KeyError("a bug in the renderer")
        return self.real(repo, commit, previous, changed, base)


def test_a_bug_met_by_one_commit_refuses_it_as_internal_once_and_the_next_commit_deploys(
    make_fabric, signing_key: Path, tmp_path: Path, caplog
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    p = build(tmp_path, repo.bare, signing_key, Clock(1_800_000_000))
    assert p.run_once().result == "deployed"
    node = fabric.nodes[0].path
    node.write_text(node.read_text().replace("labels: {", "labels: {owner: a, ", 1))
    bad = repo.commit_and_push("meets a bug")
    p.renderer = BuggyRenderer(p.renderer, bad)
    outcome = p.run_once()
    assert (outcome.result, outcome.commit, outcome.reason) == ("refused", bad, "internal")
    assert "KeyError" in outcome.message and "step render" in outcome.message
    refusal = p.state.last_refusal()
    assert refusal is not None and (refusal.commit, refusal.reason) == (bad, "internal")
    assert p.metrics.rejected_commits_total.labels(reason="internal")._value.get() == 1
    logged = [r.fields for r in caplog.records if r.getMessage() == "cycle.internal_error"]  # type: ignore[attr-defined]
    assert (
        len(logged) == 1
        and logged[0]["step"] == "render"
        and "a bug in the renderer" in logged[0]["error"]
    )
    assert (
        "Traceback" in logged[0]["traceback"]
        and "BuggyRenderer" not in logged[0]["traceback"].split("\n")[0]
    )
    for _ in range(3):  # not retried in a loop: the refused head is not rendered again
        assert p.run_once().kind == "refused-before"
    assert p.renderer.calls == 1
    assert p.metrics.rejected_commits_total.labels(reason="internal")._value.get() == 1
    node.write_text(node.read_text().replace("owner: a", "owner: b"))
    good = repo.commit_and_push("next")
    assert p.run_once().result == "deployed" and p.state.deployed_commit() == good


def test_a_fabric_error_still_refuses_as_invalid_not_internal(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    p = build(tmp_path, repo.bare, signing_key, Clock(1_800_000_000))
    p.run_once()
    fabric.nodes[0].path.write_text(fabric.nodes[0].path.read_text() + "labels: {x: y}\n")
    bad = repo.commit_and_push("duplicate key")
    outcome = p.run_once()
    assert (outcome.result, outcome.commit, outcome.reason) == ("refused", bad, "invalid")
    assert any(
        d.startswith(fabric.nodes[0].path.relative_to(repo.work).as_posix() + ":")
        for d in outcome.diagnostics
    )
