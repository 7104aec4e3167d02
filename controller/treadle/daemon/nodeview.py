"""One node as an operator asks about it: ``GET /v1/nodes/<node>`` and ``GET /v1/nodes/<node>/history``.

"What is node X running, and since when?" has three sources, read in this order:

- the controller's state and publish store: lifecycle, labels, the generation
  published for it and the commit it came from;
- the rollouts: the newest one whose waves hold the node, its wave and the
  node's status there;
- the node's own agent, asked now (its ``/metrics``, where the fabric says it
  serves them): applied generation, last apply and its time, health checks,
  drifted and failed resource counts. Unreachable or unreadable is said so,
  never guessed.

The documents' formats are ``schemas/node-status.json`` and
``schemas/node-history.json``. The DESIGN rule "no per-node series on the
controller" stands: this is a request-time view, not a metric.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from treadle import log
from treadle.daemon.sign import manifest_from_envelope
from treadle.rollout.observe import Target
from treadle_agent.contract import names

_GAUGES = {
    names.METRIC_MANIFEST_GENERATION: "manifest_generation",
    names.METRIC_APPLIED_GENERATION: "applied_generation",
    names.METRIC_LAST_APPLY_SUCCESS: "last_apply_success",
    names.METRIC_LAST_APPLY_TIMESTAMP: "last_apply_at",
    names.METRIC_HEALTHY: "healthy",
}
#: Caps on what one exposition may make us keep: a hostile or broken agent cannot grow the answer without bound.
MAX_EXPOSITION_BYTES = 4 * 1024 * 1024
MAX_CHECKS = 1000


def parse_agent_metrics(text: str, node: str) -> dict[str, Any] | None:
    """The facts in one agent's exposition; None when it is unreadable or claims another node.

    Raises nothing: a malformed exposition is missing data.
    """
    if len(text) > MAX_EXPOSITION_BYTES:
        return None
    out: dict[str, Any] = {
        "version": None,
        "health_checks": {},
        "resources": dict.fromkeys(names.RESOURCE_STATUSES, 0),
    }
    info_node = None
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                value = s.value
                if isinstance(value, float) and math.isnan(value):
                    continue
                if s.name in _GAUGES:
                    key = _GAUGES[s.name]
                    out[key] = (
                        bool(value == 1.0)
                        if key in ("last_apply_success", "healthy")
                        else (float(value) if key == "last_apply_at" else int(value))
                    )
                elif s.name == names.METRIC_INFO:
                    info_node, out["version"] = s.labels.get("node"), s.labels.get("version")
                elif (
                    s.name == names.METRIC_HEALTH_CHECK_UP
                    and len(out["health_checks"]) < MAX_CHECKS
                ):
                    out["health_checks"][str(s.labels.get("check", ""))] = bool(value == 1.0)
                elif (
                    s.name == names.METRIC_RESOURCES and s.labels.get("status") in out["resources"]
                ):
                    out["resources"][s.labels["status"]] += int(value)
    except (ValueError, TypeError, OverflowError, KeyError):
        return None
    if info_node != node:
        return None
    return out


def observe(
    target: Target | None, timeout_s: float, transport: httpx.BaseTransport | None = None
) -> dict[str, Any]:
    """Ask ``target``'s agent now; the observation document (``reachable`` false with the error when it cannot be read)."""
    if target is None:
        return {
            "reachable": False,
            "url": None,
            "at": time.time(),
            "error": "the controller does not know where this node's agent serves its metrics (no good render yet)",
        }
    doc: dict[str, Any] = {"url": target.url, "at": time.time()}
    try:
        with httpx.Client(timeout=timeout_s, transport=transport, trust_env=False) as client:
            response = client.get(target.url)
            response.raise_for_status()
    except httpx.HTTPError as e:
        log.warning(
            "scrape.failed", node=target.node, url=target.url, error=str(e) or type(e).__name__
        )
        return {
            **doc,
            "reachable": False,
            "error": f"cannot read {target.url}: {e or type(e).__name__}",
        }
    facts = parse_agent_metrics(response.text, target.node)
    if facts is None:
        log.warning("scrape.unreadable", node=target.node, url=target.url)
        return {
            **doc,
            "reachable": False,
            "error": f"{target.url} answered, but not with {target.node}'s agent metrics",
        }
    return {**doc, "reachable": True, "error": None, **facts}


def node_document(
    ctx: Any, node: str, target_of: Callable[[str], Target | None] | None, timeout_s: float
) -> dict[str, Any] | None:
    """The body of ``GET /v1/nodes/<node>``; None when the controller never published anything for ``node``."""
    record = ctx.state.nodes().get(node)
    if record is None:
        return None
    meta: dict[str, Any] = {}
    data = ctx.store.read(node) if record.present else None
    if data is not None:
        try:
            meta = manifest_from_envelope(data)["metadata"]
        except (ValueError, KeyError, TypeError):
            meta = {}
    history = ctx.state.node_history(node, limit=1)
    since = next((h["at"] for h in history if h["generation"] == record.published_generation), None)
    return {
        "node": node,
        "present": record.present,
        "lifecycle": record.lifecycle,
        "site": meta.get("site"),
        "cluster": meta.get("cluster"),
        "address": meta.get("address"),
        "labels": dict(meta.get("labels") or {}),
        "published": {
            "generation": record.published_generation,
            "commit": record.commit,
            "since": since,
            "expires": record.expires,
        },
        "rollout": None if ctx.rollouts is None else ctx.rollouts.node_position(node),
        "observation": observe(target_of(node) if target_of and record.present else None, timeout_s)
        if record.present
        else None,
    }


def history_document(ctx: Any, node: str, limit: int = 100) -> dict[str, Any] | None:
    """The body of ``GET /v1/nodes/<node>/history``; None for a node never published."""
    if node not in ctx.state.nodes():
        return None
    return {"node": node, "history": ctx.state.node_history(node, limit=limit)}
