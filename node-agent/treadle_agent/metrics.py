"""The agent's Prometheus metrics; the names are a contract with dashboards and alert rules.

    treadle_agent_info{node,site,cluster,version}       1
    treadle_agent_manifest_generation                    highest accepted generation
    treadle_agent_applied_generation                     generation of the last apply
    treadle_agent_last_apply_success                     1 when nothing failed or was skipped
    treadle_agent_last_apply_timestamp_seconds
    treadle_agent_apply_duration_seconds                 histogram
    treadle_agent_resources{type,status}                 status: in_sync | drifted | failed
    treadle_agent_health_check_up{check}
    treadle_agent_healthy
    treadle_agent_verify_failures_total{reason}
    treadle_agent_fetch_failures_total{reason}
    treadle_agent_manifest_expiry_timestamp_seconds
    treadle_agent_lifecycle{state}                       1 for the manifest's state, 0 for the others

:class:`AgentMetrics` keeps the values as plain numbers, recorded once per
cycle (agent.py) in one update under one lock (:meth:`AgentMetrics.report`):
a scrape sees the generation, the apply result and the health of the same
cycle, never a new generation beside the previous cycle's health (which a
rollout gate with no soak time could take for a pass).
:class:`AgentCollector` turns them into metric families
when Prometheus scrapes, from a dedicated :class:`CollectorRegistry` (never
the global one). prometheus_client is imported only when metrics are served
or rendered: ``treadle-agent once`` serves none, and the import would cost
it a tenth of its time and memory budget.

Every known label value of the counters and of ``resources`` / ``lifecycle``
is exposed from the start at zero, so ``rate()`` and absence alerts work from
the first scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from treadle_agent import __version__
from treadle_agent.contract import names
from treadle_agent.contract.manifest import RESOURCE_ORDER, Manifest
from treadle_agent.contract.names import (
    LIFECYCLE_STATES,
    RESOURCE_STATUS_OF_RESULT,
    RESOURCE_STATUSES,
)
from treadle_agent.fetch import REASONS as FETCH_REASONS
from treadle_agent.verify import REASONS as VERIFY_REASONS

DURATION_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class AgentMetrics:
    """The values behind the agent's series. Writes come from the agent's loop, reads from scrapes."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.lock = threading.Lock()  # a scrape (server thread) never sees half a cycle
        self.site = self.cluster = ""
        self.manifest_generation = 0
        self.applied_generation = 0
        self.last_apply_success = 0
        self.last_apply_timestamp_s = 0.0
        self.duration_bucket_counts = [0] * len(DURATION_BUCKETS_S)
        self.duration_count = 0
        self.duration_sum_s = 0.0
        self.resources = {(t, s): 0 for t in RESOURCE_ORDER for s in RESOURCE_STATUSES}
        self.health_checks: dict[str, bool] = {}
        self.healthy = 0
        self.verify_failures = dict.fromkeys(VERIFY_REASONS, 0)
        self.fetch_failures = dict.fromkeys(FETCH_REASONS, 0)
        self.expiry_timestamp_s = 0.0
        self.lifecycle = dict.fromkeys(LIFECYCLE_STATES, 0)

    def fetch_failed(self, reason: str) -> None:
        with self.lock:
            self.fetch_failures[reason] = self.fetch_failures.get(reason, 0) + 1

    def verify_failed(self, reason: str) -> None:
        with self.lock:
            self.verify_failures[reason] = self.verify_failures.get(reason, 0) + 1

    def report(
        self,
        manifest: Manifest,
        expires_ts: float | None,
        highest_generation: int,
        *,
        ok: bool,
        statuses: Iterable[tuple[str, str]],
        duration_s: float,
        now: float,
        checks: Mapping[str, bool],
    ) -> None:
        """One cycle's outcome, as one consistent update: the manifest enforced, its apply and its health.

        Everything is computed first and swapped in under one hold of the lock, so a scrape sees either
        the previous cycle or this one, whole (see the module docstring).
        """
        counts = _resource_counts(statuses)
        checks = dict(checks)
        with self.lock:
            self._set_manifest(manifest, expires_ts, highest_generation)
            self._set_applied(manifest.generation, ok, counts, duration_s, now)
            self._set_health(checks)

    # The setters below run with the lock held.

    def _set_manifest(
        self, manifest: Manifest, expires_ts: float | None, highest_generation: int
    ) -> None:
        meta = manifest.metadata
        self.site, self.cluster = meta["site"], meta["cluster"]
        self.manifest_generation = highest_generation
        self.expiry_timestamp_s = expires_ts or 0.0
        self.lifecycle = {s: 0 for s in self.lifecycle} | {meta["lifecycle"]: 1}

    def _set_applied(
        self,
        generation: int,
        ok: bool,
        counts: dict[tuple[str, str], int],
        duration_s: float,
        now: float,
    ) -> None:
        self.applied_generation = generation
        self.last_apply_success = 1 if ok else 0
        self.last_apply_timestamp_s = now
        self.resources = counts
        self.duration_count += 1
        self.duration_sum_s += duration_s
        for i, bound in enumerate(DURATION_BUCKETS_S):
            if duration_s <= bound:
                self.duration_bucket_counts[i] += 1

    def _set_health(self, checks: dict[str, bool]) -> None:
        self.health_checks = checks
        self.healthy = 1 if all(checks.values()) else 0

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of one series, as a scrape would show it (for tests and tools)."""
        for family in AgentCollector(self).collect():
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return None

    def registry(self) -> Any:
        """A dedicated CollectorRegistry exposing these metrics."""
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(AgentCollector(self))
        return registry

    def exposition(self) -> bytes:
        """The text exposition of every series (what /metrics serves)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry())

    def serve(self, host: str, port: int) -> tuple[Any, int]:
        """Serve /metrics on ``host:port`` in a daemon thread; returns (server, bound port).

        Port 0 binds a free port; the bound one is returned so it can be logged.

        Raises:
            OSError: the address cannot be bound.
        """
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry())
        return server, server.server_port


