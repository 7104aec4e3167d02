"""Push -> published while a 10,000-node wave soaks under `scrape` health, a tenth of its agents unreachable.

    python bench/push_during_soak.py                    # 10,000 nodes, 3 pushes
    python bench/push_during_soak.py --nodes 1000 --pushes 2

Everything is real and on loopback: a fabric from bench/gen_fabric.py (each
node at its own 127.16.x.y address), the controller as its own process with
the default health settings (`scrape`, 64 connections, 2 s per agent, 30 s
per round), and, in a second process, the agents' side of the scrape:

- nine tenths of the nodes answer /metrics with an agent's exposition
  (generation 0: not applied yet, so the wave keeps soaking);
- half of the last tenth accept the connection and never answer (hung);
- the other half have no listener at all (the connection is refused).

Each measured push: a commit changing every node (the fabric's motd banner)
starts a rollout whose single wave holds every node and soaks for an hour;
once the health thread's round is blocked on the hung agents (the agents'
process reports the first hung connection), a one-node change is pushed and
the time from `git push` returning to that node's manifest being replaced in
the publish store is measured. Target: <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controller import PY, Controller, git, push_one_node_change, setup_fabric  # noqa: E402  (bench/controller.py)

TARGET_PUSH_S = 1.0
ROLLOUT = """apiVersion: treadle.dev/v1
kind: RolloutPolicy
failure_policy: halt
waves:
  - name: all
    fraction: 1.0
    soak_s: 3600
    timeout_s: 7200
    failure_budget: {percent: 100}
