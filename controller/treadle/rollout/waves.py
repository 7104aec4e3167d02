"""Assigning a commit's changed nodes to waves.

Deterministic: the same changed nodes and policy always give the same waves,
whatever order they arrive in, so ``treadle plan`` on a pull request shows
exactly what the controller will do after the merge.

For each wave, in order, among the nodes not yet assigned:

1. nodes pinned to this wave (``rollout.wave`` in the node file) join it;
2. unpinned nodes its selector matches are eligible (pinned nodes only ever
   join their own wave);
3. with ``fraction``, each cluster contributes ``floor(fraction * n)`` of its
   ``n`` eligible nodes — never more than that share of any cluster, so a
   small cluster may contribute none (rounding up would put half of a
   two-node cluster in a "10 %" wave); without ``fraction``, all eligible
   nodes join. Within a cluster, nodes are taken in the order of a hash of
   their name, which spreads a wave across racks rather than taking the
   alphabetically first ones.

Nodes no wave took (selectors that missed them, pins to unknown waves) join
the last wave, so every changed node receives the change exactly once.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from treadle.rollout.policy import RolloutPolicy, WaveSpec

if TYPE_CHECKING:
    from treadle.rollout.machine import Rollout


@dataclass(frozen=True, slots=True)
class Candidate:
    """A changed node, as wave assignment sees it."""

    name: str
    site: str
    cluster: str
    labels: Mapping[str, str] = field(default_factory=dict)
    pinned_wave: str | None = None


def _spread_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _take_fraction(eligible: list[Candidate], fraction: float) -> list[Candidate]:
    by_cluster: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in eligible:
        by_cluster[(c.site, c.cluster)].append(c)
    taken: list[Candidate] = []
    for members in by_cluster.values():
        # 1e-9 absorbs float error so that e.g. 0.1 * 30 gives 3, not 2.
        count = math.floor(fraction * len(members) + 1e-9)
        taken.extend(sorted(members, key=lambda c: _spread_key(c.name))[:count])
    return taken


def _wave_members(
    spec: WaveSpec, remaining: list[Candidate], wave_names: set[str]
) -> list[Candidate]:
    pinned = [c for c in remaining if c.pinned_wave == spec.name]
    eligible = [
        c
        for c in remaining
        if (c.pinned_wave is None or c.pinned_wave not in wave_names)
        and spec.selects(c.site, c.cluster, c.labels)
    ]
    chosen = eligible if spec.fraction is None else _take_fraction(eligible, spec.fraction)
    return pinned + chosen


def assign(
    policy: RolloutPolicy, changed: Iterable[Candidate]
) -> list[tuple[WaveSpec, tuple[str, ...]]]:
    """Every wave of ``policy`` with the sorted names of the nodes it updates (possibly none)."""
    remaining = sorted(changed, key=lambda c: c.name)
    wave_names = {w.name for w in policy.waves}
    result: list[tuple[WaveSpec, list[str]]] = []
    for spec in policy.waves:
        members = _wave_members(spec, remaining, wave_names)
        taken = {c.name for c in members}
        remaining = [c for c in remaining if c.name not in taken]
        result.append((spec, sorted(taken)))
    if remaining:
        last_spec, last_nodes = result[-1]
        result[-1] = (last_spec, sorted(last_nodes + [c.name for c in remaining]))
    return [(spec, tuple(nodes)) for spec, nodes in result]


def plan_rollout(
    commit: str, policy: RolloutPolicy, changed: Iterable[Candidate], *, immediate: bool = False
) -> Rollout:
    """A new rollout of ``commit`` over the ``changed`` nodes, its waves assigned by ``policy``."""
    from treadle.rollout.machine import Rollout, Wave

    waves = tuple(
        Wave(
            name=spec.name,
            nodes=nodes,
            soak_s=spec.soak_s,
            timeout_s=spec.timeout_s,
            allowed_failures=spec.allowed_failures(len(nodes)),
            approval=spec.approval,
        )
        for spec, nodes in assign(policy, changed)
    )
    return Rollout(
        commit=commit, waves=waves, failure_policy=policy.failure_policy, immediate=immediate
    )
