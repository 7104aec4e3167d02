"""Fuzzing: mutated fabrics are valid or refused with located diagnostics, never a traceback, a hang or a crash.

Mutations of the minimal fabric (bytes, lines, indentation, tags, anchors and
aliases, nesting, huge scalars, control characters) go through the real
render (:func:`treadle.fabric.render_fabric` over a work tree), and the YAML
loader alone gets arbitrary bytes. The budget is small and fixed
(``max_examples``); what a run finds is added to ``corpus/``, which
:func:`test_the_regression_corpus_is_refused_located_by_a_real_process` replays
through ``treadle validate`` in a real process (so a segfault would show as its
exit code).

Corpus file names say which file of the minimal fabric they replace:
``node-*`` the node file n1, ``profile-*`` profiles/base.yaml, ``site-*``
the site file, ``fabric-*`` fabric.yaml, ``template-*`` the chrony template.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fabric.conftest import MINIMAL
from treadle.fabric import ParseCache, render_fabric
from treadle.fabric.source import WorkTreeSource
from treadle.fabric.yamlload import Limits, YamlProblem, load_yaml

CORPUS = Path(__file__).parent / "corpus"
TARGETS = {
    "node": "sites/s1/c1/nodes/n1.yaml",
    "profile": "profiles/base.yaml",
    "site": "sites/s1/site.yaml",
    "fabric": "fabric.yaml",
    "template": "templates/chrony.conf.j2",
}
FILES = {path: textwrap.dedent(text).encode() for path, text in MINIMAL.items()}

_TOKENS = [
    "!!bool ",
    "!!int ",
    "!!float ",
    "!!null ",
    "!!str ",
    "!!map ",
    "!!seq ",
    "!!binary ",
    "! ",
    "!foo ",
    "!append ",
    "!delete ",
    "!replace ",
    "&a ",
    "*a",
    "&an:chor ",
    "<<: ",
    "? ",
    "- ",
    "--- ",
    "...",
    "%YAML 1.1\n",
    "yes",
    "no",
    "off",
    "0b101",
    "1_000",
    "0x",
    "0o7",
    ".inf",
    "~",
    "null",
    "'",
    '"',
    "|",
    ">",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "#",
    "\t",
    "\n",
    "  ",
    "{% if %}",
    "{{ data.x }}",
    "{%",
    "}}",
]
_CONTROL = [chr(c) for c in (*range(0, 9), 11, 12, *range(14, 32), 0x7F, 0x85, 0xFEFF, 0xFFFE)]


@st.composite
def mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """One mutation of ``data``: at a drawn position, bytes, a token, control characters, nesting or a huge scalar."""
    kind = draw(
        st.sampled_from(["bytes", "token", "control", "line", "indent", "nesting", "huge", "alias"])
    )
    at = draw(st.integers(0, len(data)))
    if kind == "bytes":
        cut = draw(st.integers(0, min(8, len(data) - at)))
        return data[:at] + draw(st.binary(max_size=8)) + data[at + cut :]
    if kind == "token":
        return data[:at] + draw(st.sampled_from(_TOKENS)).encode() + data[at:]
    if kind == "control":
        return data[:at] + draw(st.sampled_from(_CONTROL)).encode() + data[at:]
    lines = data.split(b"\n")
    i = draw(st.integers(0, max(len(lines) - 1, 0)))
    if kind == "line":
        op = draw(st.sampled_from(["drop", "dup", "swap"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if kind == "indent":
        lines[i] = b" " * draw(st.integers(0, 9)) + lines[i].lstrip(b" ")
        return b"\n".join(lines)
    if kind == "nesting":
        depth = draw(st.sampled_from([10, 63, 64, 65, 500, 20_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b"{a: ", b"}"), (b"- ", b"")]))
        return data[:at] + opener * depth + closer * depth + data[at:]
    if kind == "huge":
        return (
            data[:at]
            + draw(st.sampled_from([b"9", b"x", b"-", b" "]))
            * draw(st.sampled_from([100, 5000, 300_000]))
            + data[at:]
        )
    return data[:at] + b"&x [1, 2]\nb: *x\nc: *y\n" + data[at:]  # alias


def _write(root: Path, replaced: dict[str, bytes]) -> None:
    for path, data in {**FILES, **replaced}.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def assert_located(root: Path) -> None:
    """Render the fabric under ``root``: it must not raise, and every diagnostic is located in a file of the fabric."""
    result = render_fabric(WorkTreeSource(root), ParseCache())
    for d in result.diagnostics:
        assert d.line >= 1 and d.col >= 1, d
        assert d.message and (root / d.file).exists() or d.file == ".gitmodules", d


@st.composite
def mutated_fabric(draw: st.DrawFn) -> dict[str, bytes]:
    path = draw(st.sampled_from(sorted(TARGETS.values())))
    data = FILES[path]
    for _ in range(draw(st.integers(1, 3))):
        data = draw(mutation(data))
    return {path: data}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(replaced=mutated_fabric())
def test_a_mutated_fabric_is_valid_or_refused_with_located_diagnostics(
    tmp_path_factory, replaced
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    _write(root, replaced)
    assert_located(root)


@settings(max_examples=200, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.lists(st.sampled_from(_TOKENS + _CONTROL + list("ab1 \n:-")), max_size=40).map(
            lambda t: "".join(t).encode()
        ),
    )
)
def test_the_loader_returns_a_value_or_a_located_problem_for_any_bytes(data: bytes) -> None:
    try:
        load_yaml(data, Limits())
    except YamlProblem as e:
        assert 1 <= e.problem.line <= data.count(b"\n") + 2 and e.problem.col >= 1, e.problem
        assert e.problem.message


def _corpus() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file())


def test_the_corpus_has_a_case_for_each_kind_of_file() -> None:
    assert {p.name.split("-", 1)[0] for p in _corpus()} == set(TARGETS)


@pytest.mark.parametrize("case", _corpus(), ids=lambda p: p.name)
def test_the_regression_corpus_is_refused_located_by_a_real_process(
    case: Path, tmp_path: Path
) -> None:
    target = TARGETS[case.name.split("-", 1)[0]]
    _write(tmp_path, {target: case.read_bytes()})
    out = subprocess.run(
        [sys.executable, "-m", "treadle.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode in (0, 1), (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    if out.returncode == 1:
        problems = out.stderr.strip().splitlines()[:-1]
        assert problems and all(
            line.split(":")[1].isdigit() and int(line.split(":")[1]) >= 1 for line in problems
        ), out.stderr
