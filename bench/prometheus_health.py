"""Prometheus health at 100,000 nodes: one query per round, and one rollout step, on a real Prometheus.

    python bench/prometheus_health.py                  # 100,000 nodes
    python bench/prometheus_health.py --nodes 10000

The agents' series (``treadle_agent_info`` and the four gauges the gate reads,
for every node) are written as OpenMetrics and turned into a TSDB block with
``promtool tsdb create-blocks-from openmetrics``; a real ``prometheus`` (Debian
package) serves them on 127.0.0.1. Then, with the controller's own
:class:`PrometheusSource`:

- observe: one round for a wave of 10,000 nodes and one for all 100,000 (the
  queries sent are counted at Prometheus, ``prometheus_http_requests_total``);
- rollout step: :meth:`RolloutService.tick` over a 100,000-node rollout (a
  canary wave of 100 nodes, a tenth, the rest) while its 10,000-node wave
  soaks, reading the observations the health thread keeps
  (:class:`HealthWatcher`): this is what a push or an operator waits for.
  Target: <= 100 ms.

Figures are printed beside their targets. tests/observability/test_prometheus_health.py
uses the same series (``write_series``) to check the answers.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_STEP_MS = 100.0
JOB = "treadle-agents"


def node_name(i: int) -> str:
    return f"n{i:06d}"


def instance(i: int) -> str:
    """Each node's agent at its own loopback address (the series are written, never scraped)."""
    return f"127.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}:9731"


def facts(i: int) -> dict[str, float] | None:
    """What node ``i`` reports: None for one in 1,000 (no gauges at all); one in ten unhealthy."""
    if i % 1000 == 1:
        return None
    return {
        "applied_generation": 1000 + i % 7,
        "manifest_generation": 1000 + i % 7,
        "last_apply_success": 0.0 if i % 50 == 3 else 1.0,
        "healthy": 0.0 if i % 10 == 5 else 1.0,
    }


def _lines(nodes: int, timestamps: list[int]) -> Iterator[str]:
    yield "# TYPE treadle_agent_info gauge\n"
    for i in range(nodes):
        for ts in timestamps:
            yield f'treadle_agent_info{{instance="{instance(i)}",job="{JOB}",node="{node_name(i)}"}} 1 {ts}\n'
    for name in ("applied_generation", "manifest_generation", "last_apply_success", "healthy"):
        yield f"# TYPE treadle_agent_{name} gauge\n"
        for i in range(nodes):
            f = facts(i)
            if f is None:
                continue
            for ts in timestamps:
                yield f'treadle_agent_{name}{{instance="{instance(i)}",job="{JOB}"}} {f[name]} {ts}\n'
    yield "# EOF\n"


def write_series(data_dir: Path, nodes: int, now: float | None = None) -> None:
    """A TSDB block in ``data_dir`` with every node's series, sampled so that an instant query at any time in
    the next ten minutes finds them (samples every four minutes, from one minute ago)."""
    now = time.time() if now is None else now
    timestamps = [int(now) - 60 + 240 * k for k in range(4)]
    data_dir.mkdir(parents=True, exist_ok=True)
    om = data_dir.parent / "series.om"
    with om.open("w") as out:
        out.writelines(_lines(nodes, timestamps))
    subprocess.run(
        [
            _binary("promtool"),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=2h",
            str(om),
            str(data_dir),
        ],
        check=True,
        capture_output=True,
    )
    om.unlink()


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise SystemExit(
            f"{name} not found: install Debian's prometheus package (listed in .ci/apt-packages)"
        )
    return path


class Prometheus:
    """A Prometheus on 127.0.0.1 over a prepared data directory, scraping nothing."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (workdir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1h}\nscrape_configs: []\n"
        )
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [
                _binary("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                "--storage.tsdb.retention.time=10y",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        import httpx

        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("prometheus was not ready within 120 s")
            time.sleep(0.2)

    def queries_served(self) -> float:
        """Instant queries Prometheus has answered (its own counter)."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10, trust_env=False).text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "prometheus_http_requests_total"
            and s.labels.get("handler") == "/api/v1/query"
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _round(source: Any, names: list[str]) -> tuple[float, dict[str, Any]]:
    import anyio

    from treadle.rollout.observe import Target

    targets = [Target(n, "127.0.0.1") for n in names]
    started = time.perf_counter()
    found = anyio.run(source.observe, targets)
    return time.perf_counter() - started, found


