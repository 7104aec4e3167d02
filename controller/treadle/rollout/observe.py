"""Health sources: what the agents of a wave report, as :class:`Observation` values.

Two sources answer the same question:

- :class:`ScrapeSource` (the default) reads each agent's ``/metrics``
  directly, at the address the fabric gives, and parses it with
  prometheus-client's parser.
- :class:`PrometheusSource` asks a Prometheus server (PromQL over the
  agents' metrics), for fabrics where the controller cannot reach nodes.

Both are conservative: a node whose data is missing, unreadable, or claims
to be another node (``treadle_agent_info{node}`` differs) is simply absent
from the result, which the state machine never counts as a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families

from treadle.rollout.machine import Observation

from treadle import log

DEFAULT_METRICS_PORT = 9731
#: Agent series the gate reads; names are DESIGN.md's contract.
GENERATION = "treadle_agent_applied_generation"
ACCEPTED = "treadle_agent_manifest_generation"
APPLY_OK = "treadle_agent_last_apply_success"
HEALTHY = "treadle_agent_healthy"
INFO = "treadle_agent_info"
CHECK_UP = "treadle_agent_health_check_up"  # only for naming the failing checks in a halt reason


@dataclass(frozen=True, slots=True)
class Target:
    """Where a node's agent serves its metrics."""

    node: str
    address: str
    port: int = DEFAULT_METRICS_PORT

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"


class HealthSource(Protocol):
    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        """Observations for the nodes that reported readable data; others are absent."""
        ...


def parse_exposition(text: str, node: str) -> Observation | None:
    """The observation in one agent's exposition, or None when it is unreadable or another node's.

    Raises nothing: a malformed exposition is missing data.
    """
    values: dict[str, float] = {}
    failed_checks: list[str] = []
    info_node = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (GENERATION, APPLY_OK, HEALTHY, ACCEPTED):
                    values[sample.name] = sample.value
                elif sample.name == CHECK_UP and sample.value != 1.0:
                    failed_checks.append(str(sample.labels.get("check", "?")))
                elif sample.name == INFO:
                    info_node = sample.labels.get("node")
    except (ValueError, TypeError) as e:
        log.warning("scrape.unreadable", node=node, error=str(e))
        return None
    if info_node != node:
        if info_node is not None:
            log.warning("scrape.wrong_node", node=node, claims=info_node, action="ignored")
        return None
    obs = _observation(values.get(GENERATION), values.get(APPLY_OK), values.get(HEALTHY), values.get(ACCEPTED))
    return replace(obs, failed_checks=tuple(sorted(failed_checks))) if failed_checks else obs


def _observation(generation: float | None, apply_ok: float | None, healthy: float | None,
                 accepted: float | None = None) -> Observation:
    def flag(v: float | None) -> bool | None:
        return None if v is None or math.isnan(v) else v == 1.0

    def number(v: float | None) -> int | None:
        return None if v is None or math.isnan(v) or math.isinf(v) else int(v)

    return Observation(generation=number(generation), apply_ok=flag(apply_ok), healthy=flag(healthy),
                       accepted=number(accepted))


class ScrapeSource:
    """Scrapes every target's /metrics concurrently (bounded), each with a timeout."""

    def __init__(self, timeout_s: float = 2.0, concurrency: int = 64, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._timeout_s = timeout_s
        self._limit = anyio.CapacityLimiter(concurrency)
        self._transport = transport

    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        results: dict[str, Observation] = {}
        async with httpx.AsyncClient(timeout=self._timeout_s, transport=self._transport, trust_env=False) as client:
            async with anyio.create_task_group() as tg:
                for t in targets:
                    tg.start_soon(self._one, client, t, results)
        return results

    async def _one(self, client: httpx.AsyncClient, target: Target, results: dict[str, Observation]) -> None:
        async with self._limit:
            try:
                response = await client.get(target.url)
                response.raise_for_status()
            except httpx.HTTPError as e:
                log.warning("scrape.failed", node=target.node, url=target.url, error=str(e) or type(e).__name__)
                return
        obs = parse_exposition(response.text, target.node)
        if obs is not None:
            results[target.node] = obs


class PrometheusSource:
    """Reads the same facts from a Prometheus server's query API.

    Agents' series carry no ``node`` label of their own (Prometheus adds
    ``instance``); each query joins on ``treadle_agent_info`` to name the node.
    """

    def __init__(self, url: str, timeout_s: float = 5.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._url = url.rstrip("/") + "/api/v1/query"
        self._timeout_s = timeout_s
        self._transport = transport

    @staticmethod
    def query(metric: str) -> str:
        return f"max by (node) ({metric} * on (instance) group_left (node) {INFO})"

    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        wanted = {t.node for t in targets}
        columns: dict[str, dict[str, float]] = {}
        async with httpx.AsyncClient(timeout=self._timeout_s, transport=self._transport, trust_env=False) as client:
            for metric in (GENERATION, APPLY_OK, HEALTHY, ACCEPTED):
                try:
                    columns[metric] = await self._vector(client, self.query(metric))
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    log.warning("prometheus.query_failed", metric=metric, error=str(e))
                    return {}  # one unreadable column makes every node's data incomplete
        return {
            node: _observation(columns[GENERATION].get(node), columns[APPLY_OK].get(node), columns[HEALTHY].get(node),
                               columns[ACCEPTED].get(node))
            for node in wanted if node in columns[GENERATION]
        }

    async def _vector(self, client: httpx.AsyncClient, promql: str) -> dict[str, float]:
        response = await client.get(self._url, params={"query": promql})
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success" or body["data"]["resultType"] != "vector":
            raise ValueError(f"unexpected answer to {promql!r}: {body.get('error', body.get('status'))}")
        return {r["metric"]["node"]: float(r["value"][1]) for r in body["data"]["result"] if "node" in r["metric"]}


def source_from_config(kind: str, prometheus_url: str | None, timeout_s: float) -> HealthSource:
    """The configured health source (controller.toml ``[health]``, as :mod:`treadle.config` validated it)."""
    if kind == "prometheus":
        assert prometheus_url, "treadle.config refuses health.source = prometheus without prometheus_url"
        return PrometheusSource(prometheus_url, timeout_s)
    return ScrapeSource(timeout_s)
