"""Fixtures of the template and generator suites: an independent schema check of fabric files.

The check loads each file with ruamel.yaml's safe loader, applies what the
merge tags mean to a single file (``!delete`` drops the key, ``!append`` and
``!replace`` keep their list or map) and validates the result with the
shipped JSON Schemas. It deliberately does not use the renderer, so that the
template and the generator are pinned even while the renderer changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor

import treadle_schemas
from support.bench import bench_module


class _Deleted:
    """Marks a key tagged ``!delete``; pruned before validation."""


DELETED = _Deleted()


class TaggedConstructor(SafeConstructor):
    """The safe constructor plus the three merge tags (a subclass, so the shared class stays untouched)."""


TaggedConstructor.add_constructor("!append", lambda c, node: c.construct_sequence(node, deep=True))
TaggedConstructor.add_constructor("!replace", lambda c, node: c.construct_mapping(node, deep=True))
TaggedConstructor.add_constructor("!delete", lambda c, node: DELETED)


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not DELETED}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def load_fabric_yaml(path: Path) -> dict[str, Any]:
    """One fabric file as the schema sees it; duplicate keys raise, as ruamel's safe loader does."""
    yaml = YAML(typ="safe")
    yaml.Constructor = TaggedConstructor
    return _prune(yaml.load(path.read_text(encoding="utf-8")))


def tags_used(path: Path) -> set[str]:
    """The merge tags a file uses, read from the parsed events rather than the text (comments mention them too)."""
    yaml = YAML(typ="safe")
    used: set[str] = set()
    for node in _walk(yaml.compose(path.read_text(encoding="utf-8"))):
        tag = str(node.tag) if node.tag is not None else ""
        if tag in ("!append", "!delete", "!replace"):
            used.add(tag)
    return used


def _walk(node: Any) -> Iterator[Any]:
    yield node
    value = getattr(node, "value", None)
    if isinstance(value, list):
        for item in value:
            if isinstance(item, tuple):
                for part in item:
                    yield from _walk(part)
            else:
                yield from _walk(item)


def schema_errors(path: Path) -> list[str]:
    """Every schema violation of one fabric file, as ``file: path: message``."""
    doc = load_fabric_yaml(path)
    schema = treadle_schemas.KIND_SCHEMAS.get(doc.get("kind", ""))
    if schema is None:
        return [f"{path}: unknown kind {doc.get('kind')!r}"]
    return [
        f"{path}: {'/'.join(map(str, where))}: {message}"
        for where, message in treadle_schemas.errors(schema, doc)
    ]


@pytest.fixture(scope="session")
def gen_fabric() -> ModuleType:
    """bench/gen_fabric.py, imported from its path (bench/ is scripts, not a package)."""
    return bench_module("gen_fabric")


@pytest.fixture(scope="session")
def fabric_files() -> SimpleNamespace:
    """The helpers above, for test modules (which cannot import conftest under importlib mode)."""
    return SimpleNamespace(load=load_fabric_yaml, tags=tags_used, errors=schema_errors)
