"""Real parts for the controller's tests: bare repositories driven by the git CLI, Ed25519 keys, ssh-keygen signers."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.bench import bench_module
from support.git import Repo, git
from support.keys import write_signing_key
from support.procs import listening_port, spawn_controller


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo.create(tmp_path / "upstream.git", tmp_path / "work")


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    """An Ed25519 PKCS#8 PEM private key, the format `treadle keys generate` writes."""
    return write_signing_key(tmp_path / "keys" / "controller.key")


def _trust_root_document(signing_key: Path) -> bytes:
    """The agents' trust root (version 1) pinning the public half of ``signing_key``."""
    from treadle_agent.contract.envelope import load_signer
    from treadle_agent.contract.trustroot import trust_root_document

    key = load_signer(str(signing_key)).public_key
    return trust_root_document({key.keyid: key.to_dict()}, 1)


@pytest.fixture
def trust_root(signing_key: Path):  # type: ignore[no-untyped-def]
    """The agent's TrustRoot pinning ``signing_key``."""
    from treadle_agent.contract.trustroot import TrustRoot

    return TrustRoot.from_bytes(_trust_root_document(signing_key))


@pytest.fixture
def trust_root_file(tmp_path: Path, signing_key: Path) -> Path:
    """``trust-root.json`` pinning ``signing_key``, for real agents of the controller ``start_controller`` runs."""
    path = tmp_path / "trust-root.json"
    path.write_bytes(_trust_root_document(signing_key))
    return path


@dataclass
class SshKeys:
    allowed_signers: Path
    alice: Path
    mallory: Path

    @staticmethod
    def opts(key: Path) -> tuple[str, ...]:
        """git options that make ``commit`` SSH-sign with ``key``."""
        return ("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "-c", "commit.gpgsign=true")


@pytest.fixture
def ssh_keys(tmp_path: Path) -> SshKeys:
    d = tmp_path / "ssh"
    d.mkdir()
    for name in ("alice", "mallory"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(d / name)],
            check=True,
        )
    allowed = d / "allowed_signers"
    allowed.write_text(
        f'alice@example.com namespaces="git" {(d / "alice.pub").read_text().strip()}\n'
    )
    return SshKeys(allowed, d / "alice", d / "mallory")


def _gen_fabric():  # type: ignore[no-untyped-def]
    return bench_module("gen_fabric")


@pytest.fixture
def make_fabric(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``make_fabric(sites, clusters, nodes, sign_with=None) -> (Repo, GeneratedFabric)``: a synthetic fabric pushed to a bare repo."""

    def make(sites: int = 1, clusters: int = 2, nodes: int = 3, sign_with: Path | None = None):  # type: ignore[no-untyped-def]
        gen = _gen_fabric()
        bare, work = tmp_path / "upstream.git", tmp_path / "fabric"
        git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
        fabric = gen.generate(work, sites, clusters, nodes, 1, git=sign_with is None)
        if sign_with is not None:
            git(tmp_path, "init", "-q", "-b", "main", str(work))
        r = Repo(bare, work)
        git(work, "remote", "add", "origin", str(bare))
        if sign_with is not None:
            r.commit("Synthetic fabric", *SshKeys.opts(sign_with))
        r.push()
        return r, fabric

    return make


@dataclass
class ControllerProc:
    """`treadle controller run` as a real process."""

    proc: subprocess.Popen  # type: ignore[type-arg]
    url: str
    log: Path
    publish: Path

    def status(self) -> dict:  # type: ignore[type-arg]
        import httpx

        return httpx.get(f"{self.url}/v1/status", timeout=10).json()

    def wait_for(self, predicate, timeout_s: float = 60, what: str = "condition") -> dict:  # type: ignore[no-untyped-def,type-arg]
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            doc = self.status()
            if predicate(doc):
                return doc
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"controller exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {what}; status {doc}; log:\n{self.log.read_text()[-3000:]}"
        )

    def wait_deployed(self, commit: str, timeout_s: float = 60) -> dict:  # type: ignore[type-arg]
        """Until ``commit`` is deployed and its rollout (if it has one) has published its first wave."""

        def done(d: dict) -> bool:  # type: ignore[type-arg]
            rollout = d.get("rollout") or {}
            publishing = rollout.get("commit") == commit and rollout.get("state") in (
                "pending",
                "waiting",
                "publishing",
            )
            return d["deployed_commit"] == commit and not publishing

        return self.wait_for(done, timeout_s, f"deployment of {commit}")

    def wait_refused(self, commit: str, timeout_s: float = 60) -> dict:  # type: ignore[type-arg]
        return self.wait_for(
            lambda d: (d["last_refusal"] or {}).get("commit") == commit,
            timeout_s,
            f"refusal of {commit}",
        )

    def envelopes(self) -> dict[str, bytes]:
        nodes = self.publish / "nodes"
        return {p.parent.name: p.read_bytes() for p in nodes.glob("*/manifest")}

    def stop(self, signum: int = 15) -> int:
        """Stop with SIGTERM (or ``signum``); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout=30)


@pytest.fixture
def start_controller(tmp_path: Path, signing_key: Path):  # type: ignore[no-untyped-def]
    """``start_controller(repository, extra_toml="") -> ControllerProc``; the same state and publish dirs on every start."""
    procs: list[ControllerProc] = []

    def start(
        repository: str,
        extra_toml: str = "",
        env: dict[str, str] | None = None,
        signing: str | None = None,
    ) -> ControllerProc:
        """``signing``: the TOML value of signing_key (default: the ``signing_key`` fixture)."""
        d = tmp_path / "controller"
        d.mkdir(exist_ok=True)
        config = d / "controller.toml"
        config.write_text(
            f'repository = "{repository}"\nstate_dir = "state"\npublish_dir = "publish"\n'
            f'signing_key = {signing or f"{chr(34)}{signing_key}{chr(34)}"}\nlisten = "127.0.0.1:0"\npoll_interval_s = 3600\n{extra_toml}'
        )
        log = d / f"controller-{len(procs)}.log"
        proc = spawn_controller(config, log, d, env={**os.environ, **(env or {})})
        port = listening_port(proc, 30)
        c = ControllerProc(proc.popen, f"http://127.0.0.1:{port}", log, d / "publish")
        procs.append(c)
        return c

    yield start
    for c in procs:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()
