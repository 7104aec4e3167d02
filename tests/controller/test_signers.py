"""Several signing keys: threshold trust roots and key rotation, with a real controller and real agents."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from treadle.daemon.config import from_dict
from treadle.daemon.sign import ManifestSigner
from treadle.errors import SigningKeyError
from treadle.keygen import generate, trust_root

from .test_agents_e2e import agent_config, run_agent


def accepted_generation(config: Path) -> int:
    """The generation the agent last accepted (0: none yet)."""
    state = config.parent / "state" / "agent-state.json"
    return json.loads(state.read_text())["generation"] if state.exists() else 0


def keyids(envelope: bytes) -> set[str]:
    return {s["keyid"] for s in json.loads(envelope)["signatures"]}


def toml_list(*paths: Path) -> str:
    return "[" + ", ".join(f'"{p}"' for p in paths) + "]"


def wait_for(predicate, what: str, timeout_s: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_signing_key_accepts_a_list_and_a_single_key_still_works(tmp_path: Path) -> None:
    base = {"repository": "r", "state_dir": "s", "publish_dir": "p"}
    one = from_dict({**base, "signing_key": "k1.key"}, tmp_path / "c.toml")
    assert one.signing.signing_keys == (
        str(tmp_path / "k1.key"),
    ) and one.signing.signing_key == str(tmp_path / "k1.key")
    two = from_dict(
        {**base, "signing_key": ["k1.key", "gcpkms:projects/p/key#pub.json"]}, tmp_path / "c.toml"
    )
    assert two.signing.signing_keys == (str(tmp_path / "k1.key"), "gcpkms:projects/p/key#pub.json")


def test_the_same_key_listed_twice_is_refused_since_it_cannot_meet_a_threshold(
    tmp_path: Path,
) -> None:
    generate(tmp_path / "k", threshold=1)
    key = tmp_path / "k" / "treadle.key"
    (tmp_path / "copy.key").write_bytes(key.read_bytes())
    with pytest.raises(SigningKeyError, match="same public key"):
        ManifestSigner([str(key), str(tmp_path / "copy.key")], lifetime_s=3600)


def test_a_threshold_two_trust_root_is_met_by_a_controller_with_both_keys(
    make_fabric, start_controller, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    generate(keys, threshold=2)
    repo, fabric = make_fabric(1, 1, 1)
    ctl = start_controller(
        str(repo.bare), signing=toml_list(keys / "treadle-1.key", keys / "treadle-2.key")
    )
    ctl.wait_deployed(fabric.commit)
    node = fabric.nodes[0]
    config = agent_config(tmp_path, node.name, ctl.url, keys / "trust-root.json")
    result = run_agent(config)
    assert "verify.refused" not in result.stderr, result.stderr
    assert accepted_generation(config) >= 1
    assert (config.parent / "root/etc/motd").is_file()
    assert len(keyids(ctl.envelopes()[node.name])) == 2


def test_key_rotation_signs_with_both_then_drops_the_old_and_no_node_ever_refuses(
    make_fabric, start_controller, tmp_path: Path
) -> None:
    """The README's rotation, step by step; the agent runs after every step and must accept every manifest."""
    old, new = tmp_path / "old", tmp_path / "new"
    generate(old, threshold=1, name="old")
    generate(new, threshold=1, name="new")
    repo, fabric = make_fabric(1, 1, 1)
    node = fabric.nodes[0]
    ctl = start_controller(str(repo.bare), signing=f'"{old / "old.key"}"')
    ctl.wait_deployed(fabric.commit)
    root = tmp_path / "node-trust-root.json"
    root.write_bytes((old / "trust-root.json").read_bytes())
    config = agent_config(tmp_path, node.name, ctl.url, root)
    generations: list[int] = []

    def agent_accepts() -> None:
        # A restarted controller listens on another port.
        text = config.read_text()
        config.write_text(
            text.replace(text.split('manifest_urls = ["')[1].split("/v1/")[0], ctl.url)
        )
        result = run_agent(config)
        assert "verify.refused" not in result.stderr, result.stderr
        generations.append(accepted_generation(config))

    agent_accepts()
    old_id = keyids(ctl.envelopes()[node.name])
    # 1. The controller signs with the old and the new key (a restart re-signs what is published).
    ctl.stop()
    ctl = start_controller(str(repo.bare), signing=toml_list(old / "old.key", new / "new.key"))
    both = wait_for(
        lambda: len(keyids(e := ctl.envelopes()[node.name])) == 2 and e,
        "envelopes signed by both keys",
    )
    agent_accepts()  # the node still trusts only the old key: the old signature suffices
    # 2. Every node's trust root lists both keys.
    trust_root(tmp_path / "both.json", [old / "old.pub.json", new / "new.pub.json"], threshold=1)
    root.write_bytes((tmp_path / "both.json").read_bytes())
    agent_accepts()
    # 3. The controller drops the old key.
    ctl.stop()
    ctl = start_controller(str(repo.bare), signing=f'"{new / "new.key"}"')
    wait_for(
        lambda: keyids(ctl.envelopes()[node.name]) != keyids(both),
        "envelopes signed by the new key only",
    )
    assert keyids(ctl.envelopes()[node.name]).isdisjoint(old_id)
    agent_accepts()
    # 4. Every node's trust root drops the old key.
    root.write_bytes((new / "trust-root.json").read_bytes())
    agent_accepts()
    assert generations == sorted(generations) and generations[-1] > generations[0]


def test_a_key_file_and_a_signer_uri_together_meet_a_threshold_of_two(tmp_path: Path) -> None:
    from treadle.daemon.sign import ToSign, content_digest
    from treadle_agent.contract.envelope import verify_envelope
    from treadle_agent.contract.manifest import canonical_json
    from treadle_agent.contract.trustroot import TrustRoot
    from treadle_agent.errors import VerifyError

    from .test_sign import COMMIT, manifest

    keys = tmp_path / "keys"
    generate(keys, threshold=2)
    signer = ManifestSigner(
        [str(keys / "treadle-1.key"), f"file2:{keys / 'treadle-2.key'}"], lifetime_s=3600
    )
    m = manifest()
    [signed] = signer.sign(
        [ToSign("n1", m, content_digest(m), 1, COMMIT, "production", canonical_json(m))],
        now=1_800_000_000,
    )
    root = TrustRoot.load(keys / "trust-root.json")
    assert verify_envelope(signed.envelope, root)  # both distinct keys signed: threshold 2 met
    alone = ManifestSigner(str(keys / "treadle-1.key"), lifetime_s=3600).sign(
        [ToSign("n1", m, content_digest(m), 1, COMMIT, "production", canonical_json(m))],
        now=1_800_000_000,
    )[0]
    with pytest.raises(VerifyError, match="requires 2"):
        verify_envelope(alone.envelope, root)
