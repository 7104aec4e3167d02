"""The rollout preview: which changed nodes go in which wave, and what may hold the waves back.

It uses the same wave assignment as the controller
(:func:`treadle.rollout.waves.assign`), with HEAD's rollout.yaml, so the
preview is what will happen after the merge. A node's pinned wave is its node
file's ``rollout.wave``, read through the shared parse cache. The emergency
trailer ``Treadle-Rollout: immediate`` in HEAD's commit message skips soak
times and change windows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from treadle.fabric import ParseCache, RenderedNode
from treadle.fabric.nodefile import node_settings
from treadle.fabric.source import Source
from treadle.rollout import policy as rollout_policy
from treadle.rollout import waves


@dataclass(frozen=True, slots=True)
class WavePreview:
    """One wave: its name, the changed nodes it will update (sorted), soak and whether it waits for approval."""

    name: str
    nodes: tuple[str, ...]
    soak_s: int
    approval: bool


@dataclass(frozen=True, slots=True)
class RolloutPreview:
    """The waves, the windows and freezes of rollout.yaml, what blocks a start now, and the trailer."""

    waves: tuple[WavePreview, ...]
    windows: tuple[str, ...]
    freezes: tuple[str, ...]
    blocked: str | None
    immediate: bool
    policy_error: str | None = None


def pinned_waves(
    src: Source, cache: ParseCache, fabric: Mapping[str, Any], nodes: Iterable[RenderedNode]
) -> dict[str, str]:
    """``rollout.wave`` of the node files of ``nodes`` (those that set one), parsed through the cache."""
    return {
        name: s.pinned_wave
        for name, s in node_settings(src, cache, fabric, nodes).items()
        if s.pinned_wave
    }


def preview(
    rollout_doc: Mapping[str, Any] | None,
    nodes: Iterable[RenderedNode],
    pinned: Mapping[str, str],
    now: float,
    immediate: bool,
) -> RolloutPreview:
    """The rollout of ``nodes`` (the changed and added ones, as HEAD renders them) under HEAD's rollout.yaml."""
    try:
        policy = rollout_policy.from_doc(rollout_doc)
    except rollout_policy.PolicyError as e:
        return RolloutPreview((), (), (), None, immediate, f"rollout.yaml: {e}")
    candidates = [
        waves.Candidate(n.name, n.site, n.cluster, dict(n.labels), pinned.get(n.name))
        for n in nodes
    ]
    assigned = (
        waves.assign(policy, candidates) if candidates else [(spec, ()) for spec in policy.waves]
    )
    return RolloutPreview(
        waves=tuple(
            WavePreview(spec.name, names, 0 if immediate else spec.soak_s, spec.approval)
            for spec, names in assigned
        ),
        windows=tuple(str(w) for w in policy.windows),
        freezes=tuple(_freeze(f) for f in policy.freezes if f.until > now),
        blocked=policy.blocked(now),
        immediate=immediate,
    )


def _freeze(f: rollout_policy.Freeze) -> str:
    def at(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    return f"{at(f.start)} until {at(f.until)}" + (f": {f.reason}" if f.reason else "")
