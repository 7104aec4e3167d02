"""`treadle bootstrap`: the shell script and the cloud-init user-data it renders, checked by the real tools.

The script is parsed by ``sh -n`` and ``shellcheck``, the user-data by
Debian's ``cloud-init schema``; the values the script writes (agent.toml, the
trust root, the unit) are read back by running its assignments in ``sh``; the
trust-root check runs for real on altered copies. The whole install is run on
a booted node in tests/realnode/test_bootstrap.py.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import REPO
from treadle.cli import main as treadle
from treadle.provision import NodeFacts, Sources, shell_script

URL = "http://treadle.example.org:8080/v1/nodes/{node}/manifest"
NODE = "batch-002"
NODE_FILE = "sites/meyrin/batch/nodes/batch-002.yaml"


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the example fabric as `treadle init` makes it, a trust-root.json from `treadle keys generate`)."""
    top = tmp_path_factory.mktemp("bootstrap")
    assert treadle(["init", str(top / "fabric")]) == 0
    assert treadle(["keys", "generate", str(top / "keys")]) == 0
    return top / "fabric", top / "keys" / "trust-root.json"


def bootstrap(
    capsys: pytest.CaptureFixture[str],
    fabric: tuple[Path, Path],
    *extra: str,
    node: str | None = NODE,
) -> tuple[int, str, str]:
    repo, trust = fabric
    args = [
        "bootstrap",
        str(repo),
        *([node] if node else []),
        "--manifest-url",
        URL,
        "--trust-root",
        str(trust),
        *extra,
    ]
    if "--wheelhouse" not in extra and "--agent-wheel" not in extra:
        args += ["--wheelhouse", "/var/tmp/wheelhouse"]
    capsys.readouterr()
    code = treadle(args)
    out, err = capsys.readouterr()
    return code, out, err


def values(script: str) -> str:
    """The script's assignments alone (everything before its first function): safe to run anywhere."""
    return script[: script.index("say() {")]


def sh_value(script: str, name: str) -> str:
    """What ``$name`` holds once sh has read the script's assignments."""
    r = subprocess.run(
        ["sh", "-c", f'{values(script)}\nprintf "%s" "${name}"'], capture_output=True, check=True
    )
    return r.stdout.decode("utf-8")


