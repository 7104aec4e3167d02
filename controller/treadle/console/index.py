"""The fabric as the console searches it: every node's site, cluster, lifecycle and labels, in memory.

Labels, site and cluster live in the signed manifests of the publish store;
reading 10,000 of them per request would be far too slow, so the index keeps
them and re-reads a node's manifest only when the generation published for
it changed (the state database says so in one query). Filtering and paging
happen here, on the server: the browser receives one page of rows.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from treadle.console.health import DRIFT, HEALTH, UNKNOWN
from treadle.daemon.sign import manifest_from_envelope

PAGE_SIZE = 100
MAX_QUERY = 200


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    lifecycle: str
    generation: int
    commit: str | None
    present: bool
    site: str | None = None
    cluster: str | None = None
    address: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Filters:
    text: str = ""
    lifecycle: str = ""
    site: str = ""
    cluster: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    health: str = ""  # one of treadle.console.health.HEALTH, by the last sweep of the agents
    drift: str = ""  # one of treadle.console.health.DRIFT


@dataclass(frozen=True)
class SearchResult:
    rows: list[NodeInfo]
    total: int
    page: int
    pages: int


def parse_filters(params: Any) -> tuple[Filters, list[str]]:
    """The filters of a query string (``q``, ``lifecycle``, ``site``, ``cluster``, ``health``, ``drift``,
    ``label=k=v`` repeated).

    Never raises: what cannot be used is left out and said in the returned problems.
    """
    problems = []
    labels = []
    for raw in params.getlist("label") if hasattr(params, "getlist") else []:
        raw = str(raw)[:MAX_QUERY]
        if not raw:
            continue
        key, sep, value = raw.partition("=")
        if not sep or not key:
            problems.append(f"label filter {raw!r} ignored: write it as key=value")
            continue
        labels.append((key.strip(), value.strip()))
    health, drift = str(params.get("health", "")), str(params.get("drift", ""))
    if health and health not in HEALTH:
        problems.append(f"health filter {health[:40]!r} ignored: it is one of {', '.join(HEALTH)}")
        health = ""
    if drift and drift not in DRIFT:
        problems.append(f"drift filter {drift[:40]!r} ignored: it is one of {', '.join(DRIFT)}")
        drift = ""
    return Filters(
        text=str(params.get("q", ""))[:MAX_QUERY].strip().lower(),
        lifecycle=str(params.get("lifecycle", ""))[:MAX_QUERY],
        site=str(params.get("site", ""))[:MAX_QUERY],
        cluster=str(params.get("cluster", ""))[:MAX_QUERY],
        labels=tuple(labels),
        health=health,
        drift=drift,
    ), problems


def matches(n: NodeInfo, f: Filters, seen: Mapping[str, Any] | None = None) -> bool:
    """Whether ``n`` passes ``f``; ``seen`` maps node names to their agent's last answer (health.Seen)."""
    if f.health or f.drift:
        health, drift = _seen_of(n.name, seen)
        if (f.health and health != f.health) or (f.drift and drift != f.drift):
            return False
    if f.lifecycle and n.lifecycle != f.lifecycle:
        return False
    if f.site and n.site != f.site:
        return False
    if f.cluster and n.cluster != f.cluster:
        return False
    for k, v in f.labels:
        if n.labels.get(k) != v:
            return False
    if f.text:
        if f.text in n.name.lower():
            return True
        return any(f.text in k.lower() or f.text in str(v).lower() for k, v in n.labels.items())
    return True


def _seen_of(name: str, seen: Mapping[str, Any] | None) -> tuple[str, str]:
    hit = (seen or {}).get(name)
    return UNKNOWN if hit is None else (hit.health, hit.drift)


