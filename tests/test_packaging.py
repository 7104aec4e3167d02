"""The distribution ships what DESIGN.md's layout promises, and the agent stays light."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Imports only the controller extra provides; the agent must never need them.
CONTROLLER_ONLY = {"pygit2", "ruamel", "jinja2", "watchfiles", "starlette", "uvicorn", "rich"}


def _packages_on_disk() -> set[str]:
    found = set()
    for top, name in ((ROOT / "controller", None), (ROOT / "node-agent", None)):
        for init in top.rglob("__init__.py"):
            rel = init.parent.relative_to(top)
            found.add(".".join(rel.parts))
    return found


def test_every_python_package_on_disk_is_listed_in_pyproject() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    missing = _packages_on_disk() - listed
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_base_dependencies_exclude_controller_libraries() -> None:
    base = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    leaked = [lib for lib in CONTROLLER_ONLY if lib.replace("ruamel", "ruamel.yaml") in base]
    assert not leaked, f"controller-only libraries in the agent's base dependencies: {leaked}"


def test_agent_package_never_imports_controller_libraries() -> None:
    offenders = []
    for path in (ROOT / "node-agent").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in CONTROLLER_ONLY or top == "treadle":
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    assert not offenders, "\n".join(offenders)


def test_schemas_ship_inside_the_package_and_all_compile() -> None:
    import treadle_schemas

    names = treadle_schemas.names()
    for required in ("fabric.json", "profile.json", "site.json", "cluster.json", "node.json",
                     "rollout.json", "manifest.json", "agent-config.json", "controller-config.json"):
        assert required in names
    for name in names:
        treadle_schemas.validator(name)  # raises on an invalid schema or a dangling $ref


def test_console_templates_and_static_files_ship_as_package_data() -> None:
    import fnmatch

    console = ROOT / "controller" / "treadle" / "console"
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["treadle.console"]
    files = [p.relative_to(console).as_posix() for p in console.rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert any(f.startswith("templates/") for f in files) and any(f.startswith("static/") for f in files)
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not unshipped, f"add these to [tool.setuptools.package-data] treadle.console: {unshipped}"
