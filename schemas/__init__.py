"""The JSON Schemas (draft 2020-12): the one source of truth for every file format.

The schemas ship inside the installed package and are loaded only from here.
Validators are compiled once per schema (jsonschema-rs) and shared; the
registry resolves cross-file references such as ``overlay.json#/$defs/body``
without touching the network.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

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
_DELETED = {"enum": [None, ""], "description": "!delete: removes the inherited key (merge tags: !append, !delete, !replace)"}


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
            definition["additionalProperties"] = {"anyOf": [definition["additionalProperties"], _DELETED]}
    return doc


@functools.cache
def _registry() -> jsonschema_rs.Registry:
    return jsonschema_rs.Registry([(BASE_URI + n, load(n)) for n in names()])


@functools.cache
def validator(name: str) -> jsonschema_rs.Validator:
    """The compiled validator of schema ``name``; compiled once per process."""
    return jsonschema_rs.validator_for(load(name), registry=_registry(), validate_formats=True)


def errors(name: str, instance: Any) -> list[tuple[list[str | int], str]]:
    """Every violation of schema ``name`` by ``instance``, as (instance path, message)."""
    return [(list(e.instance_path), e.message) for e in validator(name).iter_errors(instance)]