class AgentCollector:
    """A prometheus_client collector over :class:`AgentMetrics` (imports it lazily, see the module docstring)."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.metrics
        with m.lock:
            yield _gauge(
                GaugeMetricFamily,
                names.METRIC_INFO,
                "The agent and the node it runs on.",
                {(m.node, m.site, m.cluster, __version__): 1},
                ["node", "site", "cluster", "version"],
            )
            yield GaugeMetricFamily(
                names.METRIC_MANIFEST_GENERATION,
                "Highest accepted manifest generation.",
                value=m.manifest_generation,
            )
            yield GaugeMetricFamily(
                names.METRIC_APPLIED_GENERATION,
                "Generation of the manifest last applied.",
                value=m.applied_generation,
            )
            yield GaugeMetricFamily(
                names.METRIC_LAST_APPLY_SUCCESS,
                "1 when the last apply had no failed or skipped resource.",
                value=m.last_apply_success,
            )
            yield GaugeMetricFamily(
                names.METRIC_LAST_APPLY_TIMESTAMP,
                "Unix time of the last apply.",
                value=m.last_apply_timestamp_s,
            )
            # Each observation already counted in every bucket it fits: the counts are cumulative.
            buckets = [
                (_le(b), n)
                for b, n in zip(DURATION_BUCKETS_S, m.duration_bucket_counts, strict=True)
            ]
            buckets.append(("+Inf", m.duration_count))
            yield HistogramMetricFamily(
                names.METRIC_APPLY_DURATION,
                "Wall time of an apply.",
                buckets=buckets,
                sum_value=m.duration_sum_s,
            )
            yield _gauge(
                GaugeMetricFamily,
                names.METRIC_RESOURCES,
                "Managed resources by type and status.",
                m.resources,
                ["type", "status"],
            )
            yield _gauge(
                GaugeMetricFamily,
                names.METRIC_HEALTH_CHECK_UP,
                "1 when the health check passes.",
                {(k,): int(v) for k, v in m.health_checks.items()},
                ["check"],
            )
            yield GaugeMetricFamily(
                names.METRIC_HEALTHY, "1 when every health check passes.", value=m.healthy
            )
            yield _gauge(
                CounterMetricFamily,
                names.METRIC_VERIFY_FAILURES,
                "Fetched manifests refused, by reason.",
                {(k,): v for k, v in m.verify_failures.items()},
                ["reason"],
            )
            yield _gauge(
                CounterMetricFamily,
                names.METRIC_FETCH_FAILURES,
                "Failed manifest requests, by reason.",
                {(k,): v for k, v in m.fetch_failures.items()},
                ["reason"],
            )
            yield GaugeMetricFamily(
                names.METRIC_MANIFEST_EXPIRY,
                "Unix time the enforced manifest expires.",
                value=m.expiry_timestamp_s,
            )
            yield _gauge(
                GaugeMetricFamily,
                names.METRIC_LIFECYCLE,
                "1 for the node's lifecycle state in its manifest.",
                {(k,): v for k, v in m.lifecycle.items()},
                ["state"],
            )

    def describe(self) -> list[Any]:
        return []


def _resource_counts(statuses: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """(type, status) counts of (resource type, apply result status) pairs, every known pair present."""
    counts = {(t, s): 0 for t in RESOURCE_ORDER for s in RESOURCE_STATUSES}
    for rtype, status in statuses:
        key = (rtype, RESOURCE_STATUS_OF_RESULT.get(status, "failed"))
        counts[key] = counts.get(key, 0) + 1
    return counts


def _le(bound: float) -> str:
    return repr(float(bound))


_Labels = TypeVar("_Labels", bound=tuple[str, ...])  # label values, one per label name


def _gauge(
    cls: Any, name: str, text: str, values: Mapping[_Labels, float], labels: list[str]
) -> Any:
    family = cls(name, text, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family
