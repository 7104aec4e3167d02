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
    for top, _name in ((ROOT / "controller", None), (ROOT / "node-agent", None)):
        for init in top.rglob("__init__.py"):
            rel = init.parent.relative_to(top)
            found.add(".".join(rel.parts))
    return found


def test_every_python_package_on_disk_is_listed_in_pyproject() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    missing = _packages_on_disk() - listed
    assert not missing, (
        f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    )


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


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of each absolute import in ``path`` (names: what a ``from`` import takes)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def _contract_only(module: str, names: list[str]) -> bool:
    """Whether an import of ``module`` takes from treadle_agent only the contract (or the distribution's version)."""
    if module == "treadle_agent.contract" or module.startswith("treadle_agent.contract."):
        return True
    return module == "treadle_agent" and bool(names) and set(names) <= {"contract", "__version__"}


def _agent_imports_beyond_contract(top: Path) -> list[str]:
    offenders = []
    for path in top.rglob("*.py"):
        for line, module, names in _imports(path):
            if module.split(".")[0] == "treadle_agent" and not _contract_only(module, names):
                offenders.append(
                    f"{path.relative_to(ROOT)}:{line}: import {module} {names or ''}".rstrip()
                )
    return offenders


def test_controller_imports_nothing_of_the_agent_but_its_contract() -> None:
    offenders = _agent_imports_beyond_contract(ROOT / "controller")
    assert not offenders, (
        "the controller may import only treadle_agent.contract (and treadle_agent.__version__); "
        "move the shared name into the contract:\n" + "\n".join(offenders)
    )


def test_the_contract_check_refuses_an_agent_internal(tmp_path: Path) -> None:
    """The check above can fail: an import of an agent internal, in any form, is found."""
    for source in (
        "from treadle_agent.state import write_atomic\n",
        "import treadle_agent.host_sim\n",
        "def f():\n    from treadle_agent import errors\n",
        "from treadle_agent import __version__, log\n",
    ):
        (tmp_path / "m.py").write_text(source)
        assert [m for _, m, n in _imports(tmp_path / "m.py") if not _contract_only(m, n)], source
    for source in (
        "from treadle_agent.contract.files import write_atomic\n",
        "from treadle_agent import __version__\n",
        "from treadle_agent.contract import names\n",
    ):
        (tmp_path / "m.py").write_text(source)
        assert not [m for _, m, n in _imports(tmp_path / "m.py") if not _contract_only(m, n)], (
            source
        )


def test_the_contract_imports_nothing_else_of_the_agent() -> None:
    """The contract is the bottom layer: the agent imports it, never the other way round."""
    offenders = _agent_imports_beyond_contract(ROOT / "node-agent" / "treadle_agent" / "contract")
    assert not offenders, "\n".join(offenders)


def test_schemas_ship_inside_the_package_and_all_compile() -> None:
    import treadle_schemas

    names = treadle_schemas.names()
    for required in (
        "fabric.json",
        "profile.json",
        "site.json",
        "cluster.json",
        "node.json",
        "rollout.json",
        "manifest.json",
        "agent-config.json",
        "controller-config.json",
    ):
        assert required in names
    for name in names:
        treadle_schemas.validator(name)  # raises on an invalid schema or a dangling $ref


def test_console_templates_and_static_files_ship_as_package_data() -> None:
    import fnmatch

    console = ROOT / "controller" / "treadle" / "console"
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["treadle.console"]
    files = [
        p.relative_to(console).as_posix()
        for p in console.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert any(f.startswith("templates/") for f in files) and any(
        f.startswith("static/") for f in files
    )
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not unshipped, (
        f"add these to [tool.setuptools.package-data] treadle.console: {unshipped}"
    )


#: Modules where one imports the other and the other must not import it back, not even inside a function.
ONE_WAY = (
    ("treadle.demo.workspace", "treadle.demo.grow"),
    ("treadle_agent.host_sim", "treadle_agent.host"),
    ("treadle_agent.host_mode", "treadle_agent.host_sim"),
    ("treadle_agent.host_mode", "treadle_agent.host"),
)


def _module_file(module: str) -> Path:
    top = ROOT / ("node-agent" if module.startswith("treadle_agent") else "controller")
    return top.joinpath(*module.split(".")).with_suffix(".py")


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (``from a import b`` counts as a and a.b)."""
    found = set()
    for _, module, names in _imports(path):
        found.add(module)
        found.update(f"{module}.{n}" for n in names)
    return found


def test_the_former_cycles_go_one_way() -> None:
    for importer, imported in ONE_WAY:
        assert imported in _imported_modules(_module_file(importer)), (
            f"{importer} no longer imports {imported}"
        )
        assert importer not in _imported_modules(_module_file(imported)), (
            f"{imported} imports {importer} back"
        )
