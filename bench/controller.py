"""Controller benchmark: push -> published, cold start, conditional GETs; each figure printed beside its target.

    python bench/controller.py                      # 1,000- and 10,000-node fabrics
    python bench/controller.py --sizes 1000 --pushes 3 --requests 5000

Everything runs for real on this machine: fabrics from bench/gen_fabric.py
committed with the git CLI into bare repositories, the controller as its own
process (`treadle controller run`), pushes with `git push`, and the HTTP load
from a separate process on 127.0.0.1, bounded in request count and seconds.

- push -> published: from `git push` returning to the changed node's
  manifest file being replaced in the publish store (the controller reacts to
  the ref change through its watcher); a one-node change, median and worst of
  several pushes, on each fabric size, and the ratio between sizes.
- cold start: from starting the controller process on an empty state
  directory to the deployment being recorded (clone, render, sign, publish
  every node durably); peak RSS is the process's VmHWM.
- serving: conditional GETs with the current ETag, answered 304.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SHAPES = {1000: (2, 10, 50), 10000: (10, 20, 50)}  # sites, clusters per site, nodes per cluster
TARGET_PUSH_S, TARGET_COLD_S, TARGET_RSS_GIB, TARGET_RPS = 1.0, 10.0, 1.5, 2000


def _gen():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_fabric", ROOT / "bench" / "gen_fabric.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def write_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class Controller:
    """`treadle controller run` on a fresh state directory."""

    def __init__(self, work: Path, repository: Path) -> None:
        write_key(work / "bench.key")
        self.config = work / "controller.toml"
        self.config.write_text(
            f'repository = "{repository}"\nstate_dir = "state"\npublish_dir = "publish"\n'
            'signing_key = "bench.key"\nlisten = "127.0.0.1:0"\npoll_interval_s = 3600\n'
        )
        self.publish = work / "publish"
        self.log = work / "controller.log"
        self.started = time.perf_counter()
        self.spawn()
        self.url = ""

    def spawn(self) -> None:
        """Start the process on ``config``, its JSON log (what :meth:`events` reads) written to ``log``."""
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "treadle.cli",
                "controller",
                "run",
                "--config",
                str(self.config),
                "--log-format",
                "json",
            ],
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
        )

    def events(self, name: str) -> list[dict]:  # type: ignore[type-arg]
        out = []
        for line in self.log.read_text().splitlines():
            if f'"{name}"' in line:
                out.append(json.loads(line))
        return out

    def wait_event(self, name: str, count: int = 1, timeout_s: float = 300) -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                raise SystemExit(f"controller exited:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.005)
        raise SystemExit(f"timed out waiting for {name}:\n{self.log.read_text()[-2000:]}")

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def setup_fabric(work: Path, nodes: int) -> tuple[Path, Path, object]:
    sites, clusters, per = SHAPES.get(nodes) or (
        max(1, nodes // 1000),
        20 if nodes >= 1000 else 1,
        50 if nodes >= 50 else nodes,
    )
    fabric = _gen().generate(work / "fabric", sites, clusters, per, 1, git=True)
    bare = work / "upstream.git"
    git(work, "init", "-q", "--bare", "-b", "main", str(bare))
    git(work / "fabric", "remote", "add", "origin", str(bare))
    git(work / "fabric", "push", "-q", "origin", "main")
    return work / "fabric", bare, fabric


def push_one_node_change(fabric_dir: Path, node_path: Path, manifest: Path, i: int) -> float:
    """Seconds from `git push` returning to ``manifest`` being replaced."""
    node_path.write_text(node_path.read_text().replace("labels: {", f"labels: {{bench{i}: x, ", 1))
    git(fabric_dir, "commit", "-q", "-am", f"bench change {i}")
    before = os.stat(manifest).st_ino
    git(fabric_dir, "push", "-q", "origin", "main")
    pushed = time.perf_counter()
    deadline = pushed + 30
    while time.perf_counter() < deadline:
        try:
            if os.stat(manifest).st_ino != before:
                return time.perf_counter() - pushed
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    raise SystemExit(f"{manifest} was not republished within 30 s")


def bench_size(nodes: int, pushes: int, keep: Controller | None) -> dict:  # type: ignore[type-arg]
    work = Path(tempfile.mkdtemp(prefix=f"treadle-bench-{nodes}-"))
    fabric_dir, bare, fabric = setup_fabric(work, nodes)
    ctl = Controller(work, bare)
    listening = ctl.wait_event("api.listening")
    ctl.url = listening["url"]
    deployed = ctl.wait_event("commit.deployed", timeout_s=600)
    cold_s = time.perf_counter() - ctl.started
    rss = ctl.peak_rss_bytes()
    node = fabric.nodes[len(fabric.nodes) // 2]  # type: ignore[attr-defined]
    manifest = ctl.publish / "nodes" / node.name / "manifest"
    times = [push_one_node_change(fabric_dir, node.path, manifest, i) for i in range(pushes)]
    last = ctl.wait_event("commit.deployed", count=pushes + 1)
    result = {
        "nodes": len(fabric.nodes),
        "cold_s": cold_s,
        "cold_steps": _steps(deployed),
        "rss": rss,  # type: ignore[attr-defined]
        "push_s": times,
        "push_steps": _steps(last),
        "work": work,
        "controller": ctl,
    }
    if keep is None:
        ctl.stop()
    return result


def _steps(event: dict) -> str:  # type: ignore[type-arg]
    return " ".join(
        f"{k.removesuffix('_s')} {v:.3f}"
        for k, v in event.items()
        if k.endswith("_s") and isinstance(v, float)
    )


# -- the load generator, run as its own process ---------------------------------


async def _load(
    host: str,
    port: int,
    targets: list[tuple[str, str]],
    requests: int,
    seconds: float,
    connections: int,
) -> dict:  # type: ignore[type-arg]
    counts = {"304": 0, "other": 0, "errors": 0}
    remaining = [requests]
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            counts["errors"] += 1
            return
        i = offset
        try:
            while remaining[0] > 0 and time.perf_counter() < deadline:
                remaining[0] -= 1
                node, etag = targets[i % len(targets)]
                i += connections
                writer.write(
                    f"GET /v1/nodes/{node}/manifest HTTP/1.1\r\nHost: {host}\r\nIf-None-Match: {etag}\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                counts["304" if head.startswith(b"HTTP/1.1 304") else "other"] += 1
        except (OSError, asyncio.IncompleteReadError):
            counts["errors"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    counts["seconds"] = time.perf_counter() - started  # type: ignore[assignment]
    return counts


def load_main(args: argparse.Namespace) -> int:
    targets = json.loads(Path(args.targets).read_text())
    host, port = args.load.rsplit(":", 1)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(
        json.dumps(
            asyncio.run(
                _load(host, int(port), targets, args.requests, args.seconds, args.connections)
            )
        )
    )
    return 0


def bench_serving(ctl: Controller, requests: int, seconds: float, connections: int) -> dict:  # type: ignore[type-arg]
    import httpx

    names = sorted(os.listdir(ctl.publish / "nodes"))[:1000]
    with httpx.Client() as client:
        targets = [
            (n, client.get(f"{ctl.url}/v1/nodes/{n}/manifest").headers["etag"]) for n in names
        ]
    targets_file = ctl.publish.parent / "targets.json"
    targets_file.write_text(json.dumps(targets))
    hostport = ctl.url.removeprefix("http://")
    out = subprocess.run(
        [
            PY,
            __file__,
            "--load",
            hostport,
            "--targets",
            str(targets_file),
            "--requests",
            str(requests),
            "--seconds",
            str(seconds),
            "--connections",
            str(connections),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    return json.loads(out.stdout)


def report(results: list[dict], serving: dict | None) -> None:  # type: ignore[type-arg]
    print("\nTreadle controller benchmark (this machine: 2 cores, shared)\n")
    medians = {}
    for r in results:
        med, worst = statistics.median(r["push_s"]), max(r["push_s"])
        medians[r["nodes"]] = med
        ok = "ok" if worst <= TARGET_PUSH_S else "MISSED"
        print(
            f"push -> published, one-node change, {r['nodes']:>6} nodes: median {med:.3f} s, worst {worst:.3f} s"
            f"   target <= {TARGET_PUSH_S:.1f} s   {ok}"
        )
        print(f"    last cycle's steps (s): {r['push_steps']}")
    if len(medians) > 1:
        small, large = min(medians), max(medians)
        print(
            f"push -> published ratio {large} / {small} nodes: {medians[large] / medians[small]:.2f}"
            f"   (fabric {large // small}x larger)"
        )
    for r in results:
        rss_gib = r["rss"] / 2**30
        ok = "ok" if r["cold_s"] <= TARGET_COLD_S and rss_gib <= TARGET_RSS_GIB else "MISSED"
        print(
            f"cold start, {r['nodes']:>6} nodes (clone, render, sign, publish durably): {r['cold_s']:.2f} s,"
            f" peak RSS {rss_gib:.2f} GiB   target <= {TARGET_COLD_S:.0f} s, <= {TARGET_RSS_GIB} GiB"
            f" (10,000 nodes)   {ok if r['nodes'] >= 10000 else ''}"
        )
        print(f"    steps (s): {r['cold_steps']}")
    if serving:
        rps = serving["304"] / serving["seconds"]
        ok = "ok" if rps >= TARGET_RPS else "MISSED"
        print(
            f"conditional GETs answered 304: {rps:,.0f} req/s ({serving['304']} x 304, {serving['other']} other,"
            f" {serving['errors']} errors, {serving['seconds']:.1f} s)   target >= {TARGET_RPS:,} req/s   {ok}"
        )
        if rps < TARGET_RPS:
            print(
                "    the publish store is static files: nginx or any static server / CDN in front of"
                " publish_dir/nodes serves the same bytes and ETags at far higher rates"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="fabric sizes in nodes (1000, 10000)")
    parser.add_argument("--pushes", type=int, default=5, help="one-node pushes per size")
    parser.add_argument("--requests", type=int, default=30000, help="conditional GETs at most")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration at most")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the temp directories")
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        return load_main(args)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = []
    for i, size in enumerate(sizes):
        print(f"... {size} nodes", file=sys.stderr)
        results.append(bench_size(size, args.pushes, keep=True if i == len(sizes) - 1 else None))
    largest = results[-1]["controller"]
    try:
        print("... serving", file=sys.stderr)
        serving = bench_serving(largest, args.requests, args.seconds, args.connections)
    finally:
        largest.stop()
    report(results, serving)
    if not args.keep:
        for r in results:
            shutil.rmtree(r["work"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
