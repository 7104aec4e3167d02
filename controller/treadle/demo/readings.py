"""What the demo reads: the agents' /metrics and the controller's API, as plain values.

Everything is read the way an operator would (HTTP, the metric names
DESIGN.md fixes), never from the processes' internals. An agent that does
not answer is reported as None: the story treats it as not converged.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from treadle_agent.contract import names

TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class AgentReport:
    """One agent's view of itself, from its /metrics."""

    node: str
    applied_generation: int
    healthy: bool
    apply_ok: bool
    lifecycle: str | None  # the state whose treadle_agent_lifecycle{state} is 1


def parse_agent_metrics(node: str, text: str) -> AgentReport:
    """The report in one exposition; missing series read as 0 / unhealthy.

    Raises:
        ValueError: the exposition cannot be parsed.
    """
    values: dict[str, float] = {}
    lifecycle = None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == names.METRIC_LIFECYCLE and s.value == 1:
                lifecycle = s.labels.get("state")
            elif s.name in (
                names.METRIC_APPLIED_GENERATION,
                names.METRIC_HEALTHY,
                names.METRIC_LAST_APPLY_SUCCESS,
            ):
                values[s.name] = s.value
    return AgentReport(
        node=node,
        applied_generation=int(values.get(names.METRIC_APPLIED_GENERATION, 0)),
        healthy=values.get(names.METRIC_HEALTHY, 0) == 1,
        apply_ok=values.get(names.METRIC_LAST_APPLY_SUCCESS, 0) == 1,
        lifecycle=lifecycle,
    )


def read_agent(client: httpx.Client, node: str, url: str) -> AgentReport | None:
    try:
        response = client.get(url)
        response.raise_for_status()
        return parse_agent_metrics(node, response.text)
    except (httpx.HTTPError, ValueError):
        return None


class Observer:
    """Reads the fleet; one HTTP client reused for every request."""

    def __init__(self, controller_url: str, agents: Iterable[tuple[str, str]]) -> None:
        self.controller_url = controller_url.rstrip("/")
        self.agents = dict(agents)  # node -> metrics URL
        self.client = httpx.Client(timeout=TIMEOUT_S)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="observe")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def agents_now(self) -> dict[str, AgentReport | None]:
        """Every agent's report, read concurrently."""
        names = list(self.agents)
        reports = self._pool.map(lambda n: read_agent(self.client, n, self.agents[n]), names)
        return dict(zip(names, reports, strict=True))

    def api(self, path: str, method: str = "GET") -> Any:
        """A JSON document from the controller, or None when it does not answer (yet) or refuses."""
        try:
            response = self.client.request(method, self.controller_url + path)
        except httpx.HTTPError:
            return None
        if response.status_code >= 400:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def status(self) -> dict[str, Any] | None:
        return self.api("/v1/status")

    def rollouts(self) -> list[dict[str, Any]]:
        doc = self.api("/v1/rollouts")
        return list(doc.get("rollouts", [])) if isinstance(doc, dict) else []

    def rollout_for(self, commit: str) -> dict[str, Any] | None:
        """The newest rollout of ``commit``, with its events and progress."""
        for r in self.rollouts():
            if r.get("commit") == commit:
                detail = self.api(f"/v1/rollouts/{r['id']}")
                return detail if isinstance(detail, dict) else r
        return None
