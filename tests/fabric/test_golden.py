"""Golden manifests: two nodes of fabric-repo-template rendered byte for byte.

A change to rendering, to the manifest contract or to the template shows up
here as a diff to review. After an intended change, regenerate with

    TREADLE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/fabric/test_golden.py

and commit the files in tests/fabric/golden/ with the change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import treadle_schemas
from treadle.fabric import WorkTreeSource, render_fabric
from treadle_agent.contract.manifest import canonical_json, parse_json

GOLDEN = Path(__file__).parent / "golden"
#: A canary batch node in production and a storage node still provisioning (its lifecycle profile applies).
NODES = ("batch-001", "storage-004")


def test_the_template_fabric_validates(cli, template_copy):
    outcome = cli("validate", str(template_copy.root))
    assert outcome.code == 0, outcome.err


@pytest.mark.parametrize("node", NODES)
def test_golden_manifest(template_copy, node):
    result = render_fabric(WorkTreeSource(template_copy.root))
    assert result.ok, result.diagnostics
    rendered = result.nodes[node]
    assert treadle_schemas.errors("manifest.json", rendered.manifest) == []
    assert canonical_json(parse_json(rendered.canonical)) == rendered.canonical
    path = GOLDEN / f"{node}.json"
    if os.environ.get("TREADLE_UPDATE_GOLDEN"):
        path.write_bytes(rendered.canonical)
    assert rendered.canonical == path.read_bytes(), (
        f"{path.name} differs; see this module's docstring to regenerate"
    )
