"""Fixtures: a managed root, a state dir and a /proc/sys look-alike in a temp dir, and a simulated host."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _provider_helpers import Env, make_env  # noqa: E402


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)