def test_the_script_parses_in_sh_and_passes_shellcheck(capsys, fabric, tmp_path: Path) -> None:
    code, script, err = bootstrap(capsys, fabric)
    assert code == 0, err
    path = tmp_path / "bootstrap.sh"
    path.write_text(script)
    assert script.startswith("#!/bin/sh\n")
    r = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, (
        "shellcheck is missing: .ci/install-deps installs it (Debian package shellcheck)"
    )
    r = subprocess.run([shellcheck, "-s", "sh", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_the_user_data_passes_cloud_init_schema_and_runs_the_same_script(
    capsys, fabric, tmp_path: Path
) -> None:
    from ruamel.yaml import YAML

    code, script, _ = bootstrap(capsys, fabric)
    code, user_data, err = bootstrap(capsys, fabric, "--format", "cloud-init")
    assert code == 0, err
    assert user_data.startswith("#cloud-config\n")
    path = tmp_path / "user-data"
    path.write_text(user_data)
    cloud_init = shutil.which("cloud-init")
    assert cloud_init, (
        "cloud-init is missing: .ci/install-deps installs it (Debian package cloud-init)"
    )
    r = subprocess.run(
        [cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 0 and "Valid cloud-config" in r.stdout, r.stdout + r.stderr
    doc = YAML(typ="safe").load(user_data)
    (written,) = doc["write_files"]
    assert written["content"] == script and written["permissions"] == "0700"
    assert doc["runcmd"] == [["sh", written["path"]]]


def test_cloud_init_schema_refuses_a_broken_user_data(tmp_path: Path) -> None:
    """The schema check above can fail: a user-data whose runcmd is no list is refused."""
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\nruncmd: 5\n")
    r = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert r.returncode != 0


def test_agent_toml_is_valid_for_the_agent_and_carries_the_node_settings(
    capsys, fabric, tmp_path: Path
) -> None:
    from treadle_agent.config import from_dict

    _, script, _ = bootstrap(
        capsys, fabric, "--manifest-url", "https://mirror.example.org/m/{node}"
    )
    text = sh_value(script, "AGENT_TOML")
    raw = tomllib.loads(text)
    assert (
        raw["trust_root"] == "/etc/treadle/trust-root.json"
        and raw["state_dir"] == "/var/lib/treadle"
    )
    raw["trust_root"] = str(fabric[1])  # the agent checks that the file exists: the host's copy
    config = from_dict(raw, tmp_path / "agent.toml")
    assert config.node == NODE
    assert config.fetch.manifest_urls == (
        URL.replace("{node}", NODE),
        f"https://mirror.example.org/m/{NODE}",
    )
    # The port the controller scrapes (agent.metrics_port of the node file), on every interface.
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9742)
    assert NODE_FILE in script  # where the printed identity: line goes


def test_the_embedded_trust_root_and_unit_are_the_files_byte_for_byte(capsys, fabric) -> None:
    _, script, _ = bootstrap(capsys, fabric)
    trust = fabric[1].read_bytes()
    assert sh_value(script, "TRUST_ROOT").encode() == trust
    assert sh_value(script, "TRUST_ROOT_SHA256") == hashlib.sha256(trust).hexdigest()
    unit = REPO / "systemd" / "treadle-agent.service"
    assert sh_value(script, "AGENT_UNIT") == unit.read_text()


def test_verify_accepts_the_script_as_rendered(capsys, fabric, tmp_path: Path) -> None:
    _, script, _ = bootstrap(capsys, fabric)
    (tmp_path / "b.sh").write_text(script)
    r = subprocess.run(["sh", str(tmp_path / "b.sh"), "--verify"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(fabric[1].read_bytes()).hexdigest() in r.stderr


@pytest.mark.parametrize("alter", ["key", "threshold", "digest", "truncated"])
def test_an_altered_trust_root_or_digest_is_refused_before_anything_changes(
    capsys, fabric, tmp_path: Path, alter: str
) -> None:
    _, script, _ = bootstrap(capsys, fabric)
    digest = hashlib.sha256(fabric[1].read_bytes()).hexdigest()
    altered = {
        "key": lambda s: s.replace('"public":"', '"public":"00', 1),
        "threshold": lambda s: s.replace('"threshold":1', '"threshold":2', 1),
        "digest": lambda s: s.replace(
            f"TRUST_ROOT_SHA256={digest}", f"TRUST_ROOT_SHA256={'0' * 64}", 1
        ),
        "truncated": lambda s: s.replace('"threshold":1}', '"threshold":1', 1),
    }[alter](script)
    assert altered != script
    for argv in (
        ["sh", "-s", "--", "--verify"],
        # The whole script, as nobody: were the check to pass, it would stop at "run this as root".
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-s"],
    ):
        r = subprocess.run(argv, input=altered, capture_output=True, text=True, cwd="/")
        assert r.returncode == 1, r.stderr
        assert "the one pinned in this script" in r.stderr and "nothing was installed" in r.stderr


def test_pip_gets_each_source_as_one_argument(capsys, fabric, tmp_path: Path) -> None:
    odd = "/media/install media/it's here"
    _, script, _ = bootstrap(
        capsys, fabric, "--wheelhouse", odd, "--agent-wheel", "https://repo.example.org/t.whl"
    )
    line = next(s for s in script.splitlines() if s.startswith('"$VENV/bin/pip"'))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "pip").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    (venv / "bin" / "pip").chmod(0o755)
    r = subprocess.run(
        ["sh", "-c", f"VENV={venv}\nfail() {{ exit 9; }}\n{line}"], capture_output=True, text=True
    )
    assert r.returncode == 0
    args = r.stderr.splitlines()  # the line sends pip's output to stderr
    assert args[args.index("--find-links") + 1] == odd and "--no-index" in args
    assert args[-1] == "https://repo.example.org/t.whl"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    unit=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=200
    ),
    name=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z"),
    wheelhouse=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n\r"),
        min_size=1,
        max_size=40,
    ),
)
def test_any_unit_text_node_name_and_source_reach_the_node_exactly(
    unit: str, name: str, wheelhouse: str
) -> None:
    sources = Sources((URL,), b'{"keys":{}, "threshold":1}\n', wheelhouse, None, unit)
    script = shell_script(
        NodeFacts(name, f"sites/s/c/nodes/{name}.yaml", 9731, "f", "work tree"), sources
    )
    assert subprocess.run(["sh", "-n"], input=script.encode(), capture_output=True).returncode == 0
    assert sh_value(script, "AGENT_UNIT") == unit
    assert sh_value(script, "NODE") == name
    assert tomllib.loads(sh_value(script, "AGENT_TOML"))["node"] == name


def test_all_writes_a_script_and_a_user_data_for_every_node_but_the_retired(
    capsys, fabric, tmp_path: Path
) -> None:
    repo = tmp_path / "fabric"
    shutil.copytree(fabric[0], repo)
    storage = repo / "sites/wigner/storage/nodes/storage-002.yaml"
    storage.write_text(storage.read_text().replace("lifecycle: production", "lifecycle: retired"))
    code, out, err = bootstrap(
        capsys, (repo, fabric[1]), "--all", "--out", str(tmp_path / "out"), node=None
    )
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    nodes = sorted(p.stem for p in repo.glob("sites/*/*/nodes/*.yaml") if p.stem != "storage-002")
    assert written == sorted([f"{n}.sh" for n in nodes] + [f"{n}.cloud-init.yaml" for n in nodes])
    assert (tmp_path / "out" / "batch-001.sh").stat().st_mode & 0o777 == 0o755
    assert "storage-002" not in out
    code, _, err = bootstrap(capsys, (repo, fabric[1]), node="storage-002")
    assert code == 2 and "retired" in err


def test_one_node_with_out_writes_both_forms(capsys, fabric, tmp_path: Path) -> None:
    code, _, err = bootstrap(capsys, fabric, "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{NODE}.cloud-init.yaml",
        f"{NODE}.sh",
    ]


def test_an_unknown_node_exits_2_and_says_how_to_find_the_names(capsys, fabric) -> None:
    code, out, err = bootstrap(capsys, fabric, node="batch-999")
    assert code == 2 and out == ""
    assert (
        "no node 'batch-999'" in err
        and "batch-001" in err
        and "sites/<site>/<cluster>/nodes/<node>.yaml" in err
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["--manifest-url", "ftp://x/{node}"], "--manifest-url 'ftp://x/{node}'"),
        (["--manifest-url", "http://[::1/{node}"], "not an absolute http(s) URL"),
        (["--agent-unit", "/nonexistent/treadle-agent.service"], "--agent-unit"),
        (["--all"], "--all needs --out"),
    ],
)
def test_bad_options_exit_2_naming_the_option(capsys, fabric, args: list[str], says: str) -> None:
    code, out, err = bootstrap(capsys, fabric, *args)
    assert code == 2 and says in err and out == ""


