"""``treadle-agent enroll``: the node's own age identity, created once, rotated only on request."""

from __future__ import annotations

import os
import subprocess
import sys

import pyrage
import pytest

from treadle_agent import identity
from treadle_agent.errors import StateError


def _enroll(config, *extra: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "treadle_agent.cli", "enroll", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_enroll_creates_a_private_identity_and_prints_only_its_public_part(tmp_path, keys, kit):
    config = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:9/"])
    p = _enroll(config)
    assert p.returncode == 0, p.stderr
    recipient = p.stdout.strip()
    assert recipient.startswith("age1") and "\n" not in recipient
    path = tmp_path / "state" / identity.IDENTITY
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "state").st_mode & 0o077 == 0
    secret = [line for line in path.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1")]
    assert len(secret) == 1 and secret[0] not in p.stdout + p.stderr
    # The stored identity opens what is encrypted to the printed recipient.
    box = pyrage.encrypt(b"marker", [pyrage.x25519.Recipient.from_str(recipient)])
    assert pyrage.decrypt(box, identity.load(tmp_path / "state")) == b"marker"


def test_enroll_twice_is_refused_and_changes_nothing(tmp_path, keys, kit):
    config = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:9/"])
    first = _enroll(config).stdout.strip()
    before = (tmp_path / "state" / identity.IDENTITY).read_bytes()
    again = _enroll(config)
    assert again.returncode == 2
    assert "already enrolled as " + first in again.stderr and "--rotate" in again.stderr
    assert again.stdout == ""
    assert (tmp_path / "state" / identity.IDENTITY).read_bytes() == before


def test_rotate_makes_a_new_identity_and_keeps_the_old_one_for_pending_secrets(tmp_path, keys, kit):
    config = kit.write_config(tmp_path, keys.trust_root, ["http://127.0.0.1:9/"])
    old = _enroll(config).stdout.strip()
    box = pyrage.encrypt(b"old secret", [pyrage.x25519.Recipient.from_str(old)])
    p = _enroll(config, "--rotate")
    assert p.returncode == 0, p.stderr
    new = p.stdout.strip()
    assert new.startswith("age1") and new != old and "rotated: " + old in p.stderr
    state = tmp_path / "state"
    assert identity.recipient(state) == new
    assert os.stat(state / identity.PREVIOUS).st_mode & 0o777 == 0o600
    assert pyrage.decrypt(box, identity.load(state)) == b"old secret"


def test_an_identity_readable_by_others_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    identity.enroll(state)
    os.chmod(state / identity.IDENTITY, 0o644)
    with pytest.raises(StateError, match="readable by group or others.*chmod 0600"):
        identity.load(state)


def test_a_damaged_identity_is_refused_without_echoing_it(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    identity.enroll(state)
    path = state / identity.IDENTITY
    damaged = path.read_text().replace("AGE-SECRET-KEY-1", "AGE-SECRET-KEY-1QQ")
    path.write_text(damaged)
    with pytest.raises(StateError) as e:
        identity.load(state)
    secret_line = [line for line in damaged.splitlines() if line.startswith("AGE-SECRET-KEY-1")][0]
    assert secret_line not in str(e.value) and "not an age X25519 identity" in str(e.value)
