"""A fresh node brought in by `treadle bootstrap`'s script alone, then sent a secret only it can open.

The node is the pristine Debian 12 tree, booted, with nothing of Treadle in it
but a copy of the wheelhouse (the install media). The script that
`treadle bootstrap` renders from the fabric installs the agent, pins the trust
root, enables the unit and enrols the node; the test then does what the admin
does (README, "Bootstrapping a node"): records the printed identity in the
node file, encrypts a secret to it, commits. The real controller publishes,
the agent under systemd applies, and the secret is on the node, 0600 — and in
none of the publish store, the controller's log, the agent's metrics and
journal, `treadle-agent check` or `treadle plan`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support import realnode
from support.fleet import PY, Fleet, NodeSpec
from support.nodefleet import METRICS_PORT, ROLLOUT, _free_index
from support.procs import wait_until

MARKER = "PLAINTEXT-MARKER-bootstrap-5e1f"
WHEELHOUSE = "/var/tmp/treadle-wheelhouse"  # where the install media put the wheels on the node
SCRIPT = "/root/treadle-bootstrap.sh"
IDENTITY_LINE = re.compile(r"(?m)^identity: (age1[02-9ac-hj-np-z]{58})$")


@dataclass
class Bootstrapped:
    node: realnode.Node
    fleet: Fleet
    name: str
    script: str
    first_run: subprocess.CompletedProcess[str]

    def sh(self, script: str, check: bool = True) -> str:
        return self.node.sh(script, check=check).stdout.strip()

    def run_script(self, path: str = SCRIPT) -> subprocess.CompletedProcess[str]:
        return self.node.run(["sh", path], check=False, timeout=900)

    def metrics(self) -> str:
        return httpx.get(
            f"http://{self.node.address}:{METRICS_PORT}/metrics", timeout=5, trust_env=False
        ).text

    def applied(self) -> float:
        found = re.search(r"(?m)^treadle_agent_applied_generation ([0-9.e+]+)$", self.metrics())
        return float(found.group(1)) if found else -1.0

    def wait_applied(self, generation: int, timeout_s: float = 300) -> None:
        wait_until(
            lambda: self.applied() == generation,
            timeout_s,
            f"the agent to apply generation {generation}",
            ignore=(httpx.HTTPError,),
            interval_s=0.5,
            describe=lambda: self.sh(
                "journalctl -u treadle-agent --no-pager | tail -40", check=False
            ),
        )


def treadle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "treadle.cli", *args], capture_output=True, text=True, timeout=300
    )


def add_secret(fleet: Fleet, name: str) -> Path:
    """Give the node /etc/munge/munge.key from secrets/munge.key.age, in the work tree; its node file."""
    node_file = fleet.work / "sites" / "s1" / "c1" / "nodes" / f"{name}.yaml"
    text = node_file.read_text()
    assert (
        "\nfiles: {" in text
    )  # the canary marker file (support.fleet.write_fabric): the secret goes beside it
    node_file.write_text(
        text.replace(
            "\nfiles: {", "\nfiles: {/etc/munge/munge.key: {secret: secrets/munge.key.age}, "
        )
    )
    return node_file


@contextlib.contextmanager
def fresh_node(
    tmp_path_factory: pytest.TempPathFactory, cache: tuple[Path, Path], keys: Path, fmt: str
) -> Iterator[tuple[realnode.Node, Fleet, str, str]]:
    """A pristine node with the wheelhouse copied in, a controller publishing its manifest, and
    `treadle bootstrap`'s output for it in ``fmt``: (node, fleet, its name, the output).

    The shell script is made as an admin makes it for a new node that is to receive a secret: from
    the work tree, where the node file already names the secret it cannot decrypt yet (so the fabric
    cannot be committed: no identity). The user-data is made from the committed revision."""
    tarball, wheelhouse = cache
    index = _free_index()
    name = f"rn{index}"
    work = tmp_path_factory.mktemp(f"bootstrap-rn{index}")
    node = realnode.make_node(name, index, work / "node", tarball)
    fleet = Fleet(
        work / "fleet",
        keys,
        [NodeSpec(name, "s1", "c1", node.address, METRICS_PORT, canary=True)],
        controller_toml_extra='[health]\nsource = "scrape"\nscrape_timeout_s = 1\ninterval_s = 1\n',
    )
    try:
        assert not node.path("/opt/treadle").exists() and not node.path("/etc/treadle").exists()
        fleet.init_repo(ROLLOUT)
        fleet.start_controller()
        port = int(fleet.url.rpartition(":")[2])
        url = f"http://{node.forward(port, ('127.0.0.1', port))}"
        shutil.copytree(wheelhouse, node.path(WHEELHOUSE))
        if fmt == "shell":
            add_secret(fleet, name)
            assert treadle("validate", str(fleet.work)).returncode == 1
        made = treadle(
            "bootstrap",
            str(fleet.work),
            name,
            *(["--rev", "main"] if fmt != "shell" else []),
            "--format",
            fmt,
            "--manifest-url",
            f"{url}/v1/nodes/{{node}}/manifest",
            "--trust-root",
            str(keys / "trust-root.json"),
            "--wheelhouse",
            WHEELHOUSE,
        )
        assert made.returncode == 0, made.stderr
        assert ("munge.key" in made.stderr) == (
            fmt == "shell"
        )  # the note on the secret it cannot decrypt yet
        manifest = fleet.workdir / "controller" / "publish" / "nodes" / name / "manifest"
        fleet.wait(manifest.exists, 120, "the first publication")
        yield node, fleet, name, made.stdout
    finally:
        fleet.stop()
        node.shutdown()


@pytest.fixture(scope="module")
def boot(
    tmp_path_factory: pytest.TempPathFactory, realnode_cache: tuple[Path, Path], realnode_keys: Path
) -> Iterator[Bootstrapped]:
    """A fresh node and a controller; the node runs the bootstrap script once."""
    with fresh_node(tmp_path_factory, realnode_cache, realnode_keys, "shell") as (
        node,
        fleet,
        name,
        script,
    ):
        node.path(SCRIPT).write_text(script)
        first = node.run(["sh", SCRIPT], check=False, timeout=900)
        yield Bootstrapped(node, fleet, name, script, first)


def test_the_script_installs_pins_enrols_and_starts_the_agent_which_converges(
    boot: Bootstrapped, realnode_keys: Path
) -> None:
    r = boot.first_run
    assert r.returncode == 0, r.stderr
    assert IDENTITY_LINE.search(r.stdout), r.stdout
    assert "enrolled: a new identity" in r.stderr
    trust = boot.node.path("/etc/treadle/trust-root.json")
    assert trust.read_bytes() == (realnode_keys / "trust-root.json").read_bytes()
    assert boot.node.path("/etc/treadle/agent.toml").stat().st_mode & 0o777 == 0o600
    assert boot.node.path("/var/lib/treadle/identity.age").stat().st_mode & 0o777 == 0o600
    assert boot.sh("/opt/treadle/bin/treadle-agent --version").startswith("treadle-agent ")
    assert boot.sh("systemctl is-enabled treadle-agent") == "enabled"
    boot.wait_applied(boot.fleet.published_generation(boot.name))
    assert boot.sh("systemctl is-active treadle-agent") == "active"
    assert boot.node.path("/etc/app.conf").read_text() == "v1\n"


def test_running_the_script_again_keeps_the_identity(boot: Bootstrapped) -> None:
    identity = boot.node.path("/var/lib/treadle/identity.age")
    before = hashlib.sha256(identity.read_bytes()).hexdigest()
    again = boot.run_script()
    assert again.returncode == 0, again.stderr
    assert "already enrolled" in again.stderr
    assert IDENTITY_LINE.findall(again.stdout) == IDENTITY_LINE.findall(boot.first_run.stdout)
    assert hashlib.sha256(identity.read_bytes()).hexdigest() == before
    assert not boot.node.path("/var/lib/treadle/identity.previous.age").exists()


def test_a_script_with_an_altered_trust_root_changes_nothing_on_the_node(
    boot: Bootstrapped,
) -> None:
    trust = boot.node.path("/etc/treadle/trust-root.json")
    before = trust.read_bytes()
    # Another key in place of the pinned one, as an attacker on the install network would put it.
    altered = re.sub(
        r'"public":"[0-9a-f]{64}"', '"public":"' + "ab" * 32 + '"', boot.script, count=1
    )
    assert altered != boot.script
    boot.node.path("/root/altered.sh").write_text(altered)
    r = boot.run_script("/root/altered.sh")
    assert r.returncode == 1
    assert "sha256" in r.stderr and "nothing was installed" in r.stderr
    assert trust.read_bytes() == before


def test_a_secret_encrypted_to_the_printed_identity_is_delivered_and_seen_nowhere_else(
    boot: Bootstrapped, tmp_path: Path
) -> None:
    fleet, name = boot.fleet, boot.name
    recipient = IDENTITY_LINE.search(boot.first_run.stdout).group(1)  # type: ignore[union-attr]
    node_file = fleet.work / "sites" / "s1" / "c1" / "nodes" / f"{name}.yaml"
    assert "munge.key" in node_file.read_text()  # written before the bootstrap (fresh_node)
    node_file.write_text(node_file.read_text() + f"identity: {recipient}\n")
    plain = tmp_path / "munge.key"
    plain.write_text(f"{MARKER}\n")
    encrypted = treadle(
        "secret", "encrypt", "munge.key", "--in", str(plain), "--repo", str(fleet.work)
    )
    assert encrypted.returncode == 0, encrypted.stderr
    plain.unlink()
    base = subprocess.run(
        ["git", "-C", str(fleet.work), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    before = fleet.published_generation(name)
    fleet.commit_and_push("the munge key, for the bootstrapped node")
    fleet.wait(
        lambda: fleet.published_generation(name) > before,
        120,
        "the controller to publish the secret",
    )
    boot.sh("systemctl restart treadle-agent")  # a cycle now, not after the agent's interval
    boot.wait_applied(fleet.published_generation(name))

    key = boot.node.path("/etc/munge/munge.key")
    assert key.read_text() == f"{MARKER}\n"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_uid == 0

    check = boot.node.run(
        ["/opt/treadle/bin/treadle-agent", "check", "--config", "/etc/treadle/agent.toml"],
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    plan = treadle("plan", str(fleet.work), base, "HEAD")
    assert plan.returncode == 0, plan.stderr
    journal = boot.sh("journalctl -u treadle-agent --no-pager", check=False)
    publish = fleet.workdir / "controller" / "publish"
    stored = b"".join(p.read_bytes() for p in sorted(publish.rglob("*")) if p.is_file())
    logs = b"".join(p.read_bytes() for p in sorted((fleet.workdir / "controller").glob("*.log")))
    assert stored and logs
    marker = MARKER.encode()
    assert marker not in stored and marker not in logs
    for text in (boot.metrics(), check.stdout + check.stderr, plan.stdout + plan.stderr, journal):
        assert MARKER not in text


def test_the_cloud_init_user_data_bootstraps_a_node_under_cloud_init(
    tmp_path_factory: pytest.TempPathFactory, realnode_cache: tuple[Path, Path], realnode_keys: Path
) -> None:
    """Debian's cloud-init, from a NoCloud seed, runs the user-data's stages on a fresh node: the same script
    is written, run once, and the agent converges the node."""
    with fresh_node(tmp_path_factory, realnode_cache, realnode_keys, "cloud-init") as (
        node,
        fleet,
        name,
        user_data,
    ):
        node.sh(
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            "cloud-init",
            timeout=900,
        )
        # A container has no datasource to find and its network is the test's: NoCloud from the seed
        # directory, cloud-init leaves the network alone, and it runs the modules the user-data uses
        # (a minbase tree has no locales, which the default locale module would fail on).
        node.path("/etc/cloud/cloud.cfg.d/99-treadle-test.cfg").write_text(
            "datasource_list: [NoCloud]\nnetwork: {config: disabled}\ncloud_init_modules: [write_files]\n"
            "cloud_config_modules: [runcmd]\ncloud_final_modules: [scripts_user]\n"
        )
        seed = node.path("/var/lib/cloud/seed/nocloud")
        seed.mkdir(parents=True, exist_ok=True)
        (seed / "meta-data").write_text(f"instance-id: {name}\nlocal-hostname: {name}\n")
        (seed / "user-data").write_text(user_data)
        for stage in (
            ["init", "--local"],
            ["init"],
            ["modules", "--mode=config"],
            ["modules", "--mode=final"],
        ):
            node.run(["cloud-init", *stage], timeout=900)
        output = node.path("/var/log/cloud-init-output.log").read_text()
        assert IDENTITY_LINE.search(output), output[-3000:]
        script = node.path("/usr/local/sbin/treadle-bootstrap")
        assert script.stat().st_mode & 0o777 == 0o700 and script.read_text().startswith(
            "#!/bin/sh\n"
        )
        assert (
            node.path("/etc/treadle/trust-root.json").read_bytes()
            == (realnode_keys / "trust-root.json").read_bytes()
        )
        booted = Bootstrapped(
            node, fleet, name, script.read_text(), subprocess.CompletedProcess([], 0, output, "")
        )
        assert booted.sh("systemctl is-enabled treadle-agent") == "enabled"
        booted.wait_applied(fleet.published_generation(name))
        assert node.path("/etc/app.conf").read_text() == "v1\n"
