"""Inputs that once crashed or were misread: `validate`, `render` and `plan` answer with file:line:col and exit 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

NODE1 = "sites/s1/c1/nodes/n1.yaml"
NODE = "kind: Node\naddress: 10.0.0.1\n"

CRASHERS = {
    "binary literal": (NODE + "labels: {flags: 0b101}\n", "3:17: '0b101' is a YAML 1.1 number"),
    "huge integer": (NODE + "labels: {n: " + "9" * 5000 + "}\n", "3:13: integer 9"),
    "bool-tagged key": (
        NODE + "!!bool labels: {a: b}\n",
        "3:1: 'labels' is not a valid bool in YAML 1.2",
    ),
    "bool-tagged looked-up key": (
        "!!bool kind: Node\naddress: 10.0.0.1\n",
        "1:1: 'kind' is not a valid bool",
    ),
    "300 levels": (
        NODE + "data: {x: " + "[" * 300 + "]" * 300 + "}\n",
        "3:73: maps and lists nest more than 64 levels",
    ),
    "100000 levels": (
        NODE + "data: {x: " + "[" * 100_000 + "]" * 100_000 + "}\n",
        "maps and lists nest more than 64",
    ),
    "block nesting": (
        NODE + "data:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(500)),
        "nest more than 64",
    ),
}


@pytest.mark.parametrize("case", sorted(CRASHERS))
@pytest.mark.parametrize("command", ["validate", "render", "plan"])
def test_inputs_that_crashed_the_loader_are_located_errors_in_every_command(
    command, case, fabric, tmp_path
):
    text, expected = CRASHERS[case]
    fabric.write(NODE1, text)
    args = {
        "validate": [str(fabric.root)],
        "render": ["--all", "--out", str(tmp_path / "out"), str(fabric.root)],
        "plan": [str(fabric.root), "HEAD~1", "HEAD", "--full-render"],
    }[command]
    if command == "plan":
        fabric.reset()
        fabric.commit("base")
        fabric.write(NODE1, text)
        fabric.commit("bad")
    # A real process: a segfault or a recursion crash shows as its exit code, not as a test-runner crash.
    out = subprocess.run(
        [sys.executable, "-m", "treadle.cli", command, *args],
        capture_output=True,
        text=True,
        cwd=fabric.root,
        timeout=120,
    )
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    assert f"{NODE1}:" in out.stdout + out.stderr and expected in out.stdout + out.stderr


def invalid(cli, fabric) -> str:
    outcome = cli("validate", str(fabric.root))
    assert outcome.code == 1, outcome
    return outcome.err


@pytest.mark.parametrize("word", ["no", "yes", "off", "On", "Y", "n"])
def test_a_yaml_1_1_boolean_word_in_a_fabric_value_is_refused_with_the_hint(cli, fabric, word):
    fabric.write(NODE1, NODE + f"data:\n  ssh: {{password_authentication: {word}}}\n")
    err = invalid(cli, fabric)
    assert f"{NODE1}:4:34: '{word}' is a YAML 1.1 boolean word" in err
    assert "(hint: quote it, or write true/false)" in err


def test_a_string_used_as_a_template_condition_is_an_error_not_true(cli, fabric):
    fabric.write(
        "templates/sshd.j2",
        "Port 22\nPasswordAuthentication {{ 'yes' if data.ssh.password else 'no' }}\n",
    )
    fabric.write(
        NODE1,
        NODE
        + 'data: {ssh: {password: "no"}}\nfiles:\n  /etc/ssh/sshd_config: {template: sshd.j2, mode: "644"}\n',
    )
    err = invalid(cli, fabric)
    assert "templates/sshd.j2:2:1: template error: the text 'no' is used as a condition" in err
    assert 'compare it (x == "yes", x != "")' in err
    fabric.write(
        NODE1,
        NODE
        + 'data: {ssh: {password: false}}\nfiles:\n  /etc/ssh/sshd_config: {template: sshd.j2, mode: "644"}\n',
    )
    assert cli("validate", str(fabric.root)).code == 0


@pytest.mark.parametrize(
    "condition",
    [
        "{% if x %}a{% endif %}",
        "{% if 1 and x %}a{% endif %}",
        "{% if not x %}a{% endif %}",
        "{% if false %}{% elif x %}a{% endif %}",
        "{% for i in [1] if x %}a{% endfor %}",
        "{{ not x }}",
        "{% if x or y %}a{% endif %}",
    ],
)
def test_every_kind_of_condition_refuses_a_string(cli, fabric, condition):
    fabric.write("templates/t.j2", "{% set x = data.word %}{% set y = true %}" + condition + "\n")
    fabric.write(
        NODE1, NODE + 'data: {word: "off"}\nfiles:\n  /etc/t: {template: t.j2, mode: "644"}\n'
    )
    assert "template error: the text 'off' is used as a condition" in invalid(cli, fabric)


def test_conditions_on_booleans_numbers_lists_and_comparisons_still_work(cli, fabric, tmp_path):
    fabric.write(
        "templates/t.j2",
        "{% if data.on and data.n and data.l and data.w != '' and not data.off %}ok{% endif %}"
        "{{ data.w or 'fallback' }}\n",
    )
    fabric.write(
        NODE1,
        NODE
        + 'data: {on: true, off: false, n: 2, l: [1], w: "x"}\nfiles:\n  /etc/t: {template: t.j2, mode: "644"}\n',
    )
    assert cli("render", "--all", "--out", str(tmp_path / "out"), str(fabric.root)).code == 0
    rendered = next((tmp_path / "out").rglob("n1*")).read_text()
    assert "okx" in rendered


def test_a_template_nested_too_deeply_to_compile_is_a_located_error(cli, fabric):
    fabric.write("templates/chrony.conf.j2", "line\n{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}\n")
    assert "templates/chrony.conf.j2:1:1: template nests too deeply to compile" in invalid(
        cli, fabric
    )


def test_a_nul_byte_is_reported_once_at_its_own_line(cli, fabric):
    fabric.write_bytes(NODE1, (NODE + "# a\n" * 14 + "data: {a: \x00}\n").encode())
    err = invalid(cli, fabric)
    assert err.count(NODE1) == 1, err
    assert f"{NODE1}:17:11: control character U+0000 in the file" in err


def test_an_error_in_a_shared_profile_hides_no_template_error_and_names_the_unchecked_nodes(
    cli, template_copy
):
    base = template_copy.root / "profiles" / "base.yaml"
    base.write_text(base.read_text().replace('mode: "0644"', "mode: 0644", 1))
    chrony = template_copy.root / "templates" / "chrony.conf.j2"
    chrony.write_text(chrony.read_text().replace("data.ntp.servers", "data.ntp.sevrers"))
    outcome = cli("validate", str(template_copy.root))
    assert outcome.code == 1
    lines = outcome.err.splitlines()
    assert any(
        line.startswith("profiles/base.yaml:") and "mode 644 is an integer" in line
        for line in lines
    )
    assert any(
        line.startswith("templates/chrony.conf.j2:") and "'sevrers'" in line for line in lines
    ), outcome.err
    assert any(
        line.startswith(
            "profiles/base.yaml:1:1: 12 node(s) use this file and were not rendered or checked"
        )
        and "login-001" in line
        for line in lines
    ), outcome.err
    assert (
        lines[-1]
        == "invalid: 3 problem(s); 0 node(s) rendered and checked, 12 not rendered because a file they use has errors"
    )


def test_nodes_outside_a_broken_profile_are_still_rendered_and_checked(cli, template_copy):
    storage = template_copy.root / "profiles" / "storage.yaml"
    storage.write_text(storage.read_text() + "bogus_field: 1\n")
    outcome = cli("validate", "--format", "json", str(template_copy.root))
    doc = json.loads(outcome.out)
    assert (
        outcome.code == 1
        and doc["unchecked"]
        and all(n.startswith("storage-") for n in doc["unchecked"])
    )
    assert doc["nodes"] == 12 - len(doc["unchecked"])
    assert {(d["file"], d["code"]) for d in doc["diagnostics"]} == {
        ("profiles/storage.yaml", "schema"),
        ("profiles/storage.yaml", "unchecked"),
    }
    motd = template_copy.root / "templates" / "motd.j2"
    motd.write_text(motd.read_text() + "{{ data.motd.nothing }}\n")
    doc = json.loads(cli("validate", "--format", "json", str(template_copy.root)).out)
    templates = [d["message"] for d in doc["diagnostics"] if d["file"] == "templates/motd.j2"]
    assert len(templates) == 1 and templates[0].endswith(
        "and 11 other nodes)"
    )  # the unchecked ones included


def test_a_template_literal_python_cannot_convert_is_a_located_error(cli, fabric):
    fabric.write("templates/chrony.conf.j2", "line\n{{ " + "9" * 5000 + " }}\n")
    assert "templates/chrony.conf.j2:1:1: template cannot be compiled: ValueError" in invalid(
        cli, fabric
    )
