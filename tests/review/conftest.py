"""Fixtures of the plan suite (helpers in _review_helpers.py, importable from every test module)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _review_helpers import FabricRepo, make_repo  # noqa: E402


@pytest.fixture
def fabric_repo(tmp_path: Path) -> FabricRepo:
    return make_repo(tmp_path / "fabric")
