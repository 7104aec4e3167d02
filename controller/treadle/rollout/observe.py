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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families

from treadle import log
from treadle.rollout.machine import Observation
from treadle_agent.contract import names
from treadle_agent.contract.names import DEFAULT_METRICS_PORT

T = TypeVar("T")
#: Agent series the gate reads, by the contract's names (treadle_agent.contract.names).
GENERATION = names.METRIC_APPLIED_GENERATION
ACCEPTED = names.METRIC_MANIFEST_GENERATION
APPLY_OK = names.METRIC_LAST_APPLY_SUCCESS
HEALTHY = names.METRIC_HEALTHY
INFO = names.METRIC_INFO
CHECK_UP = names.METRIC_HEALTH_CHECK_UP  # only for naming the failing checks in a halt reason
#: The gauges the Prometheus source reads, by the short name its query keeps in label ``m``.
GAUGES = {
    GENERATION: "applied_generation",
    APPLY_OK: "last_apply_success",
    HEALTHY: "healthy",
    ACCEPTED: "manifest_generation",
}


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

    async def observe_round(self, targets: Sequence[Target]) -> RoundResult:
        """The same, with the reason each absent node gave nothing (see FAILURES)."""
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
    obs = _observation(
        values.get(GENERATION), values.get(APPLY_OK), values.get(HEALTHY), values.get(ACCEPTED)
    )
    return replace(obs, failed_checks=tuple(sorted(failed_checks))) if failed_checks else obs


def _observation(
    generation: float | None,
    apply_ok: float | None,
    healthy: float | None,
    accepted: float | None = None,
) -> Observation:
    def flag(v: float | None) -> bool | None:
        return None if v is None or math.isnan(v) else v == 1.0

    def number(v: float | None) -> int | None:
        return None if v is None or math.isnan(v) or math.isinf(v) else int(v)

    return Observation(
        generation=number(generation),
        apply_ok=flag(apply_ok),
        healthy=flag(healthy),
        accepted=number(accepted),
    )


#: Why a target gave no observation in a round (the ``result`` label of the health metrics, beside ``ok``).
FAILURES = (
    "refused",
    "timeout",
    "http_error",
    "unreadable",
    "too_large",
    "round_deadline",
    "absent",
)
#: An agent's exposition is a few kilobytes; more than this is cut off and counts as unreadable.
MAX_EXPOSITION_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class RoundResult:
    """One round of observation: what each target reported, or why it reported nothing."""

    observations: dict[str, Observation]
    failed: dict[str, str]  # node -> one of FAILURES
    duration_s: float = 0.0


class ScrapeSource:
    """Scrapes every target's /metrics concurrently, with three bounds.

    - at most ``concurrency`` connections are open at once (a capacity limiter
      around each request, and the client's own pool limit);
    - each target gets ``timeout_s`` in all (connect, send, read), so an agent
      that accepts and never answers costs one slot for ``timeout_s``, and one
      that refuses costs a round trip;
    - the whole round gets ``round_s``: targets not answered by then are
      ``round_deadline`` (unknown), never healthy.
    """

    def __init__(
        self,
        timeout_s: float = 2.0,
        concurrency: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
        round_s: float = 30.0,
    ) -> None:
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._round_s = round_s
        self._transport = transport

    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        return (await self.observe_round(targets)).observations

    async def observe_round(self, targets: Sequence[Target]) -> RoundResult:
        started = time.perf_counter()
        results, failed = await scrape(
            targets,
            _parse_bytes,
            timeout_s=self._timeout_s,
            concurrency=self._concurrency,
            round_s=self._round_s,
            transport=self._transport,
        )
        return RoundResult(results, failed, time.perf_counter() - started)


def _parse_bytes(body: bytes, node: str) -> Observation | None:
    return parse_exposition(body.decode("utf-8", "replace"), node)


