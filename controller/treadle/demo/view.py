"""What the demo prints: scene headings, steps, a live wave table, and the summary.

All output goes through one rich Console. On a terminal the wave table of a
rollout in flight redraws in place; elsewhere (CI logs) rich prints each
step line and the final table once, which keeps logs readable.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from treadle.demo.readings import AgentReport

_STATE_STYLE = {
    "complete": "green",
    "rolled_back": "yellow",
    "halted": "red",
    "rolling_back": "yellow",
    "aborted": "red",
    "soaking": "cyan",
    "publishing": "cyan",
}


def fleet_counts(reports: Mapping[str, AgentReport | None]) -> str:
    """One line: how many agents answer, are healthy, and which generations they run."""
    answering = [r for r in reports.values() if r is not None]
    healthy = sum(1 for r in answering if r.healthy)
    generations = Counter(r.applied_generation for r in answering)
    applied = ", ".join(f"{count} on {gen}" for gen, count in sorted(generations.items()))
    return f"{len(answering)}/{len(reports)} agents answering, {healthy} healthy; applied generations: {applied or '-'}"


def wave_table(rollout: Mapping[str, Any]) -> Table:
    """The waves of one rollout: nodes and their pending/applied/healthy/failed counts."""
    state = str(rollout.get("state", "?"))
    title = (
        f"rollout {rollout.get('id')} of {str(rollout.get('commit', ''))[:12]}: "
        f"[{_STATE_STYLE.get(state, 'white')}]{state}[/]"
    )
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("wave", "nodes", "pending", "applied", "healthy", "failed"):
        table.add_column(col, justify="right" if col not in ("wave", "nodes") else "left")
    current = rollout.get("wave")
    for i, wave in enumerate(rollout.get("waves", [])):
        status = wave.get("status", {})
        nodes = list(wave.get("nodes", []))
        shown = ", ".join(nodes[:6]) + (f" +{len(nodes) - 6}" if len(nodes) > 6 else "")
        marker = (
            "▶ " if i == current and state not in ("complete", "rolled_back", "aborted") else "  "
        )
        table.add_row(
            marker + str(wave.get("name")),
            shown or "(none)",
            *(str(status.get(k, 0)) for k in ("pending", "applied", "healthy", "failed")),
        )
    return table


class View:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        if not self.console.is_terminal:
            self.console.width = max(self.console.width, 150)  # logs: keep table rows on one line
        self.started = time.monotonic()
        self._live: Live | None = None

    def _stamp(self) -> str:
        return f"[dim]{time.monotonic() - self.started:6.1f}s[/]"

    def print(self, *objects: Any) -> None:
        (self._live.console if self._live else self.console).print(*objects)

    def scene(self, number: int, title: str) -> None:
        self.print(Text(""))
        self.print(f"[bold magenta]Scene {number}[/] [bold]{title}[/]")

    def step(self, text: str) -> None:
        self.print(f"{self._stamp()}  {text}")

    def check(self, passed: bool, text: str) -> None:
        mark = "[green]✔[/]" if passed else "[red]✘[/]"
        self.print(f"{self._stamp()}  {mark} {text}")

    @contextmanager
    def live(self) -> Iterator[Live]:
        """A region that redraws in place (a rollout's wave table and the fleet line).

        Transient: it vanishes when the block ends, and the caller prints the final state once
        (on a terminal and in a log alike)."""
        with Live(Text(""), console=self.console, refresh_per_second=4, transient=True) as live:
            self._live = live
            try:
                yield live
            finally:
                self._live = None

    @staticmethod
    def progress(
        rollout: Mapping[str, Any] | None, reports: Mapping[str, AgentReport | None]
    ) -> Group:
        parts: list[Any] = []
        if rollout is not None:
            parts.append(wave_table(rollout))
        parts.append(Text(fleet_counts(reports), style="dim"))
        return Group(*parts)

    def summary(
        self,
        scenes: Sequence[Mapping[str, Any]],
        nodes: Sequence[Mapping[str, Any]],
        facts: Sequence[tuple[str, str]],
    ) -> None:
        """The closing tables: per scene, per node, and where to look next."""
        t = Table(title="Scenes", title_justify="left")
        for col in ("scene", "result", "took", "what was checked"):
            t.add_column(col)
        for s in scenes:
            result = "[green]passed[/]" if s["passed"] else "[red]failed[/]"
            t.add_row(s["title"], result, f"{s['duration_s']:.0f}s", "\n".join(s["details"]))
        self.print(Text(""))
        self.print(t)
        n = Table(title="Nodes", title_justify="left", box=box.SIMPLE_HEAD)
        for col in (
            "node",
            "site/cluster",
            "agent /metrics at",
            "lifecycle",
            "gen",
            "healthy",
            "canary",
        ):
            n.add_column(col, no_wrap=True)
        for row in nodes:
            healthy = {True: "[green]yes[/]", False: "[red]no[/]", None: "[red]no answer[/]"}[
                row["healthy"]
            ]
            where = row["metrics_url"].removeprefix("http://").removesuffix("/metrics")
            n.add_row(
                row["node"],
                f"{row['site']}/{row['cluster']}",
                where,
                str(row["lifecycle"]),
                str(row["generation"]),
                healthy,
                "yes" if row["canary"] else "",
            )
        self.print(n)
        f = Table(show_header=False, box=None)
        f.add_column(style="bold")
        f.add_column()
        for key, value in facts:
            f.add_row(key, value)
        self.print(f)
