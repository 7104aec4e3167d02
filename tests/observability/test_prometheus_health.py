"""The Prometheus health source against a real Prometheus holding the series of 100,000 nodes.

The series come from bench/prometheus_health.py (``write_series``: OpenMetrics
turned into a TSDB block by promtool); what each node reports is its
``facts(i)``. Queries are counted by Prometheus itself
(``prometheus_http_requests_total{handler="/api/v1/query"}``): one per round,
whatever the size of the wave.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from support.bench import bench_module
from support.prometheus import PrometheusServer, free_port
from treadle.rollout.health import HealthWatcher
from treadle.rollout.machine import Observation
from treadle.rollout.observe import PrometheusSource, Target

NODES = 100_000


series = bench_module("prometheus_health")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    workdir = tmp_path_factory.mktemp("prometheus-100k")
    series.write_series(workdir / "data", NODES)
    config = {"global": {"scrape_interval": "1h"}, "scrape_configs": []}
    server = PrometheusServer.start(workdir, config, free_port(), timeout_s=180)
    yield server
    server.stop()


def queries_served(prometheus: PrometheusServer) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{prometheus.url}/metrics", timeout=10, trust_env=False).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "prometheus_http_requests_total" and s.labels.get("handler") == "/api/v1/query"
    )


def expected(i: int) -> Observation | None:
    f = series.facts(i)
    if f is None:
        return None
    return Observation(
        int(f["applied_generation"]),
        f["last_apply_success"] == 1.0,
        f["healthy"] == 1.0,
        accepted=int(f["manifest_generation"]),
    )


def targets(indices: range | list[int]) -> list[Target]:
    return [Target(series.node_name(i), "127.0.0.1") for i in indices]


@pytest.mark.parametrize(
    "wave",
    [range(0, 500), range(40_000, 50_000), range(0, NODES)],
    ids=["500 nodes (selected by Prometheus)", "10,000 nodes", "100,000 nodes"],
)
def test_one_query_per_round_reads_every_node_of_the_wave_and_no_other(
    prometheus: PrometheusServer, wave: range
) -> None:
    source = PrometheusSource(prometheus.url, timeout_s=120)
    before = queries_served(prometheus)
    result = anyio.run(source.observe_round, targets(wave))
    assert queries_served(prometheus) - before == 1 and source.queries == 1
    want = {series.node_name(i): o for i in wave if (o := expected(i)) is not None}
    assert result.observations == want
    assert set(result.failed) == {series.node_name(i) for i in wave if expected(i) is None}
    assert all(reason == "absent" for reason in result.failed.values())


def test_rounds_of_the_health_thread_cost_one_query_each(prometheus: PrometheusServer) -> None:
    watcher = HealthWatcher(
        PrometheusSource(prometheus.url, timeout_s=120), interval_s=3600, stale_after_s=7200
    )
    wave = targets(range(10_000, 13_000))
    watcher.watch(wave)
    before = queries_served(prometheus)
    for _ in range(3):
        watcher.run_round(wave)
    assert queries_served(prometheus) - before == 3
    got = watcher.observations(wave)
    assert got[series.node_name(10_005)] == Observation(
        1000 + 10_005 % 7, True, False, accepted=1000 + 10_005 % 7
    )
    assert series.node_name(11_001) not in got  # reports nothing: unknown, not healthy


def test_a_node_name_with_regex_characters_is_matched_literally(
    prometheus: PrometheusServer,
) -> None:
    # "n00000." as a regex would match n000000..n000009; as a literal it names no node.
    result = anyio.run(
        PrometheusSource(prometheus.url).observe_round, [Target("n00000.", "127.0.0.1")]
    )
    assert result.observations == {} and result.failed == {"n00000.": "absent"}


def test_an_unreachable_prometheus_leaves_every_node_unknown() -> None:
    result = anyio.run(
        PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout_s=2).observe_round,
        targets(range(3)),
    )
    assert result.observations == {} and len(result.failed) == 3
