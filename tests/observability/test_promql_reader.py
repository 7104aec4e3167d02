"""The reader that pulls expressions and metric names out of the shipped files.

The live tests trust it to find every metric a panel or rule uses; these
tests pin that it neither misses a name nor mistakes a function, keyword or
label for one.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.promql import (
    dashboard_expressions,
    grafana_to_promql,
    metric_names,
    rule_expressions,
    variable_to_promql,
)

NAME = st.from_regex(r"\A[a-z][a-z0-9_]{0,20}(:[a-z0-9_]{1,10}){0,2}\Z").filter(
    lambda n: (
        n
        not in {
            "by",
            "on",
            "or",
            "and",
            "bool",
            "unless",
            "offset",
            "without",
            "ignoring",
            "inf",
            "nan",
        }
        and n
        not in {
            "sum",
            "min",
            "max",
            "avg",
            "count",
            "group",
            "topk",
            "bottomk",
            "quantile",
            "stddev",
            "stdvar",
            "atan2",
        }
    )
)
TEMPLATES = (
    "{m}",
    'sum by (site, cluster) (rate({m}{{reason=~"sig.*", le="+Inf"}}[5m]))',
    "histogram_quantile(0.99, sum by (le) ({m}))",
    "{m} * on (instance, job) group_left (node, site) treadle_agent_info",
    "(time() - {m}) > bool 86400",
    'max_over_time({m}{{job="x"}}[1h:5m] offset 1m)',
    "clamp_max({m} > bool 0, 1)",
    "{m} or absent({m})",
)


@given(name=NAME, template=st.sampled_from(TEMPLATES))
def test_metric_names_finds_the_metric_in_any_expression_shape(name: str, template: str) -> None:
    names = metric_names(template.format(m=name))
    assert name in names
    assert names <= {name, "treadle_agent_info"}


def test_metric_names_ignores_functions_keywords_labels_strings_and_durations() -> None:
    expr = (
        'sum by (reason) (increase(x_total{reason="signature"}[15m])) > 0 unless on (job) absent(y)'
    )
    assert metric_names(expr) == {"x_total", "y"}


def test_grafana_variables_become_all_values_and_intervals() -> None:
    expr = 'rate(x{site=~"$site", cluster=~"${cluster:regex}"}[$__rate_interval])'
    assert grafana_to_promql(expr) == 'rate(x{site=~".*", cluster=~".*"}[1m])'


def test_an_unknown_grafana_variable_is_left_for_prometheus_to_refuse() -> None:
    assert grafana_to_promql("x[$unknown]") == "x[$unknown]"


def test_a_label_values_variable_becomes_a_grouping_query() -> None:
    assert (
        variable_to_promql('label_values(m{site=~"$site"}, cluster)')
        == 'group by (cluster) (m{site=~".*"})'
    )


def test_a_variable_query_that_is_not_label_values_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"use label_values\(selector, label\)"):
        variable_to_promql("query_result(up)")


def test_every_panel_target_and_rule_of_the_shipped_files_is_found() -> None:
    panels = [e for e in dashboard_expressions() if e.kind == "panel"]
    variables = [e for e in dashboard_expressions() if e.kind == "variable"]
    rules = rule_expressions()
    assert len(panels) >= 30 and len(variables) == 2
    assert {e.kind for e in rules} == {"record", "alert"}
    assert not [e for e in panels if "$" in e.promql]


def test_a_missing_prometheus_binary_is_reported_with_the_package_to_install() -> None:
    from support.prometheus import PrometheusError, binary

    with pytest.raises(
        PrometheusError,
        match=r"treadle-no-such-tool not found on PATH; install Debian's `prometheus` package",
    ):
        binary("treadle-no-such-tool")
