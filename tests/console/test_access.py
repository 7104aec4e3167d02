"""Who reads the console without the admin token: ``console_read`` in controller.toml, from the file to the pages."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from support.console_state import make_fleet, serving
from treadle.daemon import config
from treadle.daemon.api import build_app
from treadle.errors import UsageError

TOKEN = b"t0ken-of-the-admin"
MINIMAL = """
repository = "fabric.git"
state_dir = "state"
publish_dir = "publish"
signing_key = "keys/controller.key"
"""


def _config(tmp_path: Path, extra: str) -> config.ControllerConfig:
    (tmp_path / "admin.token").write_bytes(TOKEN)
    path = tmp_path / "controller.toml"
    path.write_text(MINIMAL + extra)
    return config.load(path)


def test_console_read_defaults_to_loopback_and_takes_the_schema_values(tmp_path: Path) -> None:
    assert _config(tmp_path, "").api.console_read == "loopback"
    assert _config(tmp_path, 'console_read = "anyone"\n').api.console_read == "anyone"
    assert (
        _config(
            tmp_path, 'console_read = "nobody"\nadmin_token_file = "admin.token"\n'
        ).api.console_read
        == "nobody"
    )


def test_a_bad_console_read_names_the_key_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="console_read"):
        _config(tmp_path, 'console_read = "everyone"\n')
    with pytest.raises(UsageError, match=r"console_read = \"nobody\" needs admin_token_file"):
        _config(tmp_path, 'console_read = "nobody"\n')


def test_anyone_reads_from_another_machine_without_the_token_but_actions_still_need_it(
    tmp_path: Path,
) -> None:
    fleet = make_fleet(tmp_path, n=4, admin_token=TOKEN)
    fleet.ctx.console_read = "anyone"
    # Starlette's in-process client connects as host "testclient": not loopback, like a remote browser.
    with TestClient(build_app(fleet.ctx), follow_redirects=False) as client:
        for path in ("/ui/", "/ui/nodes", "/ui/nodes/n000", "/ui/rollouts/1"):
            assert client.get(path).status_code == 200, path
        confirm = client.get("/ui/rollouts/1/approve")
        assert confirm.status_code == 200 and "actions need the admin token" in confirm.text
    assert fleet.ctx.rollouts.document(1)["state"] == "pending"


def test_nobody_reads_without_the_token_not_even_from_loopback(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, n=4, admin_token=TOKEN)
    fleet.ctx.console_read = "nobody"
    with serving(fleet.ctx) as url:
        r = httpx.get(url + "/ui/nodes/n000")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert httpx.get(url + "/ui/login").status_code == 200
        bearer = httpx.get(
            url + "/ui/nodes/n000", headers={"Authorization": "Bearer " + TOKEN.decode()}
        )
        assert bearer.status_code == 200 and "n000" in bearer.text


def test_loopback_reads_freely_and_another_machine_is_sent_to_the_login(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, n=4, admin_token=TOKEN)
    assert fleet.ctx.console_read == "loopback"
    with serving(fleet.ctx) as url:
        assert httpx.get(url + "/ui/nodes/n000").status_code == 200
    with TestClient(build_app(fleet.ctx), follow_redirects=False) as client:
        r = client.get("/ui/nodes/n000")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
