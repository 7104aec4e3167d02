"""Fixtures of the real-node tests: a booted Debian 12 node, the agent installed in it, a controller on the host.

They run on Debian 12 as root (CI's machine) and skip elsewhere, saying why
(realnode.why_not_here). On Debian 12 as root they never skip: a missing tool
is an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import realnode


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    why = realnode.why_not_here()
    if why:
        for item in items:
            if "realnode" in str(item.path):
                item.add_marker(pytest.mark.skip(reason=f"real-node tests: {why}"))


@pytest.fixture(scope="session")
def realnode_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the pristine tree's tarball, the agent's wheelhouse), made once per session."""
    work = tmp_path_factory.mktemp("realnode-build")
    tarball = realnode.pristine_tarball(work / "build.log")
    wheelhouse = realnode.build_wheelhouse(work / "wheelhouse", work / "build.log")
    return tarball, wheelhouse


@pytest.fixture(scope="session")
def realnode_keys(fleet_keys: Path) -> Path:
    """The fleets' keys (tests/conftest.py)."""
    return fleet_keys