def test_no_agent_source_and_a_bad_trust_root_exit_2(capsys, fabric, tmp_path: Path) -> None:
    repo, _ = fabric
    capsys.readouterr()
    assert (
        treadle(
            ["bootstrap", str(repo), NODE, "--manifest-url", URL, "--trust-root", str(fabric[1])]
        )
        == 2
    )
    assert "--wheelhouse" in capsys.readouterr().err
    bad = tmp_path / "trust-root.json"
    bad.write_text('{"threshold": 2, "keys": {}}')
    code, _, err = bootstrap(capsys, (repo, bad))
    assert code == 2 and str(bad) in err


def test_an_invalid_fabric_exits_1_with_its_problems(capsys, fabric, tmp_path: Path) -> None:
    repo = tmp_path / "fabric"
    shutil.copytree(fabric[0], repo)
    (repo / "sites/meyrin/batch/nodes/batch-001.yaml").write_text("kind: Node\naddress: [\n")
    code, out, err = bootstrap(capsys, (repo, fabric[1]))
    assert code == 1 and out == "" and "batch-001.yaml" in err


def test_a_new_node_with_a_secret_it_cannot_decrypt_yet_is_bootstrapped_with_a_note(
    capsys, fabric, tmp_path: Path
) -> None:
    """Enrolment is the fix of that problem, so it does not stop the bootstrap (it stops validate)."""
    repo = tmp_path / "fabric"
    shutil.copytree(fabric[0], repo)
    node_file = repo / NODE_FILE
    node_file.write_text(
        node_file.read_text() + "files:\n  /etc/munge/munge.key: {secret: secrets/munge.key.age}\n"
    )
    assert treadle(["validate", str(repo)]) == 1
    code, script, err = bootstrap(capsys, (repo, fabric[1]))
    assert code == 0, err
    assert "note:" in err and "munge.key" in err and "treadle secret" in err
    assert sh_value(script, "NODE") == NODE
    # Any other problem still refuses, and every problem is printed.
    (repo / "sites/meyrin/batch/nodes/batch-001.yaml").write_text("kind: Node\naddress: [\n")
    code, script, err = bootstrap(capsys, (repo, fabric[1]))
    assert code == 1 and script == "" and "batch-001.yaml" in err and "munge.key" in err
