"""Soak: the whole system for a while, every process and directory sampled, growth per hour beside its limit.

    python bench/soak.py                       # 3 minutes (a smoke run)
    python bench/soak.py --minutes 30          # the run README reports
    python bench/soak.py --minutes 30 --agents 12 --commit-every-s 6 --rps 20 --json soak.json

Everything is real and on this machine: the demo's workspace (a fabric of
``--agents`` nodes on loopback addresses, keys, configs; see
:mod:`treadle.demo.workspace`), the controller and one agent process per node
(:class:`treadle.demo.processes.Fleet`), commits pushed with the git CLI every
``--commit-every-s`` (each one changes one node's labels, so a rollout starts
and the next commit supersedes it), and a bounded request load on 127.0.0.1
(``--rps`` conditional GETs of the nodes' manifests and ``/v1/status``).

Sampled every ``--sample-s``: resident memory, open descriptors, threads and
CPU time of every process (from /proc), and the size on disk of the
controller's mirror, state database (with its WAL), publish store, and of
every agent's state directory and root. After the warm-up (the first
``--warm-up-min`` minutes or a fifth of the run, whichever is shorter), each
quantity's growth per hour is the least-squares slope of its samples; it is
printed beside its limit:

- descriptors and threads: flat (the largest value after warm-up is no more
  than the one at its end plus a small band: pack files come and go between
  repacks);
- resident memory: growth under 5 MB per hour;
- disk: bounded by the retention settings (the state database's history,
  the mirror repacked); its growth is printed with the history kept.

The machine has two shared cores: keep ``--agents`` and ``--rps`` modest.
Exit 0 when every limit holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RSS_LIMIT_MB_PER_H = 5.0
#: Descriptors may move within this band after warm-up (a mirror's pack files between repacks, sockets of requests).
FD_BAND = 24
THREAD_BAND = 4


def proc_sample(pid: int) -> dict[str, float] | None:
    """RSS (MB), descriptors, threads and CPU seconds of ``pid``; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "fds": fds,
        "threads": int(fields["Threads"]),
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
    }


def du_mb(path: Path) -> float:
    """Bytes on disk (allocated blocks) of the file or under the directory ``path``, in MB."""
    if path.is_file():
        return path.stat().st_blocks * 512 / 1e6
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total / 1e6


@dataclass
class Load:
    """Conditional GETs of manifests and /v1/status at a bounded rate, from one thread, on one connection."""

    url: str
    nodes: list[str]
    rps: float
    requests: int = 0
    failures: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        etags: dict[str, str] = {}
        period = 1.0 / self.rps if self.rps > 0 else 1.0
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            while not self.stop.wait(period):
                node = self.nodes[i % len(self.nodes)]
                path = "/v1/status" if i % 10 == 9 else f"/v1/nodes/{node}/manifest"
                headers = {"If-None-Match": etags[path]} if path in etags else {}
                try:
                    r = client.get(path, headers=headers)
                    if r.status_code not in (200, 304):
                        self.failures += 1
                    elif "etag" in r.headers:
                        etags[path] = r.headers["etag"]
                except httpx.HTTPError:
                    self.failures += 1
                self.requests += 1
                i += 1


