"""The demo's scenes. Every step is real: commits pushed with git, processes, HTTP, files on disk.

1. converge   every agent applies its first manifest and is healthy
2. ntp        an admin adds an NTP server; it rolls out canary, quarter, rest
3. bad        a change whose new health check fails on the canaries: the
              rollout halts and rolls back, no other node ever applies it,
              and the controller pushes a revert branch
4. maintenance  the admin merges the revert branch, then moves a draining
              node to maintenance: its motd and /etc/nologin change and its
              agent reports the new lifecycle

Each scene returns a :class:`SceneResult` with what it checked; a scene that
times out or finds a check false fails, and the story goes on so that the
summary shows every scene.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treadle.demo.processes import Fleet
from treadle.demo.readings import AgentReport, Observer
from treadle.demo.view import View
from treadle.demo.workspace import BRANCH, Workspace, git
from treadle_agent.contract.names import SIMULATED_HOST_FILE

POLL_S = 0.5
TERMINAL = ("complete", "halted", "rolled_back", "aborted", "superseded")
NEW_NTP = "ntp3.example.org"
BAD_CHECK = "chrony-drift"
BAD_STEP_S = 10
#: chrony's unit and config file on each OS family of the template (profiles/os/debian.yaml, rhel.yaml).
_CHRONY = (("chrony", "/etc/chrony/chrony.conf"), ("chronyd", "/etc/chrony.conf"))


class SceneFailed(Exception):
    """A scene cannot go on (a timeout, a missing rollout); the message says what was awaited."""


@dataclass
class SceneResult:
    title: str
    passed: bool = True
    details: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "passed": self.passed,
            "details": self.details,
            "duration_s": round(self.duration_s, 1),
        }


class Story:
    def __init__(
        self,
        ws: Workspace,
        fleet: Fleet,
        observer: Observer,
        view: View,
        converge_timeout_s: float = 120,
    ) -> None:
        self.ws, self.fleet, self.obs, self.view = ws, fleet, observer, view
        self.converge_timeout_s = converge_timeout_s
        self.rollout_timeout_s = 3 * ws.timing.wave_timeout_s + 30
        self.canaries = {n.name for n in ws.nodes if n.canary}
        self.last: dict[str, AgentReport | None] = {}
        self.revert: str | None = None  # the revert branch scene 3 found, merged in scene 4

    # --- helpers ---------------------------------------------------------------

    def _check(self, result: SceneResult, passed: bool, text: str) -> bool:
        self.view.check(passed, text)
        result.details.append(("" if passed else "FAILED: ") + text)
        result.passed &= passed
        return passed

    def agents(self) -> dict[str, AgentReport | None]:
        self.fleet.check_alive()
        self.last = self.obs.agents_now()
        return self.last

    def file(self, node: str, path: str) -> str | None:
        try:
            return (self.ws.node_root(node) / path.lstrip("/")).read_text()
        except OSError:
            return None

    def chrony(self, node: str) -> tuple[str, str]:
        """(unit, config path) of chrony on the node's OS family (the template's profiles/os/)."""
        for unit, path in _CHRONY:
            if self.file(node, path) is not None:
                return unit, path
        return _CHRONY[0]

    def unit(self, node: str, name: str) -> dict[str, bool] | None:
        """A service of the node as its agent left it (the demo's agents run the ``simulated`` host)."""
        try:
            return json.loads((self.ws.node_dir(node) / "state" / SIMULATED_HOST_FILE).read_text())[
                "units"
            ].get(name)
        except (OSError, ValueError, KeyError):
            return None

    def push(self, message: str, edit: Callable[[Path], None]) -> str:
        """Edit the admin's clone, commit, push to the bare repository; returns the commit id."""
        edit(self.ws.admin)
        if not git(self.ws.admin, "status", "--porcelain").strip():
            raise SceneFailed(
                f"the edit for “{message}” changed nothing in {self.ws.admin} (has the template changed?)"
            )
        git(self.ws.admin, "add", "-A")
        git(self.ws.admin, "commit", "-q", "-m", message)
        git(self.ws.admin, "push", "-q", "origin", BRANCH)
        sha = git(self.ws.admin, "rev-parse", "HEAD").strip()
        self.view.step(f"pushed [bold]{sha[:12]}[/] “{message}”")
        return sha

    def wait(self, what: str, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise SceneFailed(f"gave up after {timeout_s:.0f}s waiting for {what}")
            time.sleep(POLL_S)

    def follow_rollout(
        self, commit: str, watch: Callable[[dict[str, AgentReport | None]], None] | None = None
    ) -> dict[str, Any]:
        """Show the rollout of ``commit`` live until it ends; returns its last document (with events)."""
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + self.rollout_timeout_s
        with self.view.live() as live:
            while True:
                reports = self.agents()
                if watch is not None:
                    watch(reports)
                rollout = self.obs.rollout_for(commit)
                live.update(self.view.progress(rollout, reports))
                if rollout is not None:
                    self._announce(seen, rollout)
                    seen = rollout
                    if rollout.get("state") in TERMINAL:
                        return rollout
                if time.monotonic() > deadline:
                    state = seen.get("state", "no rollout at all")
                    raise SceneFailed(
                        f"the rollout of {commit[:12]} did not end within {self.rollout_timeout_s:.0f}s ({state})"
                    )
                time.sleep(POLL_S)

    def _announce(self, before: dict[str, Any], now: dict[str, Any]) -> None:
        """One step line whenever the rollout changes state or wave (the live table may not be visible in a log)."""
        key = (now.get("state"), now.get("wave"))
        if key == (before.get("state"), before.get("wave")):
            return
        waves = now.get("waves") or []
        index = now.get("wave")
        wave = waves[index] if isinstance(index, int) and 0 <= index < len(waves) else None
        where = (
            f" wave {wave.get('name')} ({len(wave.get('nodes', []))} nodes)"
            if wave and now.get("state") in ("publishing", "soaking")
            else ""
        )
        reason = (
            f": {now['reason']}"
            if now.get("reason") and now.get("state") not in ("publishing", "soaking")
            else ""
        )
        self.view.step(f"rollout {now.get('id')} {now.get('state')}{where}{reason}")

    @contextmanager
    def scene(self, number: int, title: str, results: list[SceneResult]) -> Iterator[SceneResult]:
        self.view.scene(number, title)
        result = SceneResult(title)
        started = time.monotonic()
        try:
            yield result
        except SceneFailed as e:
            self._check(result, False, str(e))
        finally:
            result.duration_s = time.monotonic() - started
            results.append(result)

    # --- the scenes ------------------------------------------------------------

    def run(self) -> list[SceneResult]:
        results: list[SceneResult] = []
        with self.scene(1, "First convergence", results) as r:
            self.converge(r)
        if not results[0].passed:
            return results  # without a converged fleet the other scenes show nothing
        with self.scene(2, f"An admin adds the NTP server {NEW_NTP}", results) as r:
            self.ntp(r)
        with self.scene(3, "A bad change: its health check fails on the canaries", results) as r:
            self.bad_change(r)
        with self.scene(4, "A node goes to maintenance", results) as r:
            self.maintenance(r)
        return results

    def converge(self, r: SceneResult) -> None:
        self.view.step(
            f"controller at {self.ws.controller_url}, {len(self.ws.nodes)} agents starting"
        )

        def all_converged() -> bool:
            reports = self.agents()
            return all(
                a is not None and a.applied_generation > 0 and a.healthy and a.apply_ok
                for a in reports.values()
            )

        with self.view.live() as live:

            def shown() -> bool:
                ok = all_converged()
                live.update(self.view.progress(None, self.last))
                return ok

            self.wait(
                "every agent to apply its first manifest and report healthy",
                shown,
                self.converge_timeout_s,
            )
        self.view.print(self.view.progress(None, self.last))
        self._check(
            r, True, f"all {len(self.ws.nodes)} agents applied their manifest and are healthy"
        )
        first = self.ws.nodes[0]
        motd = self.file(first.name, "/etc/motd") or ""
        self._check(
            r,
            f"node       {first.name} ({first.address})" in motd,
            f"{first.name}:/etc/motd written in {self.ws.node_root(first.name)}",
        )
        running = [
            n.name
            for n in self.ws.nodes
            if (self.unit(n.name, self.chrony(n.name)[0]) or {}).get("active")
        ]
        self._check(
            r,
            len(running) == len(self.ws.nodes),
            f"chrony enabled and running on {len(running)} of {len(self.ws.nodes)} nodes (simulated host)",
        )

    def ntp(self, r: SceneResult) -> None:
        def edit(repo: Path) -> None:
            path = repo / "fabric.yaml"
            text = path.read_text()
            path.write_text(
                re.sub(
                    r"^([ \t]*)- ntp2\.example\.org\n",
                    rf"\g<0>\g<1>- {NEW_NTP}\n",
                    text,
                    count=1,
                    flags=re.M,
                )
            )

        sha = self.push(f"ntp: add {NEW_NTP}", edit)
        rollout = self.follow_rollout(sha)
        self.view.print(self.view.progress(rollout, self.last))
        self._check(
            r,
            rollout.get("state") == "complete",
            f"rollout {rollout.get('id')} ended {rollout.get('state')}",
        )
        waves = [(w.get("name"), len(w.get("nodes", []))) for w in rollout.get("waves", [])]
        self._check(
            r,
            len(waves) >= 3 and all(n > 0 for _, n in waves),
            "waves " + ", ".join(f"{name} ({n} nodes)" for name, n in waves),
        )
        line = f"server {NEW_NTP} iburst"
        self.wait_quietly(
            lambda: all(
                line in (self.file(n.name, self.chrony(n.name)[1]) or "") for n in self.ws.nodes
            ),
            15,
        )
        missing = [
            n.name
            for n in self.ws.nodes
            if line not in (self.file(n.name, self.chrony(n.name)[1]) or "")
        ]
        self._check(
            r,
            not missing,
            f"chrony.conf of every node lists {NEW_NTP}"
            + (f" (missing: {missing})" if missing else ""),
        )

    def wait_quietly(self, done: Callable[[], bool], timeout_s: float) -> None:
        try:
            self.wait("", done, timeout_s)
        except SceneFailed:
            pass  # the caller's check reports what is missing

    def bad_change(self, r: SceneResult) -> None:
        watch = Watch(self, self.agents())

        def edit(repo: Path) -> None:
            fabric = repo / "fabric.yaml"
            fabric.write_text(
                re.sub(
                    r"threshold_s: 1\b", f"threshold_s: {BAD_STEP_S}", fabric.read_text(), count=1
                )
            )
            base = repo / "profiles" / "base.yaml"
            # chronyd never runs in the demo (no service manager), so its drift file never appears.
            base.write_text(
                re.sub(
                    r"^health:\n",
                    f"health:\n  {BAD_CHECK}: {{file: /var/lib/chrony/drift}}\n",
                    base.read_text(),
                    count=1,
                    flags=re.M,
                )
            )

        sha = self.push(
            f"chrony: step up to {BAD_STEP_S} s, and check that chronyd keeps its drift file", edit
        )
        rollout = self.follow_rollout(sha, watch.record)
        self.view.print(self.view.progress(rollout, self.last))
        self._check(
            r,
            rollout.get("state") == "rolled_back",
            f"rollout {rollout.get('id')} ended {rollout.get('state')}"
            + (f": {rollout['reason']}" if rollout.get("reason") else ""),
        )
        others = sorted(n for n in watch.before if n not in self.canaries and n in watch.touched())
        self._check(
            r,
            not others,
            "no node outside the canary wave ever applied it (same generation, no bad chrony.conf)"
            + (f" (applied by {', '.join(others)})" if others else ""),
        )
        # The controller's reason names the canaries it saw unhealthy after applying: evidence a poll may have missed.
        reached = sorted(
            n for n in self.canaries if n in watch.touched() or n in str(rollout.get("reason", ""))
        )
        self._check(
            r, bool(reached), f"the canaries applied it first ({', '.join(reached) or 'none'})"
        )
        self.wait_quietly(
            lambda: len(watch.restored(self.agents(), self.canaries)) == len(self.canaries), 30
        )
        back = watch.restored(self.last, self.canaries)
        self._check(
            r,
            len(back) == len(self.canaries),
            f"canaries back on the previous content under a higher generation ({', '.join(back) or 'none'})",
        )
        changed = [
            n.name
            for n in self.ws.nodes
            if self.file(n.name, self.chrony(n.name)[1]) != watch.conf_before[n.name]
        ]
        self._check(
            r,
            not changed,
            "chrony.conf identical to before on every node"
            + (f" (differs: {changed})" if changed else ""),
        )
        self.revert_branch(r, sha, rollout)

    def revert_branch(self, r: SceneResult, bad: str, rollout: dict[str, Any]) -> None:
        branch = rollout.get("revert_branch") or f"treadle/revert-{bad[:12]}"
        self.wait_quietly(lambda: bool(git(self.ws.bare, "branch", "--list", branch).strip()), 15)
        log = git(
            self.ws.bare, "log", "-1", "--format=%h %an <%ae>%n%s%n%n%b", branch, check=False
        ).strip()
        self._check(r, bool(log), f"the controller pushed branch {branch}")
        if log:
            self.view.print(f"[dim]$ git log -1 {branch}[/]\n{log}")
        self.revert = branch

    def maintenance(self, r: SceneResult) -> None:
        branch = self.revert
        if branch:
            git(self.ws.admin, "fetch", "-q", "origin")
            git(self.ws.admin, "merge", "-q", "--ff-only", f"origin/{branch}")
            git(self.ws.admin, "push", "-q", "origin", BRANCH)
            sha = git(self.ws.admin, "rev-parse", "HEAD").strip()
            self.view.step(f"the admin merged {branch} into {BRANCH} ({sha[:12]}) and pushed it")
            self.wait(
                "the controller to take the merged revert",
                lambda: self._taken(sha),
                self.rollout_timeout_s,
            )
        node = self._draining_node()
        if node is None:
            raise SceneFailed("no node of the fabric is draining; nothing to move to maintenance")
        gen = (
            self.agents().get(node.name) or AgentReport(node.name, 0, False, False, None)
        ).applied_generation

        def edit(repo: Path) -> None:
            path = repo / node.file
            path.write_text(
                re.sub(
                    r"^lifecycle: draining$",
                    "lifecycle: maintenance",
                    path.read_text(),
                    count=1,
                    flags=re.M,
                )
            )

        sha = self.push(f"{node.name}: drained, now maintenance (DIMM replacement)", edit)
        rollout = self.follow_rollout(sha)
        self.view.print(self.view.progress(rollout, self.last))
        self._check(
            r,
            rollout.get("state") == "complete",
            f"rollout {rollout.get('id')} ended {rollout.get('state')}",
        )

        def arrived() -> bool:
            report = self.agents().get(node.name)
            return (
                report is not None
                and report.lifecycle == "maintenance"
                and report.applied_generation > gen
            )

        self.wait_quietly(arrived, 20)
        report = self.last.get(node.name)
        self._check(
            r,
            report is not None and report.lifecycle == "maintenance",
            f'{node.name}: treadle_agent_lifecycle{{state="maintenance"}} = 1 at {node.metrics_url}',
        )
        nologin = self.file(node.name, "/etc/nologin") or ""
        self._check(r, "under maintenance" in nologin, f"{node.name}:/etc/nologin written")
        motd = self.file(node.name, "/etc/motd") or ""
        self._check(
            r,
            "lifecycle  maintenance" in motd and "user logins are disabled" in motd,
            f"{node.name}:/etc/motd announces the maintenance",
        )
        slurmd = self.unit(node.name, "slurmd") or {}
        self._check(
            r,
            slurmd.get("enabled") is False and slurmd.get("active") is False,
            f"{node.name}: slurmd disabled and stopped by profiles/lifecycle/maintenance.yaml (simulated host)",
        )

    def _taken(self, sha: str) -> bool:
        self.fleet.check_alive()
        rollout = self.obs.rollout_for(sha)
        if rollout is not None:
            return rollout.get("state") in TERMINAL
        status = self.obs.status() or {}
        cycle = status.get("last_cycle") or {}
        return status.get("deployed_commit") == sha or (
            cycle.get("commit") == sha and cycle.get("result") != "failed"
        )

    def _draining_node(self) -> Any:
        for node in self.ws.nodes:
            text = (self.ws.admin / node.file).read_text()
            if re.search(r"^lifecycle: draining$", text, flags=re.M):
                return node
        return None


class Watch:
    """What every node applied while a bad change rolled out: generations and chrony.conf, sampled at each poll."""

    def __init__(self, story: Story, reports: dict[str, AgentReport | None]) -> None:
        self.story = story
        self.before = {n: a.applied_generation for n, a in reports.items() if a is not None}
        self.conf_before = {
            n.name: story.file(n.name, story.chrony(n.name)[1]) for n in story.ws.nodes
        }
        self.highest = dict(self.before)
        self.bad_content: set[str] = set()

    def record(self, reports: dict[str, AgentReport | None]) -> None:
        for node, report in reports.items():
            if report is not None:
                self.highest[node] = max(self.highest.get(node, 0), report.applied_generation)
            if f"makestep {BAD_STEP_S} " in (
                self.story.file(node, self.story.chrony(node)[1]) or ""
            ):
                self.bad_content.add(node)

    def touched(self) -> set[str]:
        """Nodes that applied a newer generation or were seen with the bad content."""
        return {n for n, g in self.highest.items() if g > self.before.get(n, 0)} | self.bad_content

    def restored(self, reports: dict[str, AgentReport | None], nodes: set[str]) -> list[str]:
        """Those of ``nodes`` healthy on their previous chrony.conf, under a generation above the bad one's."""
        return sorted(
            n
            for n in nodes
            if (r := reports.get(n)) is not None
            and r.healthy
            and r.applied_generation > self.before.get(n, 0) + 1
            and self.story.file(n, self.story.chrony(n)[1]) == self.conf_before[n]
        )
