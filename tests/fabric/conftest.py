"""Fixtures: small fabric repositories written into temp dirs, the real CLI, real git."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import TEMPLATE, copy_template
from support.git import ADA, git
from treadle.cli import main

TEMPLATE_DIR = TEMPLATE

MINIMAL = {
    "fabric.yaml": """\
        kind: Fabric
        name: test
        defaults:
          data:
            ntp: {servers: [ntp1.example.org, ntp2.example.org]}
          files:
            /etc/chrony.conf: {template: chrony.conf.j2, mode: "644", notify: [chronyd]}
          packages:
            chrony: {ensure: present}
          services:
            chronyd: {enabled: true, state: running}
          health:
            sshd: {tcp: 22}
        """,
    "templates/chrony.conf.j2": "{% for s in data.ntp.servers %}server {{ s }} iburst\n{% endfor %}# {{ node.name }}\n",
    "profiles/base.yaml": """\
        kind: Profile
        sysctl:
          vm.swappiness: 10
        """,
    "sites/s1/site.yaml": """\
        kind: Site
        profiles: [base]
        labels: {site: s1}
        """,
    "sites/s1/c1/cluster.yaml": """\
        kind: Cluster
        """,
    "sites/s1/c1/nodes/n1.yaml": """\
        kind: Node
        address: 10.0.0.1
        """,
    "sites/s1/c1/nodes/n2.yaml": """\
        kind: Node
        address: 10.0.0.2
        """,
}


@dataclass
class Fabric:
    """A fabric repository in a temp dir, edited file by file."""

    root: Path

    def write(self, path: str, text: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
        return target

    def write_bytes(self, path: str, data: bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def remove(self, path: str) -> None:
        (self.root / path).unlink()

    def reset(self) -> None:
        """Back to the minimal fabric: its files rewritten, every other file removed."""
        for path in self.root.rglob("*"):
            if (
                path.is_file()
                and ".git" not in path.parts
                and str(path.relative_to(self.root)) not in MINIMAL
            ):
                path.unlink()
        for path, text in MINIMAL.items():
            self.write(path, text)

    def git(self, *args: str) -> str:
        return git(self.root, *args, identity=ADA)

    def commit(self, message: str = "change") -> str:
        if not (self.root / ".git").exists():
            self.git("init", "-q")
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def fabric(tmp_path: Path) -> Fabric:
    """The minimal valid fabric: one site, one cluster, two nodes."""
    f = Fabric(tmp_path / "fabric")
    f.reset()
    return f


@pytest.fixture
def template_copy(tmp_path: Path) -> Fabric:
    """A copy of fabric-repo-template."""
    target = tmp_path / "template"
    copy_template(target)
    return Fabric(target)


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``treadle`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str) -> Outcome:
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse usage errors and --help
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run
