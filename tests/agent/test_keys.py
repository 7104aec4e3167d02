"""``treadle keys generate``: key files, modes, the trust root, and no overwriting."""

from __future__ import annotations

import json
import stat

from treadle.cli import main
from treadle_agent.contract.envelope import load_signer, sign_payload, verify_envelope
from treadle_agent.contract.trustroot import TrustRoot


def test_generate_writes_a_private_key_0600_a_public_key_and_a_usable_trust_root(tmp_path, capsys):
    d = tmp_path / "keys"
    assert main(["keys", "generate", str(d)]) == 0
    assert stat.S_IMODE((d / "treadle.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "treadle.pub.json").stat().st_mode) == 0o644
    trust = TrustRoot.load(d / "trust-root.json")
    pub = json.loads((d / "treadle.pub.json").read_text())
    assert trust.threshold == 1 and list(trust.keys) == [pub["keyid"]]
    signer = load_signer(str(d / "treadle.key"))
    assert verify_envelope(sign_payload(b"{}", [signer]), trust) == b"{}"
    assert str(d / "trust-root.json") in capsys.readouterr().out


def test_threshold_writes_that_many_distinct_keys(tmp_path):
    d = tmp_path / "keys"
    assert main(["keys", "generate", str(d), "--threshold", "3", "--name", "site"]) == 0
    trust = TrustRoot.load(d / "trust-root.json")
    assert trust.threshold == 3 and len(trust.keys) == 3
    signers = [load_signer(str(d / f"site-{i}.key")) for i in (1, 2, 3)]
    assert verify_envelope(sign_payload(b"{}", signers), trust) == b"{}"


def test_generate_refuses_to_overwrite_and_changes_nothing(tmp_path, capsys):
    d = tmp_path / "keys"
    assert main(["keys", "generate", str(d)]) == 0
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    assert main(["keys", "generate", str(d)]) == 2
    assert "already exists; refusing to overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_bad_threshold_and_name_are_usage_errors(tmp_path, capsys):
    assert main(["keys", "generate", str(tmp_path / "a"), "--threshold", "0"]) == 2
    assert main(["keys", "generate", str(tmp_path / "b"), "--name", "../x"]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
