"""The controller's commands: clear one-line errors and the exit codes DESIGN.md fixes."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

from treadle import log
from treadle.commands.controller import print_status


def treadle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadle.cli", *args], capture_output=True, text=True, timeout=60
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_against_no_controller_exits_2_naming_the_url() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    out = treadle("status", "--url", url)
    assert out.returncode == 2 and url in out.stderr and "--url" in out.stderr


def test_accept_history_against_no_controller_exits_2() -> None:
    out = treadle(
        "rollout", "accept-history", "a" * 40, "--url", f"http://127.0.0.1:{_closed_port()}"
    )
    assert out.returncode == 2 and "cannot reach the controller" in out.stderr


def test_controller_run_with_a_missing_config_exits_2_naming_the_file(tmp_path: Path) -> None:
    out = treadle("controller", "run", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2 and "nope.toml" in out.stderr


def test_controller_run_with_an_unusable_signing_key_exits_2(tmp_path: Path, repo) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "c.toml").write_text(
        f'repository = "{repo.bare}"\nstate_dir = "s"\npublish_dir = "p"\nsigning_key = "missing.key"\n'
    )
    out = treadle("controller", "run", "--config", str(tmp_path / "c.toml"))
    assert (
        out.returncode == 2
        and "missing.key" in out.stderr
        and "treadle keys generate" in out.stderr
    )


def test_status_table_shows_refusal_diagnostics_and_the_accept_command() -> None:
    import contextlib

    doc = {
        "repository": "/srv/fabric.git",
        "branch": "main",
        "deployed_commit": "a" * 40,
        "nodes": {"total": 3, "by_lifecycle": {"production": 2, "draining": 1}},
        "pending_history_acceptance": "b" * 40,
        "last_refusal": {
            "commit": "b" * 40,
            "reason": "non_fast_forward",
            "message": "history rewritten",
            "diagnostics": ["sites/a/site.yaml:3:5: bad"],
            "at": 0,
        },
        "last_cycle": {},
    }
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_status(doc)
    text = buf.getvalue()
    assert (
        "a" * 40 in text
        and "sites/a/site.yaml:3:5: bad" in text
        and "accept-history" in text
        and "draining 1" in text
    )


def test_status_table_shows_the_rollout_with_its_reason_and_revert_branch() -> None:
    import contextlib

    doc = {
        "repository": "/srv/fabric.git",
        "branch": "main",
        "deployed_commit": "c" * 40,
        "nodes": {"total": 1, "by_lifecycle": {"production": 1}},
        "pending_history_acceptance": None,
        "last_refusal": None,
        "last_cycle": {},
        "rollout": {
            "id": 7,
            "commit": "c" * 40,
            "state": "rolled_back",
            "wave": 0,
            "paused": False,
            "immediate": False,
            "reason": "wave canary: 1 of 1 nodes failed",
            "revert_branch": "treadle/revert-cccccccccccc",
        },
    }
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_status(doc)
    text = buf.getvalue()
    assert "7 of cccccccccccc: rolled_back" in text and "1 of 1 nodes failed" in text
    assert "treadle/revert-cccccccccccc" in text


def test_json_logs_are_one_object_per_event() -> None:
    stream = io.StringIO()
    log.configure(as_json=True, stream=stream)
    log.event("commit.deployed", commit="c" * 40, published=3)
    log.warning("commit.refused", reason="invalid", diagnostics=["a:1:2: x"])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("commit.deployed", "info"),
        ("commit.refused", "warning"),
    ]
    assert lines[0]["published"] == 3 and lines[1]["diagnostics"] == ["a:1:2: x"]
    log.configure()


def test_accept_history_with_an_unreadable_token_file_exits_2(tmp_path: Path) -> None:
    out = treadle(
        "rollout",
        "accept-history",
        "a" * 40,
        "--url",
        "http://127.0.0.1:9",
        "--token-file",
        str(tmp_path / "none"),
    )
    assert out.returncode == 2 and "--token-file" in out.stderr
