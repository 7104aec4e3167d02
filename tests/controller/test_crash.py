"""SIGKILL of the controller while it publishes 1,000 manifests: the store stays whole and the restart converges."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

from treadle.daemon.publish import TEMP_PREFIX
from treadle_agent.contract.envelope import verify_envelope
from treadle_agent.verify import parse_manifest


class Observer:
    """What agents polling the store would have seen: every envelope verifies, no generation goes down or is reused."""

    def __init__(self, trust_root) -> None:  # type: ignore[no-untyped-def]
        self.trust_root = trust_root
        self.generation: dict[str, int] = {}
        self.by_generation: dict[tuple[str, int], str] = {}

    def observe(self, envelopes: dict[str, bytes]) -> dict[str, dict]:  # type: ignore[type-arg]
        docs = {}
        for node, data in envelopes.items():
            doc = parse_manifest(verify_envelope(data, self.trust_root)).doc
            g = doc["metadata"]["generation"]
            assert g >= self.generation.get(node, 0), f"{node}: generation went down to {g}"
            seen = self.by_generation.setdefault((node, g), hashlib.sha256(data).hexdigest())
            assert seen == hashlib.sha256(data).hexdigest(), (
                f"{node}: two different envelopes with generation {g}"
            )
            self.generation[node] = g
            docs[node] = doc
        return docs


def temp_files(publish: Path) -> list[Path]:
    return list((publish / "nodes").glob(f"*/{TEMP_PREFIX}*"))


def test_sigkill_while_publishing_1000_manifests_leaves_them_verifiable_and_a_restart_converges(
    make_fabric, start_controller, trust_root
) -> None:
    repo, fabric = make_fabric(2, 5, 100)
    assert len(fabric.nodes) == 1000
    # One wave: every change is published in one batch (no agents run here to pass a canary).
    (repo.work / "rollout.yaml").write_text(
        "kind: RolloutPolicy\nwaves:\n  - {name: all, fraction: 1.0, soak_s: 0}\n"
    )
    start = repo.commit_and_push("roll out every change in one wave")
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(start, timeout_s=120)
    seen = Observer(trust_root)
    assert len(seen.observe(ctl.envelopes())) == 1000
    fabric_yaml = repo.work / "fabric.yaml"
    caught, head = False, fabric.commit
    for attempt in range(
        1, 6
    ):  # the kill must land inside a publish batch; a batch takes tens of milliseconds
        fabric_yaml.write_text(
            fabric_yaml.read_text().replace(
                f"kernel.panic: {9 + attempt}", f"kernel.panic: {10 + attempt}"
            )
        )
        head = repo.commit_and_push(f"kernel.panic on every node, attempt {attempt}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not caught:
            if temp_files(ctl.publish):
                ctl.proc.send_signal(signal.SIGKILL)
                ctl.proc.wait()
                caught = True
            elif (ctl.status().get("rollout") or {}).get("commit") == head and ctl.status()[
                "rollout"
            ]["state"] not in ("pending", "publishing"):
                break  # published completely before the kill could land: try again
        if caught:
            break
        seen.observe(ctl.envelopes())
    assert caught, "the controller was never caught publishing"
    after_kill = seen.observe(ctl.envelopes())
    assert len(after_kill) == 1000  # whole envelopes only: old or new, never missing or partial
    restarted = start_controller(str(repo.bare))
    restarted.wait_deployed(head, timeout_s=120)
    final = seen.observe(restarted.envelopes())
    assert len(final) == 1000 and not temp_files(restarted.publish)
    assert {d["metadata"]["commit"] for d in final.values()} == {head}
    panic = {
        r["value"]
        for d in final.values()
        for r in d["resources"]
        if r["type"] == "sysctl" and r["key"] == "kernel.panic"
    }
    assert panic == {str(10 + attempt)}
    assert restarted.stop() == 0


def _caught_mid_rename(ctl, first: Path, last_dir: Path, timeout_s: float = 60) -> bool:  # type: ignore[no-untyped-def]
    """SIGKILL the controller once the batch's first manifest is renamed into place while its last is still a temp file.

    A batch is written as temp files, flushed, then renamed in node order; a
    kill between two renames leaves some nodes new and the others old. False
    when the batch was renamed through before the kill could land.
    """
    import os

    before = first.stat().st_ino
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if first.stat().st_ino != before:
            if any(name.startswith(TEMP_PREFIX) for name in os.listdir(last_dir)):
                ctl.proc.send_signal(signal.SIGKILL)
                ctl.proc.wait()
                return True
            return False
    return False


def test_a_restart_after_a_kill_between_renames_republishes_exactly_the_nodes_the_store_lacks(
    make_fabric, start_controller, trust_root
) -> None:
    """Recovery republishes what differs from the store, not every node of the interrupted batch.

    The interrupted batch reserved a generation for all 1,000 nodes; the store
    holds the new envelope of those renamed before the kill. Those are
    confirmed as they are; only the others are signed and published again.
    """
    repo, fabric = make_fabric(2, 5, 100)
    (repo.work / "rollout.yaml").write_text(
        "kind: RolloutPolicy\nwaves:\n  - {name: all, fraction: 1.0, soak_s: 0}\n"
    )
    start = repo.commit_and_push("roll out every change in one wave")
    ctl = start_controller(str(repo.bare))
    ctl.wait_deployed(start, timeout_s=120)
    names = sorted(n.name for n in fabric.nodes)
    first, last_dir = (
        ctl.publish / "nodes" / names[0] / "manifest",
        ctl.publish / "nodes" / names[-1],
    )
    fabric_yaml = repo.work / "fabric.yaml"
    caught, head = False, start
    for attempt in range(
        1, 11
    ):  # the kill must land inside the renames of one batch: a few milliseconds
        fabric_yaml.write_text(
            fabric_yaml.read_text().replace(
                f"kernel.panic: {9 + attempt}", f"kernel.panic: {10 + attempt}"
            )
        )
        head = repo.commit_and_push(f"kernel.panic on every node, attempt {attempt}")
        caught = _caught_mid_rename(ctl, first, last_dir)
        if caught:
            break
        ctl.wait_deployed(head, timeout_s=120)
    assert caught, "the controller was never caught between two renames of a batch"
    after_kill = ctl.envelopes()
    seen = Observer(trust_root)
    docs = seen.observe(after_kill)
    lacking = {n for n, d in docs.items() if d["metadata"]["commit"] != head}
    assert len(docs) == 1000 and 0 < len(lacking) < 1000  # some renamed, some not
    restarted = start_controller(str(repo.bare))
    restarted.wait_deployed(head, timeout_s=120)
    final = restarted.envelopes()
    republished = {n for n in final if final[n] != after_kill[n]}
    assert republished == lacking
    assert {d["metadata"]["commit"] for d in seen.observe(final).values()} == {head}
    assert restarted.stop() == 0
