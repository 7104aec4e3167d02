"""rollout.yaml as typed values, and the change-window and freeze gate.

A fabric without rollout.yaml gets :data:`DEFAULT_POLICY`: one wave with
every changed node and no soak, which is how a change was published before
rollouts existed.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import treadle_schemas
from treadle.errors import PolicyError  # raised here; the tree is drawn in treadle.errors

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The git trailer of the emergency path: ``Treadle-Rollout: immediate`` skips soak times and change windows.
TRAILER = "Treadle-Rollout"
TRAILER_IMMEDIATE = "immediate"
#: rollout.json's defaults: the only place a default of rollout.yaml is written.
POLICY_DEFAULTS = treadle_schemas.defaults("rollout.json")
WAVE_DEFAULTS = treadle_schemas.defaults("rollout.json", "waves")
WINDOW_DEFAULTS = treadle_schemas.defaults("rollout.json", "windows")


@dataclass(frozen=True, slots=True)
class WaveSpec:
    """One wave of rollout.yaml."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    sites: frozenset[str] | None = None
    clusters: frozenset[str] | None = None
    fraction: float | None = None
    soak_s: int = WAVE_DEFAULTS["soak_s"]
    timeout_s: int = WAVE_DEFAULTS["timeout_s"]
    budget_count: int | None = None
    budget_percent: float | None = None
    approval: bool = WAVE_DEFAULTS["approval"]

    def selects(self, site: str, cluster: str, labels: Mapping[str, str]) -> bool:
        """Whether a node matches this wave's selector (all criteria; no selector matches all)."""
        if self.sites is not None and site not in self.sites:
            return False
        if self.clusters is not None and cluster not in self.clusters:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())

    def allowed_failures(self, wave_size: int) -> int:
        """Failures this wave tolerates before the rollout halts: the larger of count and percent (default none)."""
        by_count = self.budget_count or 0
        by_percent = math.floor(wave_size * self.budget_percent / 100) if self.budget_percent else 0
        return max(by_count, by_percent)


@dataclass(frozen=True, slots=True)
class Window:
    """A weekly change window, ``days`` ``start``-``end`` in ``timezone``."""

    days: frozenset[int]
    start_min: int
    end_min: int
    timezone: str

    def contains(self, now: float) -> bool:
        local = dt.datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and self.start_min <= minute < self.end_min

    def __str__(self) -> str:
        days = ",".join(DAYS[d] for d in sorted(self.days))
        start = f"{self.start_min // 60:02d}:{self.start_min % 60:02d}"
        end = f"{self.end_min // 60:02d}:{self.end_min % 60:02d}"
        return f"{days} {start}-{end} {self.timezone}"


@dataclass(frozen=True, slots=True)
class Freeze:
    """No wave starts between ``start`` and ``until`` (epoch seconds)."""

    start: float
    until: float
    reason: str

    def contains(self, now: float) -> bool:
        return self.start <= now < self.until


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    waves: tuple[WaveSpec, ...]
    windows: tuple[Window, ...] = ()
    freezes: tuple[Freeze, ...] = ()
    failure_policy: str = POLICY_DEFAULTS["failure_policy"]

    def wave(self, name: str) -> WaveSpec | None:
        return next((w for w in self.waves if w.name == name), None)

    def blocked(self, now: float) -> str | None:
        """Why no wave may start at ``now`` (a freeze, or outside every window), or None."""
        for freeze in self.freezes:
            if freeze.contains(now):
                until = dt.datetime.fromtimestamp(freeze.until, dt.UTC).strftime(
                    "%Y-%m-%d %H:%M UTC"
                )
                return f"change freeze until {until}" + (
                    f": {freeze.reason}" if freeze.reason else ""
                )
        if self.windows and not any(w.contains(now) for w in self.windows):
            return "outside every change window (" + "; ".join(str(w) for w in self.windows) + ")"
        return None


DEFAULT_POLICY = RolloutPolicy(waves=(WaveSpec(name="all", fraction=1.0, soak_s=0),))


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _time(value: str | dt.datetime) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def from_doc(doc: Mapping[str, Any] | None) -> RolloutPolicy:
    """The policy of a schema-valid rollout.yaml document (None: :data:`DEFAULT_POLICY`).

    Raises:
        PolicyError: an unknown time zone, a window ending before it starts,
            a freeze ending before it starts, or two waves with one name.
    """
    if doc is None:
        return DEFAULT_POLICY
    waves = tuple(_wave(w) for w in doc["waves"])
    names = [w.name for w in waves]
    if len(set(names)) != len(names):
        raise PolicyError(f"wave names must be unique, got {names}")
    windows = tuple(_window(w) for w in doc.get("windows", ()))
    freezes = tuple(_freeze(f) for f in doc.get("freezes", ()))
    return RolloutPolicy(
        waves=waves,
        windows=windows,
        freezes=freezes,
        failure_policy=doc.get("failure_policy", POLICY_DEFAULTS["failure_policy"]),
    )


def _wave(w: Mapping[str, Any]) -> WaveSpec:
    selector = w.get("selector", {})
    budget = w.get("failure_budget", {})
    return WaveSpec(
        name=w["name"],
        labels=dict(selector.get("labels", {})),
        sites=frozenset(selector["sites"]) if "sites" in selector else None,
        clusters=frozenset(selector["clusters"]) if "clusters" in selector else None,
        fraction=w.get("fraction"),
        soak_s=w.get("soak_s", WAVE_DEFAULTS["soak_s"]),
        timeout_s=w.get("timeout_s", WAVE_DEFAULTS["timeout_s"]),
        budget_count=budget.get("count"),
        budget_percent=budget.get("percent"),
        approval=w.get("approval", WAVE_DEFAULTS["approval"]),
    )


def _window(w: Mapping[str, Any]) -> Window:
    tz = w.get("timezone", WINDOW_DEFAULTS["timezone"])
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise PolicyError(
            f"unknown time zone {tz!r} in a change window (use an IANA name such as Europe/Zurich)"
        ) from e
    start, end = _minutes(w["start"]), _minutes(w["end"])
    if end <= start:
        raise PolicyError(
            f"change window {w['start']}-{w['end']} ends before it starts (split a window across midnight in two)"
        )
    return Window(
        days=frozenset(DAYS.index(d) for d in w["days"]), start_min=start, end_min=end, timezone=tz
    )


def _freeze(f: Mapping[str, Any]) -> Freeze:
    start, until = _time(f["from"]), _time(f["until"])
    if until <= start:
        raise PolicyError(f"freeze from {f['from']} until {f['until']} ends before it starts")
    return Freeze(start=start, until=until, reason=f.get("reason", ""))


def has_immediate_trailer(message: str, trailers: Mapping[str, str] | None = None) -> bool:
    """Whether a commit message carries ``Treadle-Rollout: immediate`` as a git trailer (last paragraph)."""
    if trailers is None:
        paragraphs = [p for p in message.strip().split("\n\n") if p.strip()]
        last = paragraphs[-1] if len(paragraphs) > 1 else ""
        trailers = {}
        for line in last.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                trailers[key.strip()] = value.strip()
    return any(
        k.lower() == TRAILER.lower() and v.strip().lower() == TRAILER_IMMEDIATE
        for k, v in trailers.items()
    )


def commit_is_immediate(repo: Any, commit: str) -> bool:
    """The trailer test on a commit of a pygit2 repository, through git's own trailer parser when it can."""
    import pygit2

    obj = repo[commit]
    try:
        trailers = dict(obj.message_trailers)
    except (AttributeError, pygit2.GitError):
        trailers = None
    return has_immediate_trailer(obj.message, trailers)
