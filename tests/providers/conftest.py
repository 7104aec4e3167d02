"""Fixtures: a managed root, a state dir and a /proc/sys look-alike in a temp dir, and a simulated host."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.providers import Env, make_env


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)
