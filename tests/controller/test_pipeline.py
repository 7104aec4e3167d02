"""The cycle in-process with the real renderer: plan, resume after a crash, coalescing, re-signing before expiry."""

from __future__ import annotations

from pathlib import Path

from treadle.daemon import config
from treadle.daemon import process as daemon
from treadle.daemon.pipeline import Pipeline, plan_changes
from treadle.daemon.sign import manifest_from_envelope
from treadle.daemon.state import NodeRecord


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def build(
    tmp_path: Path, repo_path: Path, signing_key: Path, clock: Clock, extra: str = ""
) -> Pipeline:
    path = tmp_path / "controller.toml"
    path.write_text(
        f'repository = "{repo_path}"\nstate_dir = "state"\npublish_dir = "publish"\nsigning_key = "{signing_key}"\n'
        f"manifest_lifetime_s = 3600\nresign_before_s = 600\n{extra}"
    )
    return daemon.build(config.load(path), clock=clock).pipeline


class Node:
    def __init__(self, name: str, digest: str, lifecycle: str = "production") -> None:
        self.name, self.digest, self.lifecycle = name, digest, lifecycle
        self.canonical = b"{}"
        self.manifest = {
            "metadata": {"generation": 0, "commit": None, "issued": None, "expires": None}
        }


def test_plan_bumps_only_changed_dirty_or_missing_nodes_and_lists_removed_ones() -> None:
    records = {
        "same": NodeRecord("same", 4, 4, "d-same", None, 0, "production"),
        "changed": NodeRecord("changed", 2, 2, "old", None, 0, "production"),
        "dirty": NodeRecord("dirty", 7, 6, "d-dirty", None, 0, "production"),
        "gone": NodeRecord("gone", 3, 3, "d", None, 0, "production"),
        "was-removed": NodeRecord(
            "was-removed", 9, 9, "d-back", None, 0, "production", present=False
        ),
    }
    nodes = {n: Node(n, f"d-{n}") for n in ("same", "changed", "dirty", "new", "was-removed")}
    plan = plan_changes(records, nodes, "c" * 40)
    assert {t.node: t.generation for t in plan.to_sign} == {
        "changed": 3,
        "dirty": 8,
        "new": 1,
        "was-removed": 10,
    }
    assert plan.removed == ("gone",) and plan.unchanged == 1
    missing = plan_changes(records, nodes, "c" * 40, published=frozenset({"changed", "dirty"}))
    assert "same" in {t.node for t in missing.to_sign}


