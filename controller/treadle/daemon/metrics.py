"""The controller's Prometheus metrics, in a registry of its own.

The names are a contract (DESIGN.md, "Metrics"): the Grafana dashboard and the
alert rules use them. There is no per-node series on the controller: with
10,000 nodes that would be 10,000 series per metric, and per-node facts come
from the agents themselves.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from treadle.errors import REFUSAL_REASONS
from treadle_agent.contract.names import LIFECYCLE_STATES

#: Rendering a whole 10,000-node fabric takes seconds, an incremental one milliseconds.
RENDER_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: The ``result`` label values of treadle_controller_commits_total.
COMMIT_RESULTS = ("deployed", "refused")


class ControllerMetrics:
    """Every controller series; one instance per controller process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Gauge(
            "treadle_controller_info",
            "The controller (value 1), with its version.",
            ["version"],
            registry=r,
        )
        from treadle import __version__

        self.info.labels(version=__version__).set(1)
        self.deployed_commit_info = Gauge(
            "treadle_controller_deployed_commit_info",
            "The commit whose manifests are published (value 1).",
            ["commit"],
            registry=r,
        )
        self.commits_total = Counter(
            "treadle_controller_commits_total",
            "Commits processed, by result (deployed, refused).",
            ["result"],
            registry=r,
        )
        self.rejected_commits_total = Counter(
            "treadle_controller_rejected_commits_total",
            "Commits refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.render_duration_seconds = Histogram(
            "treadle_controller_render_duration_seconds",
            "Time to load, render and check one commit.",
            buckets=RENDER_BUCKETS_S,
            registry=r,
        )
        self.nodes = Gauge(
            "treadle_controller_nodes",
            "Nodes in the deployed fabric, by lifecycle.",
            ["lifecycle"],
            registry=r,
        )
        self.rollout_wave_nodes = Gauge(
            "treadle_rollout_wave_nodes",
            "Nodes of the current rollout, by wave and status.",
            ["wave", "status"],
            registry=r,
        )
        self.rollout_state = Gauge(
            "treadle_rollout_state",
            "The rollout state machine's state (value 1 for the current one).",
            ["state"],
            registry=r,
        )
        self.health_observations_total = Counter(
            "treadle_controller_health_observations_total",
            "Agents asked by the health source, by result (ok, or why nothing came: refused, timeout, ...).",
            ["result"],
            registry=r,
        )
        self.health_round_duration_seconds = Histogram(
            "treadle_controller_health_round_duration_seconds",
            "Time one round of health observation took.",
            buckets=RENDER_BUCKETS_S,
            registry=r,
        )
        self._commit: str | None = None
        # Every label value of the counters exists from the start, at 0: a series born at 1 on
        # its first event has no earlier sample, and increase() over it says 0.
        for result in COMMIT_RESULTS:
            self.commits_total.labels(result=result)
        for reason in REFUSAL_REASONS:
            self.rejected_commits_total.labels(reason=reason)
        from treadle.rollout.observe import FAILURES

        for result in ("ok", *FAILURES):
            self.health_observations_total.labels(result=result)

    def set_deployed_commit(self, commit: str | None) -> None:
        """Exactly one ``commit`` label carries 1: the old one is removed, not zeroed."""
        if commit == self._commit:
            return
        if self._commit is not None:
            self.deployed_commit_info.remove(self._commit)
        if commit is not None:
            self.deployed_commit_info.labels(commit=commit).set(1)
        self._commit = commit

    def set_lifecycle_counts(self, counts: Mapping[str, int]) -> None:
        """Publish node counts by lifecycle; lifecycles no longer present drop to 0."""
        for lifecycle in set(LIFECYCLE_STATES) | set(counts):
            self.nodes.labels(lifecycle=lifecycle).set(counts.get(lifecycle, 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