"""
EXPOSITION = """# HELP treadle_agent_info The agent.
# TYPE treadle_agent_info gauge
treadle_agent_info{{node="{node}",site="s",cluster="c",version="0.1.0"}} 1.0
# TYPE treadle_agent_manifest_generation gauge
treadle_agent_manifest_generation 0.0
# TYPE treadle_agent_applied_generation gauge
treadle_agent_applied_generation 0.0
# TYPE treadle_agent_last_apply_success gauge
treadle_agent_last_apply_success 1.0
# TYPE treadle_agent_healthy gauge
treadle_agent_healthy 1.0
# TYPE treadle_agent_health_check_up gauge
treadle_agent_health_check_up{{check="sshd"}} 1.0
treadle_agent_health_check_up{{check="chrony"}} 1.0
# TYPE treadle_agent_resources gauge
treadle_agent_resources{{status="in_sync",type="file"}} 12.0
treadle_agent_resources{{status="drifted",type="file"}} 0.0
treadle_agent_resources{{status="failed",type="file"}} 0.0
"""


# -- the agents' side (a process of its own: --serve-agents) -------------------------------


async def _serve_agents(plan_file: Path, port: int, ready_file: Path, hung_file: Path) -> None:
    plan = json.loads(plan_file.read_text())

    def answering(node: str):  # type: ignore[no-untyped-def]
        body = EXPOSITION.format(node=node).encode()
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(head + body)
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

        return handle

    async def hung(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not hung_file.exists():  # the benchmark removes it before each measured push
            hung_file.write_text("accepted\n")
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
        writer.close()

    servers = []
    for address, node, kind in plan:
        if kind == "answer":
            servers.append(await asyncio.start_server(answering(node), address, port, backlog=64))
        elif kind == "hung":
            servers.append(await asyncio.start_server(hung, address, port, backlog=64))
    ready_file.write_text(f"{len(servers)}\n")
    while True:
        await asyncio.sleep(3600)


def serve_agents_main(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(
        _serve_agents(Path(args.serve_agents), args.port, Path(args.ready), Path(args.hung))
    )
    return 0


# -- the benchmark -------------------------------------------------------------------------


def agents_plan(fabric: object, unreachable_share: float) -> list[tuple[str, str, str]]:
    """(address, node, answer|hung|refuse) for every node; every address checked to be loopback."""
    nodes = fabric.nodes  # type: ignore[attr-defined]
    cut = len(nodes) - int(len(nodes) * unreachable_share)
    plan = []
    for i, n in enumerate(nodes):
        address = re.search(r"^address: (\S+)$", n.path.read_text(), re.M).group(1).strip("\"'")  # type: ignore[union-attr]
        if not address.startswith("127."):
            raise SystemExit(
                f"{n.path}: address {address} is outside 127.0.0.0/8; the benchmark sends nothing there"
            )
        kind = "answer" if i < cut else ("hung" if (i - cut) % 2 == 0 else "refuse")
        plan.append((address, n.name, kind))
    return plan


def wait_file(path: Path, timeout_s: float, proc: subprocess.Popen) -> str:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        if proc.poll() is not None:
            raise SystemExit(f"the agents' process exited with {proc.returncode}")
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {path}")


def change_every_node(fabric_dir: Path, i: int) -> None:
    path = fabric_dir / "fabric.yaml"
    text = re.sub(
        r"banner: [^\n,}]+", f"banner: Synthetic benchmark fabric {i}", path.read_text(), count=1
    )
    path.write_text(text)
    git(fabric_dir, "commit", "-q", "-am", f"every node {i}")
    git(fabric_dir, "push", "-q", "origin", "main")


def bench(nodes: int, pushes: int, unreachable: float) -> int:
    work = Path(tempfile.mkdtemp(prefix=f"treadle-bench-soak-{nodes}-"))
    fabric_dir, bare, fabric = setup_fabric(work, nodes)
    (fabric_dir / "rollout.yaml").write_text(ROLLOUT)
    git(fabric_dir, "commit", "-q", "-am", "one wave, an hour of soak")
    git(fabric_dir, "push", "-q", "origin", "main")
    plan = agents_plan(fabric, unreachable)
    plan_file = work / "agents.json"
    plan_file.write_text(json.dumps(plan))
    counts = {k: sum(1 for p in plan if p[2] == k) for k in ("answer", "hung", "refuse")}
    agents = subprocess.Popen(
        [
            PY,
            __file__,
            "--serve-agents",
            str(plan_file),
            "--port",
            "9731",
            "--ready",
            str(work / "agents.ready"),
            "--hung",
            str(work / "hung.accepted"),
        ]
    )
    ctl = None
    times: list[float] = []
    try:
        wait_file(work / "agents.ready", 300, agents)
        print(
            f"{len(plan):,} nodes: {counts['answer']:,} agents answer, {counts['hung']:,} hung, "
            f"{counts['refuse']:,} refuse (all on 127.16.0.0/12)"
        )
        ctl = Controller(work, bare)
        ctl.url = ctl.wait_event("api.listening")["url"]
        ctl.wait_event("commit.deployed", timeout_s=900)
        print(f"cold start: {time.perf_counter() - ctl.started:.1f} s")
        deployed = 1
        node = fabric.nodes[len(fabric.nodes) // 3]  # type: ignore[attr-defined]
        manifest = ctl.publish / "nodes" / node.name / "manifest"
        for i in range(pushes):
            (work / "hung.accepted").unlink(missing_ok=True)
            change_every_node(fabric_dir, i)
            deployed += 1
            ctl.wait_event("commit.deployed", count=deployed, timeout_s=900)
            ctl.wait_event(
                "rollout.step", count=2 * i + 1, timeout_s=900
            )  # the whole wave published: soaking
            wait_file(
                work / "hung.accepted", 300, agents
            )  # the health round is now blocked on hung agents
            took = push_one_node_change(fabric_dir, node.path, manifest, i)
            deployed += 1
            times.append(took)
            print(
                f"  push {i + 1}: {took:.3f} s (a round blocked on {counts['hung']:,} hung agents in progress)"
            )
        rounds = ctl.events("health.round")
        for r in rounds[-3:]:
            print(
                f"  health round: {r.get('targets'):,} targets, {r.get('ok'):,} ok, "
                f"{r.get('failed_refused', 0):,} refused, {r.get('failed_timeout', 0):,} timed out, "
                f"{r.get('failed_round_deadline', 0):,} past the round's deadline, {r.get('duration_s')} s"
            )
    finally:
        if ctl is not None:
            ctl.stop()
        agents.terminate()
        agents.wait(30)
    worst = max(times)
    print(
        f"\npush -> published while {nodes:,} nodes soak under scrape health ({unreachable:.0%} unreachable): "
        f"median {statistics.median(times):.3f} s  max {worst:.3f} s  target <= {TARGET_PUSH_S:.0f} s  "
        f"{'PASS' if worst <= TARGET_PUSH_S else 'FAIL'}"
    )
    return 0  # figures, not a test: PASS/FAIL is printed (bench/README.md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10000)
    parser.add_argument("--pushes", type=int, default=3)
    parser.add_argument(
        "--unreachable", type=float, default=0.1, help="share of agents hung or refusing"
    )
    parser.add_argument("--serve-agents", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=9731, help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--hung", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_agents:
        return serve_agents_main(args)
    return bench(args.nodes, args.pushes, args.unreachable)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
