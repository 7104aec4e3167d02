"""Serving 100,000 polling agents: conditional GETs at the rate they make, against the controller and nginx.

    python bench/agents_load.py                          # 100,000 agents, 60 s interval, 20 s of load each
    python bench/agents_load.py --agents 10000 --seconds 10 --targets controller

100,000 agents polling every 60 s make about 1,667 requests per second, each
on a new connection (an agent keeps none open between polls), each with
``If-None-Match`` carrying the ETag of the envelope it holds, so nearly every
answer is 304. This benchmark makes that traffic for real, on loopback:

- a real controller (`treadle controller run`) on a 1,000-node fabric from
  bench/gen_fabric.py; its publish_dir then also holds 100,000 node
  directories, hard links to its real envelopes (the API and nginx serve
  files by name: the agents' URLs are 100,000 distinct paths, the bytes are
  real signed envelopes). The controller is then restarted on the same state
  and store, as after an upgrade: the API answers 304s from its in-memory
  ETag index, which a start fills from the store (the time it took is
  printed) and a publication updates;
- Debian's nginx-light with deploy/nginx/treadle-mirror.conf over the same
  publish_dir (the mirror tier, README "Mirrors");
- the load: an open loop in its own process (asyncio, uvloop when present):
  requests are started on a fixed schedule whatever the answers' speed, each
  agent in turn, one connection per request; 1 % of agents hold no ETag
  (a 200 answer). An agent's ETag is computed as each server makes it (the
  controller: the SHA-256 of the bytes; nginx: modification time and size).

Printed per server: the rate asked and achieved, answers by status, errors,
requests not started on time (more than ``--max-in-flight`` waiting),
latency p50/p99 from each request's scheduled start, and the CPU time the
server and the load generator spent per request. This machine has 2 cores
shared by the server and the load generator (and whatever else runs): the
generator's CPU is part of the measurement, and the load average is printed.
``--repeat N`` runs each server N times and prints the median and range.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controller import PY, Controller, setup_fabric  # noqa: E402  (bench/controller.py)

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATE = 100_000 / 60
TARGET_P99_MS = 100.0


# -- the load (a process of its own: --run) --------------------------------------------------


async def _request(
    host: str, port: int, path: str, etag: str | None, timeout_s: float
) -> tuple[int, bool]:
    """(status, 304-or-200 with a body as expected); raises OSError or TimeoutError."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        cond = f"If-None-Match: {etag}\r\n" if etag else ""
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: treadle-agent\r\n{cond}"
            f"Connection: close\r\n\r\n".encode()
        )
        data = await asyncio.wait_for(reader.read(-1), timeout_s)
    finally:
        writer.close()
    status = int(data[9:12])
    return status, status in (200, 304)


async def _run(
    host: str,
    port: int,
    agents: list[tuple[str, str | None]],
    rate: float,
    seconds: float,
    max_in_flight: int,
    timeout_s: float,
) -> dict:  # type: ignore[type-arg]
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    late = 0
    in_flight = 0
    done = asyncio.Event()
    total = int(rate * seconds)

    async def one(path: str, etag: str | None, due: float) -> None:
        nonlocal in_flight
        try:
            status, _ = await _request(host, port, path, etag, timeout_s)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            latencies.append(loop.time() - due)
        except (OSError, TimeoutError, ValueError) as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        finally:
            in_flight -= 1
            if in_flight == 0 and started_all:
                done.set()

    started_all = False
    start = loop.time()
    tasks = set()
    for k in range(total):
        due = start + k / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= max_in_flight:
            late += 1
            continue
        path, etag = agents[k % len(agents)]
        in_flight += 1
        t = asyncio.create_task(one(path, etag, due))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    started_all = True
    if in_flight:
        await asyncio.wait_for(done.wait(), timeout_s + 10)
    elapsed = loop.time() - start
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
            if latencies
            else float("nan")
        )

    answered = sum(statuses.values())
    return {
        "asked_rate": rate,
        "achieved_rate": answered / elapsed,
        "requests": total,
        "answered": answered,
        "statuses": statuses,
        "errors": errors,
        "late": late,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "seconds": elapsed,
    }


