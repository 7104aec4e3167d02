"""The contract's names are the ones the schemas and the agent's metrics use: one spelling, checked."""

from __future__ import annotations

import json
from pathlib import Path

from treadle_agent.contract import names
from treadle_agent.contract.manifest import canonical_json
from treadle_agent.metrics import AgentCollector, AgentMetrics

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def test_lifecycle_states_are_the_schemas_enums() -> None:
    assert (
        list(names.LIFECYCLE_STATES) == _schema("overlay.json")["$defs"]["lifecycleState"]["enum"]
    )
    assert list(names.LIFECYCLE_STATES) == _schema("plan.json")["$defs"]["lifecycle"]["enum"]


def test_default_metrics_port_is_the_agent_configs_default() -> None:
    listen = _schema("agent-config.json")["properties"]["metrics_listen"]["default"]
    assert int(listen.rpartition(":")[2]) == names.DEFAULT_METRICS_PORT


def test_every_series_the_agent_exports_has_a_contract_name() -> None:
    contract = {
        v for k, v in vars(names).items() if k.startswith("METRIC_") and k != "METRIC_PREFIX"
    }
    exported = {family.name for family in AgentCollector(AgentMetrics("n1")).collect()}
    assert exported == contract
    assert all(n.startswith(names.METRIC_PREFIX) for n in exported)


def test_the_lifecycle_series_has_one_sample_per_contract_state() -> None:
    families = {f.name: f for f in AgentCollector(AgentMetrics("n1")).collect()}
    states = [s.labels["state"] for s in families[names.METRIC_LIFECYCLE].samples]
    assert sorted(states) == sorted(names.LIFECYCLE_STATES)


def test_manifest_format_error_is_in_the_tree_and_still_a_value_error() -> None:
    from treadle_agent.contract.errors import AgentError, ManifestFormatError
    from treadle_agent.contract.manifest import parse_json

    for bad in (b'{"a": 1.5}', b'{"a": 1, "a": 2}', b"\xff"):
        try:
            parse_json(bad)
        except ManifestFormatError as e:
            assert isinstance(e, AgentError) and isinstance(e, ValueError)
        else:
            raise AssertionError(f"{bad!r} parsed")
    assert canonical_json({"b": 1, "a": [True, None]}) == b'{"a":[true,null],"b":1}'