def slope_per_h(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (v - mv) for t, v in points) / den * 3600


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--agents", type=int, default=12)
    ap.add_argument("--commit-every-s", type=float, default=6.0)
    ap.add_argument(
        "--rps", type=float, default=20.0, help="requests per second against the controller's API"
    )
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warm-up-min", type=float, default=5.0)
    ap.add_argument("--workspace", help="directory to build in (default: a new temporary one)")
    ap.add_argument("--json", help="write every sample and the summary to this file")
    ap.add_argument(
        "--log-max-mb",
        type=float,
        default=1.0,
        help="rotate each process's log file above this size",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary workspace (always kept with --workspace)",
    )
    args = ap.parse_args(argv)

    from treadle.demo import processes, workspace
    from treadle.demo.grow import _dump, _load

    root = Path(args.workspace or tempfile.mkdtemp(prefix="treadle-soak-"))
    timing = workspace.Timing(
        soak_s=2, agent_interval_s=5.0, agent_jitter_s=2.0, health_interval_s=2.0, wave_timeout_s=60
    )
    ws = workspace.build(root, args.agents, timing)
    config = ws.controller_config()
    config.write_text(
        config.read_text().replace("poll_interval_s = 30", "poll_interval_s = 30\n")
        + "\n[retention]\nrollouts_kept = 20\nhistory_kept = 200\nmirror_max_packs = 16\n"
    )
    print(
        f"workspace {ws.root}: {args.agents} agents, a commit every {args.commit_every_s:g} s, "
        f"{args.rps:g} requests/s, {args.minutes:g} minutes",
        flush=True,
    )

    samples: list[dict[str, Any]] = []
    commits = 0
    with processes.sigterm_as_interrupt(), processes.Fleet(ws.logs) as fleet:
        ctl = fleet.start("controller", processes.controller_argv(config), config.parent)
        for node in ws.nodes:
            fleet.start(
                node.name, processes.agent_argv(ws.agent_config(node.name)), ws.node_dir(node.name)
            )
        _wait_up(ws.controller_url, fleet)
        load = Load(ws.controller_url, [n.name for n in ws.nodes], args.rps)
        loader = threading.Thread(target=load.run, name="load", daemon=True)
        loader.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        next_commit, next_sample = started, started
        try:
            while time.monotonic() < end:
                fleet.check_alive()
                now = time.monotonic()
                if now >= next_commit:
                    node = ws.nodes[commits % len(ws.nodes)]
                    path = ws.admin / node.file
                    doc = _load(path)
                    doc.setdefault("labels", {})["soak"] = f"c{commits}"
                    _dump(doc, path)
                    workspace.git(ws.admin, "commit", "-q", "-am", f"soak {commits}")
                    workspace.git(ws.admin, "push", "-q", "origin", workspace.BRANCH)
                    commits += 1
                    next_commit += args.commit_every_s
                if now >= next_sample:
                    fleet.rotate_logs(args.log_max_mb * 2**20)
                    samples.append(_sample(ws, fleet, now - started, commits, load))
                    c = samples[-1]["procs"].get("controller", {})
                    print(
                        f"{samples[-1]['t'] / 60:6.1f} min  {commits} commits  {load.requests} requests "
                        f"({load.failures} failed)  controller RSS {c.get('rss_mb', 0):.1f} MB, {c.get('fds')} fds, "
                        f"{c.get('threads')} threads",
                        flush=True,
                    )
                    next_sample += args.sample_s
                time.sleep(0.2)
        finally:
            load.stop.set()
            loader.join(timeout=15)
        samples.append(_sample(ws, fleet, time.monotonic() - started, commits, load))
        del ctl
    summary = _summarise(samples, args)
    if not args.workspace and not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": samples, "summary": summary}, indent=1))
    return 0 if summary["ok"] else 1


