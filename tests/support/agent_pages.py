"""Agents' /metrics pages without agents: what the health sources and the console's sweep read.

The ``agent_pages`` fixture (tests/conftest.py) serves such pages, many agents on one server: GET /<node>/metrics
answers the node's page, which is why the targets here name the node in the URL's path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Info, generate_latest

from treadle.rollout.observe import Target


def exposition(node: str, generation: int, ok: int, healthy: int) -> str:
    """An agent's page as its own metrics library writes it: identity, applied generation, apply result, health."""
    reg = CollectorRegistry()
    Info("treadle_agent", "agent", registry=reg).info(
        {"node": node, "site": "s", "cluster": "c", "version": "0.1.0"}
    )
    Gauge("treadle_agent_applied_generation", "g", registry=reg).set(generation)
    Gauge("treadle_agent_last_apply_success", "g", registry=reg).set(ok)
    Gauge("treadle_agent_healthy", "g", registry=reg).set(healthy)
    return generate_latest(reg).decode()


class PathTarget(Target):
    """A target whose URL path names the node, so one test server plays many agents."""

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/{self.node}/metrics"
