"""Metric names are a contract; the controller has no per-node series."""

from __future__ import annotations

import pytest

from treadle.daemon.metrics import ControllerMetrics
from treadle.errors import REFUSAL_REASONS, GateError

NAMES = {
    "treadle_controller_info",
    "treadle_controller_deployed_commit_info",
    "treadle_controller_commits_total",
    "treadle_controller_rejected_commits_total",
    "treadle_controller_render_duration_seconds",
    "treadle_controller_nodes",
    "treadle_rollout_wave_nodes",
    "treadle_rollout_state",
    "treadle_controller_health_observations_total",
    "treadle_controller_health_round_duration_seconds",
}


def test_registry_holds_exactly_the_contract_names_without_a_node_label() -> None:
    m = ControllerMetrics()
    families = {f.name: f for f in m.registry.collect()}
    names = {n.removesuffix("_total") if f.type == "counter" else n for n, f in families.items()}
    assert {n if n in NAMES else n + "_total" for n in names} == NAMES
    m.set_lifecycle_counts({"production": 3})
    m.commits_total.labels(result="deployed").inc()
    for family in m.registry.collect():
        for sample in family.samples:
            assert "node" not in sample.labels


def test_deployed_commit_info_has_exactly_one_series() -> None:
    m = ControllerMetrics()
    m.set_deployed_commit("a" * 40)
    m.set_deployed_commit("b" * 40)
    text = m.exposition().decode()
    assert f'treadle_controller_deployed_commit_info{{commit="{"b" * 40}"}} 1.0' in text
    assert "a" * 40 not in text


def test_every_result_and_refusal_reason_starts_at_zero() -> None:
    """So that increase() in the refusing-commits alert sees the first refusal of a reason."""
    text = ControllerMetrics().exposition().decode()
    for reason in REFUSAL_REASONS:
        assert f'treadle_controller_rejected_commits_total{{reason="{reason}"}} 0.0' in text
    for result in ("deployed", "refused"):
        assert f'treadle_controller_commits_total{{result="{result}"}} 0.0' in text


def test_a_gate_error_with_a_reason_outside_the_contract_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="REFUSAL_REASONS"):
        GateError("signature", "a reason no counter was created for")
