"""The JSON Schemas (draft 2020-12): the one source of truth for every file format.

The schemas ship inside the installed package and are loaded only from here.
Validators are compiled once per schema (jsonschema-rs) and shared; the
registry resolves cross-file references such as ``overlay.json#/$defs/body``
without touching the network. jsonschema-rs is imported by the first
validation only: reading a schema or its defaults (:func:`defaults`, which the
agent uses on every start) does not load it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema_rs

BASE_URI = "https://treadle.dev/schemas/v1/"

#: Schema file names by the ``kind`` they describe.
KIND_SCHEMAS = {
    "Fabric": "fabric.json",
    "Profile": "profile.json",
    "Site": "site.json",
    "Cluster": "cluster.json",
    "Node": "node.json",
    "RolloutPolicy": "rollout.json",
    "NodeManifest": "manifest.json",
}


def names() -> list[str]:
    """Every schema file shipped, sorted."""
    return sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The schema document ``name`` (e.g. ``"node.json"``)."""
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))


#: What a key tagged ``!delete`` is to an editor: yaml-language-server (with ``customTags: ["!delete scalar"]``)
#: loads it as the empty string; other servers as null.
_DELETED = {
    "enum": [None, ""],
    "description": "!delete: removes the inherited key (merge tags: !append, !delete, !replace)",
}


def for_editors(name: str) -> dict[str, Any]:
    """Schema ``name`` as editors need it: in the overlay body every key may also be empty (``key: !delete``).

    Treadle removes a ``!delete``-tagged key before it validates, so its own
    schemas refuse a null there (an untagged ``key:`` with no value is an
    error). An editor's YAML language server cannot tell the two apart: it
    loads ``!delete`` as an empty scalar (with the ``customTags`` setting the
    fabric template ships). Only overlay.json differs; ``!append`` and ``!replace``
    load as the list and the map they tag, which the schemas accept as they are.
    """
    doc = json.loads(json.dumps(load(name)))
    if name != "overlay.json":
        return doc
    for definition in doc["$defs"].values():
        if definition.get("type") != "object":
            continue
        for key, sub in list(definition.get("properties", {}).items()):
            definition["properties"][key] = {"anyOf": [sub, _DELETED]}
        if isinstance(definition.get("additionalProperties"), dict):
            definition["additionalProperties"] = {
                "anyOf": [definition["additionalProperties"], _DELETED]
            }
    return doc


def defaults(schema: str | Mapping[str, Any], *section: str) -> dict[str, Any]:
    """The ``default`` of each property that has one, in schema ``schema`` (a file name or a loaded document).

    ``section`` walks down object properties (``"health"``), and into the
    items of an array property (``"waves"``: the defaults of one wave). Code
    takes its defaults from here rather than repeating them.

    Raises:
        KeyError: ``section`` names no property of the schema.
    """
    node: Mapping[str, Any] = load(schema) if isinstance(schema, str) else schema
    for key in section:
        node = node["properties"][key]
        node = node.get("items", node)
    return {k: p["default"] for k, p in node.get("properties", {}).items() if "default" in p}


@functools.cache
def _registry() -> jsonschema_rs.Registry:
    import jsonschema_rs

    return jsonschema_rs.Registry([(BASE_URI + n, load(n)) for n in names()])


@functools.cache
def validator(name: str) -> jsonschema_rs.Validator:
    """The compiled validator of schema ``name``; compiled once per process."""
    import jsonschema_rs

    return jsonschema_rs.validator_for(load(name), registry=_registry(), validate_formats=True)


def errors(name: str, instance: Any) -> list[tuple[list[str | int], str]]:
    """Every violation of schema ``name`` by ``instance``, as (instance path, message)."""
    return [(list(e.instance_path), e.message) for e in validator(name).iter_errors(instance)]
