"""The error trees drawn in treadle.errors and treadle_agent.errors are the class hierarchies, exactly."""

from __future__ import annotations

import re

import treadle.errors
import treadle_agent.errors
import treadle_agent.identity  # EnrolledError, below ConfigError

_NODE = re.compile(r"^(?:[ │]*[├└]── )?(?P<name>[A-Z]\w*(?:Error|Exception))\b")


def _drawn(docstring: str) -> set[tuple[str, str | None]]:
    """(class, parent) pairs of the tree drawn in ``docstring`` (lines indented four spaces, box-drawing edges)."""
    pairs, stack = set(), []  # stack of (column, name)
    for line in docstring.splitlines():
        m = _NODE.match(line.strip("\n")[4:] if line.startswith("    ") else "")
        if not m:
            continue
        column = m.start("name")
        while stack and stack[-1][0] >= column:
            stack.pop()
        pairs.add((m.group("name"), stack[-1][1] if stack else None))
        stack.append((column, m.group("name")))
    return pairs


def _actual(root: type) -> set[tuple[str, str | None]]:
    pairs = {(root.__name__, None)}
    todo = [root]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            pairs.add((sub.__name__, cls.__name__))
            todo.append(sub)
    return pairs


def test_the_controller_tree_is_drawn_as_it_is() -> None:
    assert _drawn(treadle.errors.__doc__ or "") == _actual(treadle.errors.TreadleError)


def test_the_agent_tree_is_drawn_as_it_is() -> None:
    assert _drawn(treadle_agent.errors.__doc__ or "") == _actual(treadle_agent.errors.AgentError)


def test_the_drawing_parser_reads_nesting() -> None:
    doc = "x\n\n    AError\n    ├── BError   text\n    │   └── CError\n    └── DError\n        └── EError\n"
    assert _drawn(doc) == {
        ("AError", None),
        ("BError", "AError"),
        ("CError", "BError"),
        ("DError", "AError"),
        ("EError", "DError"),
    }