def run_main(args: argparse.Namespace) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    agents = [tuple(a) for a in json.loads(Path(args.agents_file).read_text())]
    host, port = args.run.rsplit(":", 1)
    if not host.startswith("127."):
        raise SystemExit(f"{host}: the load goes to loopback only")
    result = asyncio.run(
        _run(host, int(port), agents, args.rate, args.seconds, args.max_in_flight, args.timeout_s)
    )  # type: ignore[arg-type]
    print(json.dumps(result))
    return 0


# -- the benchmark -------------------------------------------------------------------------


def populate(publish: Path, agents: int) -> list[str]:
    """``agents`` node directories in ``publish``, each a hard link to one of the real envelopes; their names."""
    real = sorted(p for p in (publish / "nodes").iterdir() if (p / "manifest").is_file())
    names = []
    for i in range(agents):
        name = f"agent-{i:06d}"
        d = publish / "nodes" / name
        d.mkdir(exist_ok=True)
        target = d / "manifest"
        if not target.exists():
            os.link(real[i % len(real)] / "manifest", target)
        names.append(name)
    return names


def controller_etag(path: Path) -> str:
    return f'"{hashlib.sha256(path.read_bytes()).hexdigest()}"'


def nginx_etag(path: Path) -> str:
    st = path.stat()
    return f'"{int(st.st_mtime):x}-{st.st_size:x}"'


def agent_list(publish: Path, names: list[str], uri: str, etag_of) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    cache: dict[int, str] = {}
    out = []
    for i, n in enumerate(names):
        path = publish / "nodes" / n / "manifest"
        ino = path.stat().st_ino
        if ino not in cache:
            cache[ino] = etag_of(path)
        out.append((uri.format(node=n), None if i % 100 == 0 else cache[ino]))
    return out


def start_nginx(work: Path, publish: Path) -> tuple[subprocess.Popen, int]:  # type: ignore[type-arg]
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' support package
    from support.nginx_mirror import start_nginx as start  # the same configuration the tests run

    nginx = start(work / "nginx", publish)
    return nginx, nginx.port  # type: ignore[return-value]


