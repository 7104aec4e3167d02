"""Every PromQL expression the shipped observability files contain, and the metric names they use.

The dashboard's expressions carry Grafana variables; :func:`grafana_to_promql`
replaces them the way Grafana does for "All" selections and a short range.
Metric names are read from the expressions with a small lexer (strings,
label matchers, grouping clauses and range selectors removed; functions and
keywords dropped), so the tests check the names the files really use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from support.prometheus import REPO, RULE_FILES

DASHBOARD = REPO / "observability" / "grafana" / "treadle-fleet.json"

#: Grafana's variables as the tests substitute them: "All" sites and
#: clusters (allValue ".*") and intervals fitting a 1 s scrape interval.
VARIABLES = {
    "site": ".*",
    "cluster": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")

KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "atan2",
    }
)
#: Series Prometheus makes itself, not an exporter.
SYNTHETIC = frozenset(
    {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
)


@dataclass(frozen=True, slots=True)
class Expression:
    """One PromQL expression and where it comes from (for failure messages)."""

    where: str
    promql: str
    kind: str  # panel | variable | record | alert


def grafana_to_promql(text: str) -> str:
    """Replace Grafana variables; an unknown one is left in place so the query fails loudly."""
    return _VARIABLE.sub(lambda m: VARIABLES.get(m.group(1) or m.group(2), m.group(0)), text)


def variable_to_promql(query: str) -> str:
    """A ``label_values(selector, label)`` variable as the instant query that lists the same values.

    Raises:
        ValueError: not a label_values() query.
    """
    m = _LABEL_VALUES.match(query.strip())
    if not m:
        raise ValueError(f"unsupported variable query {query!r}; use label_values(selector, label)")
    selector = grafana_to_promql(m["selector"] or '{__name__=~".+"}')
    return f"group by ({m['label']}) ({selector})"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows keep their panels inside


def dashboard_expressions(dashboard: dict[str, Any] | None = None) -> list[Expression]:
    """Every panel target's and every query variable's expression, variables substituted."""
    dashboard = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text())
    out = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            out.append(
                Expression(
                    f"panel {panel['title']!r} target {target['refId']}",
                    grafana_to_promql(target["expr"]),
                    "panel",
                )
            )
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append(
                Expression(f"variable {var['name']!r}", variable_to_promql(query), "variable")
            )
    return out


def rule_groups(path: Path) -> list[dict[str, Any]]:
    return YAML(typ="safe").load(path.read_text())["groups"]


def rule_expressions() -> list[Expression]:
    """Every recording and alerting rule's expression, from both rule files."""
    out = []
    for path in RULE_FILES:
        for group in rule_groups(path):
            for rule in group["rules"]:
                kind, name = (
                    ("record", rule["record"]) if "record" in rule else ("alert", rule["alert"])
                )
                out.append(Expression(f"{path.name}: {kind} {name}", rule["expr"], kind))
    return out


def recorded_names() -> set[str]:
    return {
        r["record"]
        for path in RULE_FILES
        for g in rule_groups(path)
        for r in g["rules"]
        if "record" in r
    }


_STRIP = (
    re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'),  # strings
    re.compile(r"\{[^{}]*\}"),  # label matchers
    re.compile(r"\[[^\[\]]*\]"),  # range and subquery selectors
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)"),  # label lists
    re.compile(r"#[^\n]*"),  # comments
)
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(promql: str) -> set[str]:
    """The metric (and recording-rule) names a PromQL expression selects."""
    text = promql
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    names = set()
    for m in _IDENTIFIER.finditer(text):
        name, is_call = m.group(1), m.group(2)
        if is_call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names