def bench(nodes: int, workdir: Path, ticks: int) -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    from rollout import (
        StubExecutor,
    )  # the pipeline's side with nothing behind it (bench/rollout.py)

    from treadle.rollout.health import HealthWatcher
    from treadle.rollout.observe import PrometheusSource
    from treadle.rollout.policy import from_doc
    from treadle.rollout.service import RolloutService
    from treadle.rollout.waves import Candidate

    started = time.perf_counter()
    write_series(workdir / "data", nodes)
    print(
        f"series for {nodes:,} nodes written as a TSDB block in {time.perf_counter() - started:.1f} s"
    )
    prom = Prometheus(workdir)
    failed = False
    try:
        source = PrometheusSource(prom.url, timeout_s=60)
        names = [node_name(i) for i in range(nodes)]
        wave = names[: nodes // 10]
        _round(source, wave)  # warm Prometheus's caches once
        for label, chosen in (
            (f"a wave of {len(wave):,}", wave),
            (f"every node ({nodes:,})", names),
        ):
            before, times = prom.queries_served(), []
            for _ in range(3):
                took, found = _round(source, chosen)
                times.append(took)
            queries = prom.queries_served() - before
            print(
                f"  observe {label:<24} median {statistics.median(times) * 1000:8.1f} ms  "
                f"{len(found):,} nodes reported  queries per round {queries / 3:g} (bounded: 1)"
            )
            failed |= queries != 3  # more than one query a round: the property measured is broken

        policy = from_doc(
            {
                "waves": [
                    {
                        "name": "tenth",
                        "fraction": 0.1,
                        "soak_s": 3600,
                        "failure_budget": {"percent": 50},
                    },
                    {
                        "name": "rest",
                        "fraction": 1.0,
                        "soak_s": 3600,
                        "failure_budget": {"percent": 50},
                    },
                ]
            }
        )
        executor = StubExecutor(policy, names)
        for i, n in enumerate(
            names
        ):  # published generations one below what the agents report; +1 at publish
            executor.generation[n] = 999 + i % 7
        watcher = HealthWatcher(source, interval_s=3600, stale_after_s=7200)
        service = RolloutService(workdir / "state.sqlite3", watcher)
        service.begin(
            "c" * 40,
            policy,
            [Candidate(n, "s", f"c{i % 200}", {}) for i, n in enumerate(names)],
            immediate=False,
        )
        r = service.tick(executor)  # publishes the first wave: it soaks from now
        assert r is not None and r.current is not None and r.state.value == "soaking", r
        wave_targets = executor.targets("c" * 40, list(r.current.nodes))
        watcher.watch(wave_targets)
        stats = watcher.run_round(wave_targets)  # what the health thread does, beside the rollout
        print(
            f"  health round over the soaking wave: {stats.duration_s * 1000:.1f} ms, {stats.ok:,} reported, "
            f"{sum(stats.failed.values()):,} absent (off the push path: the health thread's work)"
        )
        steps = []
        for _ in range(ticks):
            t0 = time.perf_counter()
            r = service.tick(executor)
            steps.append(time.perf_counter() - t0)
        assert r is not None and r.current is not None
        worst = max(steps) * 1000
        print(
            f"  rollout step, {nodes:,} nodes, wave of {len(r.current.nodes):,} soaking ({r.counts()})\n"
            f"    first (transitions persisted) {steps[0] * 1000:.1f} ms  median {statistics.median(steps) * 1000:.1f} ms  "
            f"max {worst:.1f} ms  target <= {TARGET_STEP_MS:.0f} ms  {'PASS' if worst <= TARGET_STEP_MS else 'FAIL'}"
        )
        service.close()
    finally:
        prom.stop()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="treadle-bench-prom-"))
    try:
        return bench(args.nodes, workdir, args.ticks)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