def test_a_crash_between_reserving_and_confirming_republishes_under_a_higher_generation(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    repo, fabric = make_fabric(1, 1, 3)
    clock = Clock(1_800_000_000)
    p = build(tmp_path, repo.bare, signing_key, clock)
    assert p.run_once().result == "deployed"
    node = fabric.nodes[0]
    node.path.write_text(node.path.read_text().replace("labels: {", "labels: {owner: x, ", 1))
    head = repo.commit_and_push("change")
    p.source.fetch()
    # Simulate the crash: the reservation is committed, the publish and confirmation never happen.
    rec = p.state.nodes()[node.name]
    p.state.reserve(
        [NodeRecord(node.name, rec.generation + 1, 0, "not-yet", head, rec.expires, rec.lifecycle)]
    )
    restarted = build(tmp_path, repo.bare, signing_key, clock)
    outcome = restarted.run_once()
    assert outcome.result == "deployed"
    # The node's change goes through its rollout's wave, published within the same cycle.
    assert restarted.rollouts is not None and restarted.rollouts.active() is not None
    published = manifest_from_envelope(restarted.store.read(node.name) or b"")
    assert published["metadata"]["generation"] == rec.generation + 2
    assert not any(r.dirty for r in restarted.state.nodes().values())


def test_commits_pushed_during_a_cycle_are_coalesced_into_the_newest(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    p = build(tmp_path, repo.bare, signing_key, Clock(1_800_000_000))
    p.run_once()
    for i in range(3):
        fabric.nodes[0].path.write_text(
            fabric.nodes[0].path.read_text().replace("labels: {", f"labels: {{c{i}: x, ", 1)
        )
        head = repo.commit_and_push(f"change {i}")
    outcome = p.run_once()
    assert outcome.commit == head and [d["commit"] for d in p.state.deployments()][:2] == [
        head,
        fabric.commit,
    ]


def test_manifests_near_expiry_are_resigned_even_while_the_head_is_refused(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    clock = Clock(1_800_000_000)
    p = build(tmp_path, repo.bare, signing_key, clock)
    p.run_once()
    before = {n: manifest_from_envelope(p.store.read(n) or b"") for n in p.store.nodes()}
    fabric.nodes[0].path.write_text("address: [broken\n")
    repo.commit_and_push("broken")
    clock.now += 3600 - 600 + 1  # inside the re-sign window
    outcome = p.run_once()
    assert outcome.result == "refused" and set(outcome.resigned) == set(before)
    for n, old in before.items():
        new = manifest_from_envelope(p.store.read(n) or b"")
        # Above the old one, and at least the clock's floor at the time (see treadle.daemon.generation).
        assert new["metadata"]["generation"] == max(
            old["metadata"]["generation"] + 1, int(clock.now * 1000)
        )
        assert new["metadata"]["commit"] == fabric.commit and new["resources"] == old["resources"]
        assert new["metadata"]["expires"] > old["metadata"]["expires"]
    assert p.run_once().resigned == ()  # not again until the next window


def test_an_invalid_commit_is_recorded_once_not_at_every_poll(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    p = build(tmp_path, repo.bare, signing_key, Clock(1_800_000_000))
    p.run_once()
    fabric.nodes[0].path.write_text("address: [broken\n")
    bad = repo.commit_and_push("broken")
    assert p.run_once().result == "refused"
    assert p.run_once().result == "unchanged"
    assert [r.commit for r in p.state.refusals()] == [bad]


def test_a_submodule_in_the_fabric_is_refused_and_never_fetched(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    repo, fabric = make_fabric(1, 1, 2)
    p = build(tmp_path, repo.bare, signing_key, Clock(1_800_000_000))
    p.run_once()
    repo.git("update-index", "--add", "--cacheinfo", f"160000,{fabric.commit},vendor/lib")
    repo.git(
        "commit", "-q", "-m", "a submodule"
    )  # not commit_and_push: `git add -A` would drop the gitlink
    repo.push()
    bad = repo.git("rev-parse", "HEAD")
    outcome = p.run_once()
    assert outcome.result == "refused" and outcome.commit == bad
    assert any(d.startswith("vendor/lib:") and "submodule" in d for d in outcome.diagnostics)
    assert not (p.source.path / "modules").exists()


def _generations(p: Pipeline) -> dict[str, int]:
    return {
        n: manifest_from_envelope(p.store.read(n) or b"")["metadata"]["generation"]
        for n in p.store.nodes()
    }


def test_a_controller_rebuilt_without_state_or_store_publishes_above_what_agents_accepted(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    import shutil

    repo, fabric = make_fabric(1, 1, 3)
    clock = Clock(1_800_000_000)
    first = build(tmp_path, repo.bare, signing_key, clock)
    first.run_once()
    node = fabric.nodes[0]
    node.path.write_text(node.path.read_text().replace("labels: {", "labels: {owner: x, ", 1))
    repo.commit_and_push("change")
    clock.now += 5
    first.run_once()  # the change's canary wave, published
    accepted = _generations(first)
    first.state.close()
    # The host is rebuilt: state and publish directories are gone; only the clock has moved on.
    shutil.rmtree(tmp_path / "state")
    shutil.rmtree(tmp_path / "publish")
    clock.now += 60
    rebuilt = build(tmp_path, repo.bare, signing_key, clock)
    assert rebuilt.run_once().result == "deployed"
    again = _generations(rebuilt)
    assert set(again) == set(accepted) and all(again[n] > accepted[n] for n in accepted)


def test_a_controller_that_lost_its_state_but_kept_its_store_publishes_above_the_store(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    import shutil

    repo, fabric = make_fabric(1, 1, 3)
    clock = Clock(1_800_000_000)
    first = build(tmp_path, repo.bare, signing_key, clock)
    first.run_once()
    accepted = _generations(first)
    first.state.close()
    shutil.rmtree(tmp_path / "state")
    clock.now -= 86400  # and the rebuilt host's clock is a day behind
    rebuilt = build(tmp_path, repo.bare, signing_key, clock)
    assert rebuilt.run_once().result == "deployed"
    again = _generations(rebuilt)
    assert all(again[n] > accepted[n] for n in accepted)


def test_a_restore_from_an_old_backup_with_an_empty_publish_dir_republishes_every_node_above_the_newer_ones(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    """README "Restoring a controller from backup": the old state, an empty publish directory."""
    import shutil

    repo, fabric = make_fabric(1, 1, 3)
    clock = Clock(1_800_000_000)
    p = build(tmp_path, repo.bare, signing_key, clock, extra="")
    p.run_once()
    p.rollouts = (
        None  # every change published at once: what matters here is what the nodes were last sent
    )
    p.state.close()
    shutil.copytree(tmp_path / "state", tmp_path / "backup")
    p = build(tmp_path, repo.bare, signing_key, clock)
    p.rollouts = None
    node = fabric.nodes[0]
    original = node.path.read_text()
    node.path.write_text(original.replace("labels: {", "labels: {owner: x, ", 1))
    repo.commit_and_push("change")
    clock.now += 10
    p.run_once()
    node.path.write_text(original)
    repo.commit_and_push("and back")
    clock.now += 10
    p.run_once()
    newest = _generations(p)
    p.state.close()
    shutil.rmtree(tmp_path / "state")
    shutil.rmtree(tmp_path / "publish")
    shutil.copytree(tmp_path / "backup", tmp_path / "state")
    clock.now += 60
    restored = build(tmp_path, repo.bare, signing_key, clock)
    assert restored.run_once().result == "deployed"
    again = _generations(restored)
    assert set(again) == set(newest) and all(again[n] > newest[n] for n in newest)


def _differing(p: Pipeline, repo: Path, head: str) -> set[str]:
    """The nodes whose published content differs from a full render of ``head``, computed without the pipeline."""
    from treadle.daemon.sign import content_digest
    from treadle.fabric import GitRevisionSource, ParseCache, render_fabric

    rendered = render_fabric(GitRevisionSource(repo, head), ParseCache())
    assert rendered.ok
    return {
        n
        for n, node in rendered.nodes.items()
        if content_digest(manifest_from_envelope(p.store.read(n) or b""))
        != content_digest(node.manifest)
    }


def test_a_one_node_push_during_a_rollout_plans_that_node_and_every_node_still_waiting(
    make_fabric, signing_key: Path, tmp_path: Path
) -> None:
    """An incremental render plans only the nodes that can differ: the pushed one, and those the rollout it
    supersedes had not published yet (the one it had published is left alone), exactly as a full plan would."""
    repo, fabric = make_fabric(1, 2, 4)
    clock = Clock(1_800_000_000)
    p = build(tmp_path, repo.bare, signing_key, clock)
    assert p.run_once().result == "deployed"
    canary = next(n for n in fabric.nodes if n.name.endswith("-n001"))
    waiting, pushed = [n for n in fabric.nodes if not n.name.endswith("-n001")][:2]
    for node in (canary, waiting):
        node.path.write_text(
            node.path.read_text().replace("labels: {", "labels: {owner: first, ", 1)
        )
    first = repo.commit_and_push("two nodes: the canary wave publishes one, the other waits")
    assert p.run_once().result == "deployed"
    assert _differing(p, repo.work, first) == {
        waiting.name
    }  # the canary is published, its soak holds the rest
    pushed.path.write_text(
        pushed.path.read_text().replace("labels: {", "labels: {owner: second, ", 1)
    )
    second = repo.commit_and_push("one more node")
    differing = _differing(p, repo.work, second)
    assert differing == {waiting.name, pushed.name}
    outcome = p.run_once()
    assert (
        outcome.result == "deployed"
        and p.last_good is not None
        and p.last_good.result.fresh == {pushed.name}
    )
    rollout = p.rollouts.active() if p.rollouts is not None else None
    assert rollout is not None and rollout.commit == second
    assert {n for w in rollout.waves for n in w.nodes} == differing