class NodeIndex:
    """Every node the controller knows, with its manifest's metadata; refreshed per node when it is republished."""

    def __init__(self, state: Any, store: Any) -> None:
        self._state, self._store = state, store
        self._lock = threading.Lock()
        self._by_name: dict[str, tuple[tuple[int, bool], NodeInfo]] = {}

    def manifest(self, name: str) -> dict[str, Any] | None:
        data = self._store.read(name)
        if data is None:
            return None
        try:
            return manifest_from_envelope(data)
        except (ValueError, KeyError, TypeError):
            return None

    def nodes(self) -> list[NodeInfo]:
        """Every node, sorted by name."""
        records = self._state.nodes()
        with self._lock:
            fresh: dict[str, tuple[tuple[int, bool], NodeInfo]] = {}
            for name, rec in records.items():
                key = (rec.published_generation, rec.present)
                hit = self._by_name.get(name)
                if hit is None or hit[0] != key:
                    meta = (self.manifest(name) or {}).get("metadata", {}) if rec.present else {}
                    raw_labels = meta.get("labels")
                    labels = raw_labels if isinstance(raw_labels, dict) else {}
                    hit = (
                        key,
                        NodeInfo(
                            name=name,
                            lifecycle=rec.lifecycle,
                            generation=rec.published_generation,
                            commit=rec.commit,
                            present=rec.present,
                            site=meta.get("site"),
                            cluster=meta.get("cluster"),
                            address=meta.get("address"),
                            labels={str(k): str(v) for k, v in labels.items()},
                        ),
                    )
                elif hit[1].lifecycle != rec.lifecycle or hit[1].commit != rec.commit:
                    hit = (
                        key,
                        NodeInfo(
                            **{
                                **{s: getattr(hit[1], s) for s in NodeInfo.__slots__},
                                "lifecycle": rec.lifecycle,
                                "commit": rec.commit,
                            }
                        ),
                    )
                fresh[name] = hit
            self._by_name = fresh
            return [fresh[n][1] for n in sorted(fresh)]

    def search(
        self,
        f: Filters,
        page: int = 1,
        page_size: int = PAGE_SIZE,
        seen: Mapping[str, Any] | None = None,
    ) -> SearchResult:
        found = [n for n in self.nodes() if matches(n, f, seen)]
        pages = max(1, -(-len(found) // page_size))
        page = min(max(1, page), pages)
        return SearchResult(
            rows=found[(page - 1) * page_size : page * page_size],
            total=len(found),
            page=page,
            pages=pages,
        )

    def tree(self) -> dict[str, dict[str, int]]:
        """Sites → clusters → how many nodes, sorted by name (nodes without a site or cluster under "—")."""
        out: dict[str, dict[str, int]] = {}
        for n in self.nodes():
            clusters = out.setdefault(n.site or "—", {})
            clusters[n.cluster or "—"] = clusters.get(n.cluster or "—", 0) + 1
        return {site: dict(sorted(c.items())) for site, c in sorted(out.items())}

    def choices(self) -> dict[str, list[str]]:
        """The values the filters can take: lifecycles, sites, clusters."""
        nodes = self.nodes()
        return {
            "lifecycle": sorted({n.lifecycle for n in nodes}),
            "site": sorted({n.site for n in nodes if n.site}),
            "cluster": sorted({n.cluster for n in nodes if n.cluster}),
        }


@dataclass(frozen=True)
class RackSlot:
    unit: str
    node: NodeInfo
    status: str  # the running rollout's status of the node, "" when it is not in the current wave


@dataclass(frozen=True)
class Rack:
    room: str
    rack: str
    slots: list[RackSlot]


def _unit_order(unit: str) -> tuple[int, str]:
    digits = re.search(r"\d+", unit)
    return (int(digits.group()) if digits else -1, unit)


def rack_elevations(
    nodes: Iterable[NodeInfo], site: str, progress: Mapping[str, str]
) -> list[Rack]:
    """The racks of ``site`` from the node labels ``room``, ``rack`` and ``unit``: top unit first, racks by room and name.

    A node without a ``rack`` label is in no rack; one without ``unit`` sorts below the numbered units.
    """
    racks: dict[tuple[str, str], list[RackSlot]] = {}
    for n in nodes:
        if n.site != site or "rack" not in n.labels:
            continue
        key = (n.labels.get("room", ""), n.labels["rack"])
        racks.setdefault(key, []).append(
            RackSlot(n.labels.get("unit", ""), n, progress.get(n.name, ""))
        )
    return [
        Rack(
            room,
            rack,
            sorted(slots, key=lambda s: (_unit_order(s.unit), s.node.name), reverse=True),
        )
        for (room, rack), slots in sorted(racks.items())
    ]
