"""Fixtures of the plan suite (helpers in support.review)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.review import FabricRepo, make_repo


@pytest.fixture
def fabric_repo(tmp_path: Path) -> FabricRepo:
    return make_repo(tmp_path / "fabric")
