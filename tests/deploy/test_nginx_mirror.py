"""The documented mirror tier: a real nginx with deploy/nginx/treadle-mirror.conf in front of a real
controller's publish_dir, and a real agent (`treadle-agent once`) fetching through it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from support.fleet import Fleet, generate_keys, node_specs, rollout_yaml, write_agent_config
from support.nginx_mirror import Nginx, start_nginx


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Nginx]]:
    """One node published by a real controller, its publish_dir served by nginx."""
    tmp = tmp_path_factory.mktemp("mirror")
    fleet = Fleet(tmp / "fleet", generate_keys(tmp / "keys"), node_specs(1, 1))
    nginx = None
    try:
        fleet.init_repo(rollout_yaml())
        fleet.start_controller()
        manifest = (
            fleet.workdir / "controller" / "publish" / "nodes" / fleet.nodes[0].name / "manifest"
        )
        fleet.wait(manifest.exists, 60, "the first publication")
        nginx = start_nginx(tmp / "nginx", fleet.workdir / "controller" / "publish")
        yield fleet, nginx
    finally:
        if nginx is not None:
            nginx.stop()
        fleet.stop()


def agent_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadle_agent.cli", "once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def replace_file(path: Path, data: bytes) -> None:
    """As a mirror's sync would: a temp file renamed over the target."""
    temp = path.with_name(".sync-temp")
    temp.write_bytes(data)
    os.replace(temp, path)


def serves(url: str, condition: Callable[[bytes], bool]) -> None:
    """Wait until the mirror's answer meets ``condition`` (a renamed file is served at once; bounded all the same)."""
    deadline = time.monotonic() + 30
    while not condition(httpx.get(url, trust_env=False).content):
        assert time.monotonic() < deadline, f"{url} did not change within 30 s"
        time.sleep(0.1)


def test_an_agent_fetching_through_nginx_gets_200_then_304_and_refuses_a_tampered_envelope(
    mirrored: tuple[Fleet, Nginx], tmp_path: Path
) -> None:
    fleet, nginx = mirrored
    node = fleet.nodes[0].name
    config = write_agent_config(tmp_path / "agent", node, nginx.url, fleet.keys / "trust-root.json")
    uri = f"/v1/nodes/{node}/manifest"
    applied = tmp_path / "agent" / "root" / "etc" / "app.conf"

    first = agent_once(config)
    assert applied.read_text() == "v1\n", first.stderr
    second = agent_once(config)
    assert second.returncode == first.returncode
    assert [(m, s) for m, u, s in nginx.access() if u == uri] == [("GET", 200), ("GET", 304)]

    manifest = fleet.workdir / "controller" / "publish" / "nodes" / node / "manifest"
    envelope = json.loads(manifest.read_bytes())
    payload = base64.b64decode(envelope["payload"]).replace(b"v1\\n", b"evil\\n")
    assert b"evil" in payload
    envelope["payload"] = base64.b64encode(payload).decode()
    original = manifest.read_bytes()
    try:
        replace_file(manifest, json.dumps(envelope).encode())
        serves(nginx.url + uri, lambda body: body != original)
        third = agent_once(config)
    finally:
        replace_file(manifest, original)
        serves(nginx.url + uri, lambda body: body == original)
    assert applied.read_text() == "v1\n"  # the forged content was never applied
    assert "verify.refused" in third.stderr + third.stdout
    assert [s for m, u, s in nginx.access() if u == uri][
        -1
    ] == 200  # the mirror did serve it; the agent refused it


def test_the_mirror_answers_with_etag_last_modified_type_and_no_cache(
    mirrored: tuple[Fleet, Nginx],
) -> None:
    fleet, nginx = mirrored
    node = fleet.nodes[0].name
    url = f"{nginx.url}/v1/nodes/{node}/manifest"
    ok = httpx.get(url, trust_env=False)
    assert ok.status_code == 200
    assert (
        ok.content
        == (fleet.workdir / "controller" / "publish" / "nodes" / node / "manifest").read_bytes()
    )
    assert ok.headers["content-type"] == "application/json"
    assert ok.headers["cache-control"] == "no-cache"
    assert ok.headers["etag"].startswith('"') and ok.headers["last-modified"]
    again = httpx.get(url, headers={"If-None-Match": ok.headers["etag"]}, trust_env=False)
    assert again.status_code == 304 and again.content == b""
    since = httpx.get(
        url, headers={"If-Modified-Since": ok.headers["last-modified"]}, trust_env=False
    )
    assert since.status_code == 304
    head = httpx.head(url, trust_env=False)
    assert head.status_code == 200 and head.headers["etag"] == ok.headers["etag"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_mirror_refuses_every_method_but_get_and_head(
    mirrored: tuple[Fleet, Nginx], method: str
) -> None:
    fleet, nginx = mirrored
    response = httpx.request(
        method,
        f"{nginx.url}/v1/nodes/{fleet.nodes[0].name}/manifest",
        content=b"x",
        trust_env=False,
    )
    assert response.status_code in (403, 405)


def test_the_mirror_lists_no_directory_and_serves_no_temp_dot_or_other_file(
    mirrored: tuple[Fleet, Nginx],
) -> None:
    fleet, nginx = mirrored
    node = fleet.nodes[0].name
    node_dir = fleet.workdir / "controller" / "publish" / "nodes" / node
    (node_dir / ".manifest.tmp-leftover").write_bytes(b"half an envelope")
    (node_dir / "notes.txt").write_bytes(b"not a manifest")
    try:
        for path in [
            "/",
            "/v1/nodes/",
            f"/v1/nodes/{node}/",
            f"/nodes/{node}/manifest",
            f"/v1/nodes/{node}/.manifest.tmp-leftover",
            f"/v1/nodes/{node}/notes.txt",
            f"/nodes/{node}/.manifest.tmp-leftover",
            "/v1/nodes/.x/manifest",
            f"/v1/nodes/{node}/../{node}/manifest/",
            "/v1/nodes/../../etc/passwd",
            "/nodes/",
        ]:
            response = httpx.get(nginx.url + path, trust_env=False)
            assert response.status_code in (400, 404), path
            assert (
                b"half an envelope" not in response.content and b"Index of" not in response.content
            )
    finally:
        (node_dir / ".manifest.tmp-leftover").unlink()
        (node_dir / "notes.txt").unlink()
