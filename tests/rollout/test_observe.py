"""Health sources read real expositions over real HTTP; missing or foreign data never passes."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.agent_pages import PathTarget, exposition
from treadle.rollout.machine import Observation
from treadle.rollout.observe import ScrapeSource, Target, parse_exposition


@pytest.fixture
def agents(agent_pages: tuple[int, dict[str, str]]) -> tuple[int, dict[str, str]]:
    return agent_pages


def test_scrape_reads_generation_apply_and_health_of_each_agent(agents) -> None:
    port, pages = agents
    pages["n1"] = exposition("n1", 7, 1, 1)
    pages["n2"] = exposition("n2", 7, 1, 0)
    got = anyio.run(
        ScrapeSource(timeout_s=2).observe,
        [PathTarget("n1", "127.0.0.1", port), PathTarget("n2", "127.0.0.1", port)],
    )
    assert got == {"n1": Observation(7, True, True), "n2": Observation(7, True, False)}


def test_unreachable_failing_or_impostor_agents_are_missing_not_healthy(agents) -> None:
    port, pages = agents
    pages["n2"] = exposition("someone-else", 7, 1, 1)
    targets = [
        PathTarget("n1", "127.0.0.1", port),
        PathTarget("n2", "127.0.0.1", port),
        Target("n3", "127.0.0.1", 1),
    ]
    assert anyio.run(ScrapeSource(timeout_s=1).observe, targets) == {}


def test_garbage_exposition_is_missing_data() -> None:
    assert parse_exposition("treadle_agent_healthy{{{ 1\n", "n1") is None


def test_the_highest_accepted_generation_is_read_beside_the_applied_one() -> None:
    text = (
        exposition("n1", 7, 1, 1)
        + "# TYPE treadle_agent_manifest_generation gauge\ntreadle_agent_manifest_generation 9.0\n"
    )
    assert parse_exposition(text, "n1") == Observation(7, True, True, accepted=9)


def test_an_infinite_or_nan_generation_is_missing_data_not_a_crash() -> None:
    text = exposition("n1", 7, 1, 1).replace(
        "treadle_agent_applied_generation 7.0", "treadle_agent_applied_generation +Inf"
    )
    assert parse_exposition(text, "n1") == Observation(None, True, True)


@settings(max_examples=150, deadline=None)
@given(
    body=st.text(max_size=300),
    value=st.sampled_from(["1", "-1", "+Inf", "NaN", "1e400", "x", "18e11"]),
)
def test_any_exposition_is_an_observation_or_missing_never_an_exception(
    body: str, value: str
) -> None:
    text = f'treadle_agent_info{{node="n1"}} 1\ntreadle_agent_applied_generation {value}\n{body}'
    got = parse_exposition(text, "n1")
    assert got is None or isinstance(got, Observation)


# -- the Prometheus source's answers (tests/observability/test_prometheus_health.py asks a real one) --

from treadle.rollout.observe import columns_from_answer  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_result = st.fixed_dictionaries(
    {
        "metric": st.dictionaries(
            st.sampled_from(["m", "node", "instance"]),
            st.sampled_from(["healthy", "applied_generation", "n1", "x"]) | _json,
        ),
        "value": st.lists(_json, max_size=3) | _json,
    }
)


@settings(max_examples=200, deadline=None)
@given(
    body=_json
    | st.fixed_dictionaries(
        {
            "status": st.just("success"),
            "data": st.fixed_dictionaries(
                {"resultType": st.just("vector"), "result": st.lists(_result | _json, max_size=6)}
            ),
        }
    )
)
def test_any_prometheus_answer_is_columns_or_a_refusal_never_another_exception(
    body: object,
) -> None:
    try:
        columns = columns_from_answer(body)
    except (ValueError, KeyError, TypeError):
        return
    assert set(columns) == {
        "treadle_agent_applied_generation",
        "treadle_agent_last_apply_success",
        "treadle_agent_healthy",
        "treadle_agent_manifest_generation",
    }
    assert all(
        isinstance(n, str) and isinstance(v, float) for c in columns.values() for n, v in c.items()
    )


def test_a_prometheus_answer_is_read_by_gauge_and_node() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"m": "applied_generation", "node": "n1"}, "value": [1.0, "7"]},
                {"metric": {"m": "healthy", "node": "n1"}, "value": [1.0, "0"]},
                {"metric": {"m": "healthy"}, "value": [1.0, "1"]},  # no node: skipped
                {
                    "metric": {"m": "other", "node": "n1"},
                    "value": [1.0, "1"],
                },  # not a gauge the gate reads
                {"metric": {"m": "last_apply_success", "node": "n2"}, "value": [1.0, "NaN"]},
            ],
        },
    }
    columns = columns_from_answer(body)
    assert columns["treadle_agent_applied_generation"] == {"n1": 7.0}
    assert columns["treadle_agent_healthy"] == {"n1": 0.0}
    assert "n2" in columns["treadle_agent_last_apply_success"]
    with pytest.raises(ValueError):
        columns_from_answer({"status": "error", "error": "bad query"})