async def scrape(
    targets: Sequence[Target],
    parse: Callable[[bytes, str], T | None],
    *,
    timeout_s: float,
    concurrency: int,
    round_s: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[dict[str, T], dict[str, str]]:
    """Every target's /metrics, parsed: (node -> parsed, node -> why nothing, one of FAILURES).

    The bounds of :class:`ScrapeSource`; the console's fleet sweep reads its
    own facts from the same bodies with another ``parse``. A body ``parse``
    turns into None is ``unreadable``.
    """
    results: dict[str, T] = {}
    failed: dict[str, str] = {}
    limiter = anyio.CapacityLimiter(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)

    async def one(client: httpx.AsyncClient, target: Target) -> None:
        async with limiter:
            with anyio.move_on_after(timeout_s) as scope:
                outcome = await _fetch(client, target)
            if scope.cancelled_caught:
                outcome = "timeout"
        if isinstance(outcome, str):
            failed[target.node] = outcome
            log.warning("scrape.failed", node=target.node, url=target.url, error=outcome)
            return
        parsed = parse(outcome, target.node)
        if parsed is None:
            failed[target.node] = "unreadable"
        else:
            results[target.node] = parsed

    async with httpx.AsyncClient(
        timeout=timeout_s, transport=transport, trust_env=False, limits=limits
    ) as client:
        with anyio.move_on_after(round_s):
            async with anyio.create_task_group() as tg:
                for t in targets:
                    tg.start_soon(one, client, t)
    for t in targets:
        if t.node not in results and t.node not in failed:
            failed[t.node] = "round_deadline"
    return results, failed


async def _fetch(client: httpx.AsyncClient, target: Target) -> bytes | str:
    """The body of the target's /metrics, or why there is none (one of FAILURES)."""
    try:
        async with client.stream("GET", target.url) as response:
            if response.status_code != 200:
                return "http_error"
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_EXPOSITION_BYTES:
                    return "too_large"
            return bytes(body)
    except httpx.ConnectError:
        return "refused"
    except httpx.TimeoutException:
        return "timeout"
    except (httpx.HTTPError, httpx.InvalidURL):  # InvalidURL: an address no URL can hold
        return "http_error"


class PrometheusSource:
    """Reads the same facts from a Prometheus server's query API: one query per round, whatever the wave's size.

    Agents' series carry no ``node`` label of their own (Prometheus adds
    ``instance``); the query joins on ``treadle_agent_info`` to name the node,
    and ``label_replace`` keeps each series' name in a label ``m``, so the
    four facts of every node come back in one answer. A wave of up to
    ``REGEX_MAX_NODES`` nodes is selected on the server (``node=~"a|b|..."``,
    sent as a POST form, so no URL length applies); a larger wave reads every
    node's facts and keeps the wave's here, which bounds the query's size.
    """

    #: Above this many nodes, the regex (about 20 bytes a node) costs the server more than it saves.
    REGEX_MAX_NODES = 2000

    def __init__(
        self, url: str, timeout_s: float = 5.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._url = url.rstrip("/") + "/api/v1/query"
        self._timeout_s = timeout_s
        self._transport = transport
        #: Queries sent since this source was made (tests and the benchmark read it).
        self.queries = 0

    @staticmethod
    def query(nodes: Sequence[str] | None = None) -> str:
        """The one PromQL query of a round: the wave's ``nodes`` (None: every node)."""
        short = "|".join(sorted(GAUGES[m] for m in GAUGES))
        prefix = names.METRIC_PREFIX
        selector = (
            f'{INFO}{{node=~"{"|".join(_regex_literal(n) for n in sorted(nodes))}"}}'
            if nodes is not None
            else INFO
        )
        return (
            f'max by (node, m) (label_replace({{__name__=~"{prefix}({short})"}}, "m", "$1", "__name__", '
            f'"{prefix}(.*)") * on (instance) group_left (node) {selector})'
        )

    async def observe(self, targets: Sequence[Target]) -> dict[str, Observation]:
        wanted = {t.node for t in targets}
        if not wanted:
            return {}
        promql = self.query(sorted(wanted) if len(wanted) <= self.REGEX_MAX_NODES else None)
        async with httpx.AsyncClient(
            timeout=self._timeout_s, transport=self._transport, trust_env=False
        ) as client:
            try:
                columns = await self._columns(client, promql)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
                log.warning("prometheus.query_failed", error=str(e) or type(e).__name__)
                return {}  # an unreadable answer makes every node's data incomplete
        return {
            node: _observation(
                *(columns[m].get(node) for m in (GENERATION, APPLY_OK, HEALTHY, ACCEPTED))
            )
            for node in wanted
            if node in columns[GENERATION]
        }

    async def observe_round(self, targets: Sequence[Target]) -> RoundResult:
        started = time.perf_counter()
        found = await self.observe(targets)
        return RoundResult(
            found,
            {t.node: "absent" for t in targets if t.node not in found},
            time.perf_counter() - started,
        )

    async def _columns(self, client: httpx.AsyncClient, promql: str) -> dict[str, dict[str, float]]:
        """Per metric, each node's value. Raises httpx.HTTPError, ValueError, KeyError, TypeError."""
        self.queries += 1
        response = await client.post(self._url, data={"query": promql})
        response.raise_for_status()
        return columns_from_answer(response.json())


def columns_from_answer(body: Any) -> dict[str, dict[str, float]]:
    """Per gauge, each node's value, from the JSON answer to :meth:`PrometheusSource.query`.

    A result without a node, with an unknown ``m`` or a value that is no
    number is skipped; NaN and infinities are kept (:func:`_observation`
    makes them missing data).

    Raises:
        ValueError, KeyError, TypeError: the answer is not a successful vector (every node is then unknown).
    """
    if (
        not isinstance(body, dict)
        or body.get("status") != "success"
        or body["data"]["resultType"] != "vector"
    ):
        error = (
            body.get("error", body.get("status")) if isinstance(body, dict) else type(body).__name__
        )
        raise ValueError(f"unexpected answer: {error}")
    by_short = {short: metric for metric, short in GAUGES.items()}
    columns: dict[str, dict[str, float]] = {m: {} for m in GAUGES}
    for r in body["data"]["result"]:
        labels = r.get("metric") if isinstance(r, dict) else None
        value = r.get("value") if isinstance(r, dict) else None
        if not isinstance(labels, dict) or not isinstance(value, list) or len(value) != 2:
            continue
        metric, node = by_short.get(str(labels.get("m", ""))), labels.get("node")
        if metric is None or not isinstance(node, str):
            continue
        try:
            columns[metric][node] = float(value[1])
        except (TypeError, ValueError):
            continue
    return columns


def _regex_literal(name: str) -> str:
    """``name`` as a literal inside a PromQL (RE2) regex written in a double-quoted PromQL string."""
    regex = "".join("\\" + c if c in _REGEX_SPECIAL else c for c in name)
    return regex.replace("\\", "\\\\").replace('"', '\\"')


_REGEX_SPECIAL = frozenset(".+*?()|[]{}^$\\")


def source_from_config(
    kind: str,
    prometheus_url: str | None,
    timeout_s: float,
    concurrency: int = 64,
    round_s: float = 30.0,
) -> HealthSource:
    """The configured health source (controller.toml ``[health]``, as :mod:`treadle.daemon.config` validated it)."""
    if kind == "prometheus":
        assert prometheus_url, (
            "treadle.daemon.config refuses health.source = prometheus without prometheus_url"
        )
        return PrometheusSource(prometheus_url, timeout_s)
    return ScrapeSource(timeout_s, concurrency, round_s=round_s)