def _wait_up(url: str, fleet: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fleet.check_alive()
        try:
            if httpx.get(f"{url}/v1/status", timeout=5).json().get("deployed_commit"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the controller at {url} deployed nothing within {timeout_s:.0f} s")


def _sample(ws: Any, fleet: Any, t: float, commits: int, load: Load) -> dict[str, Any]:
    procs = {}
    for name, child in fleet.children.items():
        s = proc_sample(child.process.pid)
        if s is not None:
            procs[name] = s
    state = ws.root / "controller" / "state"
    disk = {
        "controller/mirror": du_mb(state / "mirror.git"),
        "controller/state.sqlite3": sum(du_mb(p) for p in state.glob("state.sqlite3*")),
        "controller/publish": du_mb(ws.root / "controller" / "publish"),
        "agents/state": sum(du_mb(ws.node_dir(n.name) / "state") for n in ws.nodes),
        "agents/root": sum(du_mb(ws.node_root(n.name)) for n in ws.nodes),
        "logs": du_mb(ws.logs),
    }
    return {
        "t": t,
        "commits": commits,
        "requests": load.requests,
        "failures": load.failures,
        "procs": procs,
        "disk": disk,
    }


def _summarise(samples: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    total = samples[-1]["t"]
    warm = min(args.warm_up_min * 60, total / 5)
    after = [s for s in samples if s["t"] >= warm]
    last = samples[-1]
    print(
        f"\n{total / 60:.1f} min, {last['commits']} commits, {last['requests']} requests "
        f"({last['failures']} failed); growth per hour fitted after a {warm / 60:.1f} min warm-up\n"
    )
    ok = last["failures"] == 0
    rows: dict[str, Any] = {}
    print(
        f"{'process':<16}{'RSS MB':>14}{'MB/h':>8}{'fds':>10}{'threads':>10}{'CPU %':>7}   "
        f"limits: RSS < {RSS_LIMIT_MB_PER_H:g} MB/h, fds and threads flat"
    )
    groups = {
        "controller": ["controller"],
        "agents (worst)": sorted(n for n in last["procs"] if n != "controller"),
    }
    for label, names in groups.items():
        worst: dict[str, Any] | None = None
        for name in names:
            series = [(s["t"], s["procs"][name]) for s in after if name in s["procs"]]
            if len(series) < 2:
                continue
            rss_h = slope_per_h([(t, p["rss_mb"]) for t, p in series])
            fds = [p["fds"] for _, p in series]
            threads = [p["threads"] for _, p in series]
            cpu = (
                (series[-1][1]["cpu_s"] - series[0][1]["cpu_s"])
                / max(series[-1][0] - series[0][0], 1e-9)
                * 100
            )
            row = {
                "rss_start_mb": series[0][1]["rss_mb"],
                "rss_end_mb": series[-1][1]["rss_mb"],
                "rss_mb_per_h": rss_h,
                "fds_first": fds[0],
                "fds_max": max(fds),
                "fds_last": fds[-1],
                "threads_first": threads[0],
                "threads_max": max(threads),
                "threads_last": threads[-1],
                "cpu_percent": cpu,
                "fds_flat": max(fds) <= fds[-1] + FD_BAND and fds[-1] <= fds[0] + FD_BAND,
                "threads_flat": max(threads) <= threads[-1] + THREAD_BAND
                and threads[-1] <= threads[0] + THREAD_BAND,
            }
            row["ok"] = row["fds_flat"] and row["threads_flat"] and rss_h < RSS_LIMIT_MB_PER_H
            if worst is None or (not row["ok"], row["rss_mb_per_h"]) > (
                not worst["ok"],
                worst["rss_mb_per_h"],
            ):
                worst = {**row, "name": name}
        if worst is None:
            continue
        rows[label] = worst
        ok = ok and worst["ok"]
        print(
            f"{label:<16}{worst['rss_start_mb']:>6.1f}->{worst['rss_end_mb']:<6.1f}{worst['rss_mb_per_h']:>+8.2f}"
            f"{worst['fds_first']:>4}->{worst['fds_last']:<4}{worst['threads_first']:>4}->{worst['threads_last']:<4}"
            f"{worst['cpu_percent']:>7.1f}   {'ok' if worst['ok'] else 'OVER THE LIMIT'}"
        )
    print(
        f"\n{'directory':<26}{'MB at warm-up':>14}{'MB at end':>11}{'MB/h':>9}   (bounded by retention)"
    )
    disk = {}
    for key in last["disk"]:
        pts = [(s["t"], s["disk"][key]) for s in after]
        disk[key] = {"start_mb": pts[0][1], "end_mb": pts[-1][1], "mb_per_h": slope_per_h(pts)}
        print(f"{key:<26}{pts[0][1]:>14.2f}{pts[-1][1]:>11.2f}{disk[key]['mb_per_h']:>+9.2f}")
    print(
        f"\n{'ok: every quantity flat or bounded' if ok else 'FAILED: a quantity grew beyond its limit'}"
    )
    return {
        "ok": ok,
        "minutes": total / 60,
        "warm_up_min": warm / 60,
        "commits": last["commits"],
        "requests": last["requests"],
        "failures": last["failures"],
        "processes": rows,
        "disk": disk,
    }


if __name__ == "__main__":
    sys.exit(main())
