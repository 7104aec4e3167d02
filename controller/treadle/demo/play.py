"""The demo played end to end: the workspace built, the processes started, the story told, the summary written.

The command is :mod:`treadle.commands.demo`; the parts are this package's
other modules (see its docstring).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def play(root: Path, nodes: int, timing: Any, keep_running: bool) -> bool:
    """Build the workspace in ``root``, start the controller and ``nodes`` agents, play the story; whether every scene passed.

    Every process started is stopped on the way out (also on Ctrl-C), after
    ``keep_running`` waited for it. The outcome is also written to ``summary.json``.
    """
    from treadle.demo import workspace
    from treadle.demo.processes import Fleet, MemoryMeter, agent_argv, controller_argv
    from treadle.demo.readings import Observer
    from treadle.demo.story import Story
    from treadle.demo.view import View

    view = View()
    started = time.monotonic()
    view.print(f"[bold]Treadle demo[/]: {nodes} nodes, workspace {root}")
    ws = workspace.build(root, nodes, timing)
    view.step(
        f"built the fabric ({nodes} nodes over 2 sites), the bare repository {ws.bare}, keys and configs"
    )
    observer = Observer(ws.controller_url, [(n.name, n.metrics_url) for n in ws.nodes])
    with MemoryMeter() as meter, Fleet(ws.logs) as fleet:
        try:
            fleet.start(
                "controller", controller_argv(ws.controller_config()), ws.root / "controller"
            )
            for node in ws.nodes:
                fleet.start(
                    node.name, agent_argv(ws.agent_config(node.name)), ws.node_dir(node.name)
                )
            view.step(f"started the controller and {nodes} agents (logs in {ws.logs})")
            scenes = Story(ws, fleet, observer, view).run()
            reports = observer.agents_now()
            summary = _summary(ws, scenes, reports, meter.peak_bytes, time.monotonic() - started)
            (ws.root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            view.summary(summary["scenes"], summary["nodes"], _facts(ws, summary))
            if keep_running:
                _wait_for_interrupt(view, ws, fleet)
        finally:
            observer.close()
            view.step("stopping the controller and the agents")
    passed = all(s["passed"] for s in summary["scenes"])
    view.print(
        f"[bold]{'every scene passed' if passed else 'a scene failed'}[/] in {time.monotonic() - started:.0f}s, "
        f"peak memory of all processes {meter.peak_bytes / 2**20:.0f} MiB"
    )
    return passed and len(summary["scenes"]) == 4


def _summary(
    ws: Any, scenes: list[Any], reports: dict[str, Any], peak_bytes: int, duration_s: float
) -> dict[str, Any]:
    nodes = []
    for node in ws.nodes:
        report = reports.get(node.name)
        nodes.append(
            {
                "node": node.name,
                "site": node.site,
                "cluster": node.cluster,
                "canary": node.canary,
                "metrics_url": node.metrics_url,
                "lifecycle": report.lifecycle if report else None,
                "generation": report.applied_generation if report else None,
                "healthy": report.healthy if report else None,
            }
        )
    return {
        "passed": all(s.passed for s in scenes) and len(scenes) == 4,
        "scenes": [s.as_dict() for s in scenes],
        "nodes": nodes,
        "workspace": str(ws.root),
        "controller_url": ws.controller_url,
        "peak_memory_bytes": peak_bytes,
        "duration_s": round(duration_s, 1),
    }


def _facts(ws: Any, summary: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("controller metrics", f"{ws.controller_url}/metrics"),
        (
            "controller status",
            f"{ws.controller_url}/v1/status   (or: treadle status --url {ws.controller_url})",
        ),
        ("rollouts", f"{ws.controller_url}/v1/rollouts"),
        ("an agent's metrics", ws.nodes[0].metrics_url),
        ("Prometheus targets", f"{ws.targets_file}   (file_sd, as `treadle targets` writes it)"),
        (
            "workspace",
            f"{ws.root}   (fabric repository {ws.bare}, admin clone {ws.admin}, logs {ws.logs})",
        ),
        (
            "peak memory",
            f"{summary['peak_memory_bytes'] / 2**20:.0f} MiB (the demo, the controller and the agents)",
        ),
        ("took", f"{summary['duration_s']:.0f}s"),
    ]


def _wait_for_interrupt(view: Any, ws: Any, fleet: Any) -> None:
    view.print(
        f"\n[bold]The fabric keeps running.[/] Try: treadle status --url {ws.controller_url}\n"
        f"Stop it with Ctrl-C (or: kill {os.getpid()}); every process stops with the demo."
    )
    try:
        while True:
            time.sleep(60)
            fleet.rotate_logs()  # a demo left running for days keeps its logs bounded
    except KeyboardInterrupt:
        view.print("")
