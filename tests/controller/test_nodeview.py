"""The agent exposition parser of the per-node view: facts read, anything else is missing data (never a crash)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from treadle.daemon.nodeview import parse_agent_metrics

GOOD = """\
# TYPE treadle_agent_info gauge
treadle_agent_info{node="n1",site="s",cluster="c",version="0.1.0"} 1
treadle_agent_applied_generation 7
treadle_agent_manifest_generation 8
treadle_agent_last_apply_success 1
treadle_agent_last_apply_timestamp_seconds 1.8e9
treadle_agent_healthy 0
treadle_agent_health_check_up{check="sshd"} 1
treadle_agent_health_check_up{check="ntp"} 0
treadle_agent_resources{type="file",status="in_sync"} 4
treadle_agent_resources{type="package",status="in_sync"} 2
treadle_agent_resources{type="file",status="drifted"} 1
treadle_agent_resources{type="service",status="failed"} 1
"""


def test_facts_of_a_good_exposition_are_read() -> None:
    facts = parse_agent_metrics(GOOD, "n1")
    assert facts == {
        "version": "0.1.0",
        "applied_generation": 7,
        "manifest_generation": 8,
        "last_apply_success": True,
        "last_apply_at": 1.8e9,
        "healthy": False,
        "health_checks": {"sshd": True, "ntp": False},
        "resources": {"in_sync": 6, "drifted": 1, "failed": 1},
    }


def test_an_exposition_of_another_node_or_without_info_is_refused() -> None:
    assert parse_agent_metrics(GOOD, "n2") is None
    assert parse_agent_metrics(GOOD.replace("treadle_agent_info", "other_info"), "n1") is None


# Inputs that once could crash a parser like this one (infinities, overflow, cut-off labels, NUL), kept as a corpus.
CORPUS = [
    'treadle_agent_info{node="n1"} 1\ntreadle_agent_applied_generation inf\n',
    'treadle_agent_info{node="n1"} 1\ntreadle_agent_applied_generation 1e400\n',
    "treadle_agent_applied_generation{",
    "\x00",
    "# TYPE x counter\nx_total NaN\n",
]


def test_regression_corpus_is_missing_data_not_a_crash() -> None:
    for text in CORPUS:
        result = parse_agent_metrics(text, "n1")
        assert result is None or isinstance(result, dict)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            GOOD.splitlines() + ["treadle_agent_healthy NaN", "garbage {", "x 1 2 3", ""]
        ),
        max_size=15,
    ),
    st.text(max_size=40),
)
def test_any_exposition_gives_facts_or_none(lines: list[str], noise: str) -> None:
    result = parse_agent_metrics("\n".join(lines) + "\n" + noise, "n1")
    assert result is None or set(result) >= {"version", "health_checks", "resources"}
