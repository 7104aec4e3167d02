"""Fixtures: the rollout fleet in-process on a fake clock (see support.local_fleet), one per scenario."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.fleet import node_specs, rollout_yaml
from support.local_fleet import LocalFleet, start_local_fleet


@pytest.fixture
def local_fleet(tmp_path: Path, fleet_keys: Path) -> Iterator[Callable[..., LocalFleet]]:
    """``local_fleet(clusters=2, per_cluster=4, health=None, **rollout_settings) -> LocalFleet``.

    The same three waves as the end-to-end fleet: the canary (c1-n01), then half of each cluster's remaining
    nodes (1 of c1's 3, 2 of c2's 4), then the other four; every node has applied "v1".
    """
    fleets: list[LocalFleet] = []

    def make(
        clusters: int = 2, per_cluster: int = 4, health: Any = None, **settings: object
    ) -> LocalFleet:
        fleet = start_local_fleet(
            tmp_path / f"fleet{len(fleets)}",
            fleet_keys,
            node_specs(clusters, per_cluster),
            rollout_yaml(**settings),
            health=health,
        )
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()
