"""README "Install", from the built artifacts: `make dist`'s wheel, a wheelhouse, venvs at /opt/treadle.

A controller host and a node are each a directory standing for the root of
their machine: ``<root>/opt/treadle`` is the venv, ``<root>/etc/systemd/system``
holds the unit, and ``systemd-analyze verify --root`` checks the unit against
that machine, so ``ExecStart=/opt/treadle/bin/...`` must name an installed
command. The commands are the README's, run as written with the paths rooted.
Dependencies come from PyPI once, into the wheelhouse (pip's cache makes a
second run quick); the installs themselves are offline (``--no-index``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from support import REPO as ROOT

README = ROOT / "README.md"
#: Distributions only the controller extra brings; a node install must have none of them.
CONTROLLER_ONLY = {"pygit2", "ruamel.yaml", "jinja2", "watchfiles", "starlette", "uvicorn", "rich"}


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, argv))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def version() -> str:
    from treadle_agent import __version__

    return __version__


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dist`'s build: the versioned wheel and sdist."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


@pytest.fixture(scope="module")
def wheelhouse(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """README: `pip download --dest wheelhouse dist/treadle-<v>-py3-none-any.whl[controller]`-style, for offline installs."""
    house = tmp_path_factory.mktemp("wheelhouse")
    wheel = dist / f"treadle-{version()}-py3-none-any.whl"
    run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--dest",
        house,
        f"treadle[controller] @ {wheel.as_uri()}",
    )
    return house


def machine(tmp_path: Path, name: str) -> Path:
    """A directory standing for a machine's root, with systemd's own units (verify needs its targets)."""
    root = tmp_path / name
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True
    )
    return root


def install(root: Path, wheelhouse: Path, requirement: str) -> Path:
    """README: `python3 -m venv /opt/treadle`, then pip install from the wheelhouse, offline."""
    venv = root / "opt" / "treadle"
    run(sys.executable, "-m", "venv", venv)
    run(
        venv / "bin" / "pip", "install", "-q", "--no-index", "--find-links", wheelhouse, requirement
    )
    return venv


def verify_unit(root: Path, unit: str) -> str:
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze, (
        "systemd-analyze not installed: .ci/install-deps installs it (Debian package `systemd`)"
    )
    # The units name /opt/treadle/bin (README "Install"); one still naming /usr/local/bin is checked as if moved.
    text = (ROOT / "systemd" / unit).read_text().replace("/usr/local/bin/", "/opt/treadle/bin/")
    (root / "etc" / "systemd" / "system" / unit).write_text(text)
    result = subprocess.run(
        [systemd_analyze, "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (result.stdout + result.stderr).strip() + (
        "" if result.returncode == 0 else f"\nexit {result.returncode}"
    )


def installed(venv: Path) -> set[str]:
    listing = json.loads(run(venv / "bin" / "python", "-m", "pip", "list", "--format", "json"))
    return {d["name"].lower().replace("_", "-") for d in listing}


def test_make_dist_builds_a_versioned_wheel_and_sdist(dist: Path) -> None:
    v = version()
    assert sorted(p.name for p in dist.iterdir()) == [
        f"treadle-{v}-py3-none-any.whl",
        f"treadle-{v}.tar.gz",
    ]
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dynamic"] == ["version"]
    assert "dist:" in (ROOT / "Makefile").read_text()


def test_node_install_is_the_agent_alone_from_the_wheel(wheelhouse: Path, tmp_path: Path) -> None:
    root = machine(tmp_path, "node")
    venv = install(root, wheelhouse, f"treadle=={version()}")
    assert not installed(venv) & {d.replace(".", "-") for d in CONTROLLER_ONLY}
    assert run(venv / "bin" / "treadle-agent", "--version").strip() == f"treadle-agent {version()}"
    assert "example" in run(venv / "bin" / "treadle-agent", "once", "--help")
    # The whole verification stack of the agent imports from the installed wheel (not this checkout).
    where = run(
        venv / "bin" / "python",
        "-c",
        "import treadle_agent.agent, treadle_agent.verify, securesystemslib.signer, "
        "treadle_schemas; print(treadle_agent.__file__)",
        cwd=tmp_path,
    )
    assert where.startswith(str(venv))
    assert verify_unit(root, "treadle-agent.service") == ""


def test_controller_host_install_runs_the_commands_and_its_unit_verifies(
    wheelhouse: Path, tmp_path: Path
) -> None:
    root = machine(tmp_path, "controller-host")
    venv = install(root, wheelhouse, f"treadle[controller]=={version()}")
    treadle = venv / "bin" / "treadle"
    assert run(treadle, "--version").strip() == f"treadle {version()}"
    # The template and the schemas ship inside the wheel: a new fabric validates with the installed command.
    run(treadle, "init", tmp_path / "fabric")
    run(treadle, "validate", tmp_path / "fabric")
    run(treadle, "keys", "generate", tmp_path / "keys")
    unit = (ROOT / "systemd" / "treadle-controller.service").read_text()
    assert re.search(r"^ExecStart=/opt/treadle/bin/treadle controller run ", unit, re.M)
    assert verify_unit(root, "treadle-controller.service") == ""


def test_systemd_analyze_verify_fails_when_the_command_is_not_installed(tmp_path: Path) -> None:
    assert "is not executable" in verify_unit(
        machine(tmp_path, "empty"), "treadle-controller.service"
    )


def test_readme_install_section_names_the_steps_this_file_runs() -> None:
    text = README.read_text()
    section = text[text.index("### Install") : text.index("### Keys")]
    for step in (
        "make dist",
        "python3 -m venv /opt/treadle",
        "pip download",
        "--no-index --find-links",
        "'treadle[controller]'",
        "systemd-analyze verify",
        "tests/install/test_install.py",
    ):
        assert step in section, step


def test_the_ci_templates_install_step_installs_the_wheel_it_is_pointed_at(
    wheelhouse: Path, tmp_path: Path
) -> None:
    """The fabric template's GitHub step, run as written, with TREADLE_WHEELS set to a directory of wheels."""
    import os

    from ruamel.yaml import YAML

    workflow = YAML(typ="safe").load(
        (ROOT / "fabric-repo-template/.github/workflows/treadle.yml").read_text()
    )
    step = next(s for s in workflow["jobs"]["plan"]["steps"] if s.get("name") == "Install Treadle")
    venv = tmp_path / "runner"
    run(sys.executable, "-m", "venv", venv)
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": step["env"]["PIP_FIND_LINKS"].replace(
            "${{ vars.TREADLE_WHEELS }}", str(wheelhouse)
        ),
    }
    done = subprocess.run(
        ["bash", "-e", "-c", step["run"]], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert run(venv / "bin" / "treadle", "--version").strip() == f"treadle {version()}"
