"""Fixtures: a fresh real fleet per test (see support.fleet), stopped afterwards.

The signing key and trust root (``fleet_keys``, tests/conftest.py) are
generated once per session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.fleet import Fleet, node_specs, rollout_yaml, start_fleet


@pytest.fixture
def make_fleet(tmp_path: Path, fleet_keys: Path) -> Iterator[Callable[..., Fleet]]:
    """``make_fleet(clusters=2, per_cluster=4, controller_toml_extra="", **rollout_settings) -> Fleet``.

    Two clusters of four nodes by default: the canary (c1-n01), then half
    of each cluster's remaining nodes (1 of c1's 3, 2 of c2's 4), then the
    other four.
    """
    fleets: list[Fleet] = []

    def make(
        clusters: int = 2, per_cluster: int = 4, controller_toml_extra: str = "", **settings: object
    ) -> Fleet:
        fleet = start_fleet(
            tmp_path / f"fleet{len(fleets)}",
            fleet_keys,
            node_specs(clusters, per_cluster),
            rollout_yaml(**settings),
            controller_toml_extra=controller_toml_extra,
        )
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()
