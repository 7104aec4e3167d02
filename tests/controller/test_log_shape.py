"""One structured log shape for the controller and the agent, with every logger routed through it."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import anyio

from treadle import log as controller_log
from treadle_agent.contract import log as agent_log

KEYS = ["ts", "level", "logger", "event"]


def test_controller_agent_and_plain_logging_lines_share_one_json_shape(stream) -> None:
    controller_log.configure(as_json=True, stream=stream)
    controller_log.event("commit.deployed", commit="c" * 40)
    agent_log.get_logger("fetch").warning("fetch.failed", url="http://127.0.0.1:9/m")
    logging.getLogger("treadle.rollout.something").info("plain %s line", "logging")
    logging.getLogger("some.library").warning("a library speaks")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 4
    assert all(list(doc)[:4] == KEYS for doc in lines), lines
    assert [(d["logger"], d["event"], d["level"]) for d in lines] == [
        ("treadle.controller", "commit.deployed", "info"),
        ("treadle_agent.fetch", "fetch.failed", "warning"),
        ("treadle.rollout.something", "log", "info"),
        ("some.library", "log", "warning"),
    ]
    assert lines[2]["message"] == "plain logging line"


def test_a_failed_scrape_of_an_agent_is_logged(stream) -> None:
    from treadle.rollout.observe import ScrapeSource, Target

    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        controller_log.configure(as_json=True, stream=stream)
        result = anyio.run(ScrapeSource(timeout_s=2).observe, [Target("n1", "127.0.0.1", port)])
    assert result == {}
    [line] = [json.loads(x) for x in stream.getvalue().splitlines() if "scrape.failed" in x]
    assert (
        line["node"] == "n1"
        and line["url"].endswith(f":{port}/metrics")
        and line["level"] == "warning"
    )


def test_a_running_controller_writes_only_json_lines(make_fabric, start_controller) -> None:
    repo, fabric = make_fabric(1, 1, 1)
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(fabric.commit)
    ctl.stop()
    lines = ctl.log.read_text().splitlines()
    assert lines
    docs = [json.loads(line) for line in lines]  # a plain-text line (uvicorn, a library) fails here
    assert all(list(d)[:4] == KEYS for d in docs)


def test_agent_once_json_lines_have_the_same_shape(tmp_path: Path) -> None:
    from treadle.keygen import generate

    generate(tmp_path / "keys")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'node = "n1"\nmanifest_urls = ["http://127.0.0.1:9/v1/nodes/{{node}}/manifest"]\nretries = 0\n'
        f'trust_root = "{tmp_path / "keys" / "trust-root.json"}"\nstate_dir = "{tmp_path / "state"}"\n'
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "treadle_agent.cli",
            "once",
            "--config",
            str(config),
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stderr.splitlines()
    assert any("fetch.failed" in line for line in lines), result.stderr
    for line in lines:
        assert list(json.loads(line))[:4] == KEYS, line


def test_both_programs_tell_their_version_on_the_command_line_in_status_and_in_their_info_metric(
    make_fabric, start_controller
) -> None:
    import httpx

    from treadle_agent import __version__

    for program, module in (("treadle", "treadle.cli"), ("treadle-agent", "treadle_agent.cli")):
        out = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == f"{program} {__version__}"
    repo, fabric = make_fabric(1, 1, 1)
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(fabric.commit)
    assert httpx.get(f"{ctl.url}/v1/status", timeout=10).json()["version"] == __version__
    assert (
        f'treadle_controller_info{{version="{__version__}"}} 1.0'
        in httpx.get(f"{ctl.url}/metrics", timeout=10).text
    )