def load(
    hostport: str, agents: list[tuple[str, str | None]], work: Path, args: argparse.Namespace
) -> dict:  # type: ignore[type-arg]
    agents_file = work / "agents.json"
    agents_file.write_text(json.dumps(agents))
    out = subprocess.run(
        [
            PY,
            __file__,
            "--run",
            hostport,
            "--agents-file",
            str(agents_file),
            "--rate",
            str(args.rate),
            "--seconds",
            str(args.seconds),
            "--max-in-flight",
            str(args.max_in_flight),
        ],
        capture_output=True,
        text=True,
        timeout=args.seconds + 120,
    )
    if out.returncode != 0:
        raise SystemExit(f"the load process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children that still run (nginx's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for p in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def restart(ctl: Controller) -> dict:  # type: ignore[type-arg]
    """Stop the controller and start it on the same state and store (not a new key); its ``api.index_loaded`` event."""
    ctl.stop()
    ctl.log = ctl.log.with_name("controller-restarted.log")
    ctl.spawn()
    ctl.url = ctl.wait_event("api.listening")["url"]
    return ctl.wait_event("api.index_loaded", timeout_s=300)


def measured(
    hostport: str,
    server_pid: int,
    agents: list[tuple[str, str | None]],
    work: Path,
    args: argparse.Namespace,
) -> dict:  # type: ignore[type-arg]
    """One load run with the CPU the server and the load generator spent on it, and the load average before it."""
    loadavg = os.getloadavg()[0]
    server0, gen0 = cpu_seconds(server_pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = load(hostport, agents, work, args)
    gen1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    answered = max(1, r["answered"])
    r["server_cpu_ms_per_request"] = (cpu_seconds(server_pid) - server0) * 1000 / answered
    r["load_cpu_ms_per_request"] = (
        (gen1.ru_utime + gen1.ru_stime - gen0.ru_utime - gen0.ru_stime) * 1000 / answered
    )
    r["loadavg_before"] = loadavg
    return r


def summary(name: str, runs: list[dict]) -> None:  # type: ignore[type-arg]
    """Median and range over ``runs`` of one server."""

    def fig(key: str, fmt: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"

    passed = sum(1 for r in runs if r["pass"])
    print(
        f"  {name:<11} {len(runs)} runs, median (range): achieved {fig('achieved_rate', '.0f')}/s  "
        f"p50 {fig('p50_ms', '.1f')} ms  p99 {fig('p99_ms', '.1f')} ms  server CPU {fig('server_cpu_ms_per_request', '.3f')} "
        f"ms/request  load generator {fig('load_cpu_ms_per_request', '.3f')} ms/request  PASS {passed}/{len(runs)}"
    )


def report(name: str, r: dict) -> bool:  # type: ignore[type-arg]
    ok = (
        r["achieved_rate"] >= 0.95 * r["asked_rate"]
        and not r["errors"]
        and r["p99_ms"] <= TARGET_P99_MS
    )
    print(
        f"  {name:<11} asked {r['asked_rate']:7.0f}/s  achieved {r['achieved_rate']:7.0f}/s  "
        f"answers {r['statuses']}  errors {r['errors'] or 0}  not started on time {r['late']}\n"
        f"              latency p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms   "
        f"target: {r['asked_rate']:.0f}/s (100,000 agents: {TARGET_RATE:.0f}/s), no errors, p99 <= {TARGET_P99_MS:.0f} ms  "
        f"{'PASS' if ok else 'FAIL'}\n"
        f"              CPU per request: server {r['server_cpu_ms_per_request']:.3f} ms, "
        f"load generator {r['load_cpu_ms_per_request']:.3f} ms; load average before {r['loadavg_before']:.2f}"
    )
    r["pass"] = ok
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--interval-s", type=float, default=60.0, help="each agent's poll interval")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration per server")
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--targets", default="controller,nginx")
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="load runs per server (median and range printed)"
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--agents-file", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        return run_main(args)
    args.rate = args.agents / args.interval_s
    work = Path(tempfile.mkdtemp(prefix="treadle-bench-agents-"))
    fabric_dir, bare, _fabric = setup_fabric(work, 1000)
    ctl = Controller(work, bare)
    nginx = None
    try:
        ctl.url = ctl.wait_event("api.listening")["url"]
        ctl.wait_event("commit.deployed", timeout_s=600)
        names = populate(ctl.publish, args.agents)
        indexed = restart(ctl)
        print(
            f"{args.agents:,} agents polling every {args.interval_s:g} s: {args.rate:.0f} conditional GETs/s, "
            f"{args.seconds:g} s per server, one connection per request, 1 % without an ETag\n"
            f"  the controller's ETag index, filled at its start: {indexed['nodes']:,} envelopes in {indexed['seconds']} s"
        )
        uri = "/v1/nodes/{node}/manifest"
        results: dict[str, list[dict]] = {}  # type: ignore[type-arg]
        if "controller" in args.targets:
            agents = agent_list(ctl.publish, names, uri, controller_etag)
            for _ in range(args.repeat):
                r = measured(ctl.url.removeprefix("http://"), ctl.proc.pid, agents, work, args)
                report("controller", r)
                results.setdefault("controller", []).append(r)
        if "nginx" in args.targets:
            nginx, port = start_nginx(work, ctl.publish)
            agents = agent_list(ctl.publish, names, uri, nginx_etag)
            for _ in range(args.repeat):
                r = measured(f"127.0.0.1:{port}", nginx.proc.pid, agents, work, args)  # type: ignore[attr-defined]
                report("nginx", r)
                results.setdefault("nginx", []).append(r)
        if args.repeat > 1:
            for name, runs in results.items():
                summary(name, runs)
    finally:
        if nginx is not None:
            nginx.stop()  # type: ignore[attr-defined]
        ctl.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0  # figures, not a test: PASS/FAIL is printed (bench/README.md)


if __name__ == "__main__":
    sys.exit(main())
