"""release: sign → publish → confirm, the one path of the cycle, of re-signing and of the rollouts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from treadle.daemon.publish import PublishStore
from treadle.daemon.release import Release
from treadle.daemon.sign import ManifestSigner, ToSign, content_digest, manifest_from_envelope
from treadle.daemon.state import StateDB
from treadle.keygen import generate
from treadle_agent.contract.manifest import canonical_json

from .test_sign import COMMIT, manifest

LIFETIME_S, BEFORE_S = 3600, 600


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def parts(tmp_path: Path, clock: Clock) -> tuple[Release, StateDB, PublishStore]:
    generate(tmp_path / "keys")
    state, store = StateDB(tmp_path / "state.db"), PublishStore(tmp_path / "publish")
    signer = ManifestSigner([str(tmp_path / "keys" / "treadle.key")], lifetime_s=LIFETIME_S)
    mirror = SimpleNamespace(repo={})  # a mirror that knows no commit: history rows carry no author
    return Release(mirror, state, store, signer, clock, BEFORE_S), state, store  # type: ignore[arg-type]


def item(node: str, generation: int) -> ToSign:
    m = manifest(node)
    return ToSign(node, m, content_digest(m), generation, COMMIT, "production", canonical_json(m))


def published_generation(store: PublishStore, node: str) -> int:
    data = store.read(node)
    assert data is not None
    return int(manifest_from_envelope(data)["metadata"]["generation"])


def test_a_release_publishes_each_envelope_confirms_it_and_records_why(tmp_path: Path) -> None:
    release, state, store = parts(tmp_path, Clock(1_800_000_000))
    signed = release([item("n1", 7), item("n2", 9)], lambda n: f"why {n}")
    assert [s.node for s in signed] == ["n1", "n2"]
    assert published_generation(store, "n1") == 7 and published_generation(store, "n2") == 9
    records = state.records()
    assert records["n1"].generation == 7 and not records["n1"].dirty and not state.dirty()
    assert [h["why"] for h in state.node_history("n2")] == ["why n2"]
    assert (
        state.deployed_commit() is None
    )  # no gate decision: a publication outside a deploy moves no commit


def test_nothing_to_release_writes_nothing(tmp_path: Path) -> None:
    release, state, store = parts(tmp_path, Clock(1_800_000_000))
    assert release([], lambda _n: "none") == []
    assert dict(state.records()) == {} and list(store.nodes()) == []


def test_a_manifest_near_expiry_is_resigned_through_the_same_path_under_a_new_generation(
    tmp_path: Path,
) -> None:
    clock = Clock(1_800_000_000)
    release, state, store = parts(tmp_path, clock)
    release([item("n1", 1_800_000_000)], lambda _n: "deploy")
    assert release.resign_due() == ()  # signed by this process with its own keys, far from expiry
    clock.now += LIFETIME_S - BEFORE_S + 1
    assert release.resign_due() == ("n1",)
    record = state.records()["n1"]
    assert record.generation > 1_800_000_000 and not record.dirty
    assert published_generation(store, "n1") == record.generation
    assert [h["why"] for h in state.node_history("n1")] == ["re-signed", "deploy"]
    assert release.resign_due() == ()  # re-signed: not due again until its new expiry
