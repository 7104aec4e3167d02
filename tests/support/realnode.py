"""A real Debian 12 node for the tests: a debootstrap tree booted with systemd as PID 1 under systemd-nspawn.

How it is made, and why so:

- The tree is ``debootstrap --variant=minbase bookworm`` plus systemd, dbus,
  python3-venv and iproute2, from the mirror the host's apt uses. Building it
  takes a minute or two; the pristine tree is kept as a tarball keyed by its
  package list and mirror (in ``$TREADLE_REALNODE_CACHE``, default
  ``/var/cache/treadle-realnode``), so later runs only unpack it.
- ``systemd-nspawn --boot --register=no --keep-unit``: the host need not run
  systemd itself (no machined to register with, no scope to create), and
  commands go into the node with ``nsenter`` into its PID 1's namespaces
  (``machinectl shell`` and ``systemd-run -M`` need machined).
- ``--network-veth``: the node has its own network namespace, so its net.*
  sysctls are its own. Both ends get link-local addresses; nothing routes
  beyond the pair. apt in the node reaches the mirror through a TCP relay on
  the host end (the node's /etc/hosts names the host end as the mirror), and
  the agent reaches the controller (on the host's 127.0.0.1) the same way.
- The agent is installed as nodes install it: a wheelhouse built on the host
  (the checkout's wheel and its dependencies), then in the node
  ``python3 -m venv /opt/treadle`` and ``pip install --no-index``.

Hazard: a unit with ProtectControlGroups=yes (the agent's own unit) gets a
freshly mounted, writable /proc inside the node, where vm.* and kernel.*
sysctls are the host kernel's. Tests here set net.* keys only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from support import REPO  # noqa: E402

SUITE = "bookworm"
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3-venv", "iproute2")
#: Bumped when the way the tree is made changes (a new key, a fresh debootstrap).
TREE_FORMAT = 1
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NodeError(AssertionError):
    """The node could not be made, booted or reached; the message says what it printed."""


def why_not_here() -> str | None:
    """Why the real-node tests cannot run on this machine (None: they must run)."""
    try:
        release = dict(
            line.split("=", 1)
            for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
    except OSError:
        return "no /etc/os-release: not a Debian 12 machine"
    if release.get("ID") != "debian" or release.get("VERSION_ID", "").strip('"') != "12":
        return f"not Debian 12 ({release.get('PRETTY_NAME', '?')}): the node tree is debootstrapped with the host's apt"
    if os.geteuid() != 0:
        return "not root: debootstrap, systemd-nspawn and nsenter need root"
    return None


def host_mirror() -> str:
    """The first Debian (non-security) archive URI of the host's apt sources."""
    texts = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(f.read_text())
        except OSError:
            continue
    for text in texts:
        for uri in re.findall(r"(?m)^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(http://\S+)", text):
            if "/debian" in uri and "security" not in uri:
                return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def cache_dir() -> Path:
    return Path(os.environ.get("TREADLE_REALNODE_CACHE", "/var/cache/treadle-realnode"))


def pristine_tarball(log: Path) -> Path:
    """The pristine tree as a tarball, built by debootstrap on first use."""
    mirror = host_mirror()
    key = hashlib.sha256(
        json.dumps([TREE_FORMAT, SUITE, "minbase", mirror, sorted(INCLUDE)]).encode()
    ).hexdigest()[:16]
    tarball = cache_dir() / f"{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    for tool in ("debootstrap", "systemd-nspawn", "nsenter", "ip"):
        if shutil.which(tool) is None:
            raise NodeError(
                f"{tool} is missing: run .ci/install-deps (it installs .ci/apt-packages)"
            )
    cache_dir().mkdir(parents=True, exist_ok=True)
    build = cache_dir() / f"build-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    try:
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(INCLUDE)}",
                SUITE,
                str(build),
                mirror,
            ],
            log,
            timeout=1200,
            what="debootstrap",
        )
        # No getty on the console (stdin is not a terminal) and no clock or journal upload noise.
        (build / "etc/systemd/system/console-getty.service").symlink_to("/dev/null")
        partial = f"{tarball}.{os.getpid()}.tmp"
        _run(
            ["tar", "-C", str(build), "--numeric-owner", "--xattrs", "-cf", partial, "."],
            log,
            600,
            "tar",
        )
        os.replace(partial, tarball)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return tarball


def build_wheelhouse(dest: Path, log: Path) -> Path:
    """The checkout's wheel and its dependencies' wheels (what a node's ``pip install --no-index`` needs)."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(dest), str(REPO)],
        log,
        600,
        "pip wheel",
    )
    return dest


def _run(argv: list[str], log: Path, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    with log.open("a") as f:
        f.write(f"$ {' '.join(argv)}\n{p.stdout}{p.stderr}\n")
    if p.returncode != 0:
        raise NodeError(f"{what} exited {p.returncode}: {(p.stderr or p.stdout)[-3000:]}")
    return p


# --- a TCP relay on the host end of the veth ------------------------------------


class Relay:
    """Accepts on ``listen`` and pipes each connection to ``upstream``, both ways, until either side closes."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        upstream_addr = upstream

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    up = socket.create_connection(upstream_addr, timeout=30)
                except OSError:
                    return
                with up:
                    pair = {self.request: up, up: self.request}
                    while True:
                        ready, _, _ = select.select(list(pair), [], [], 300)
                        if not ready:
                            return
                        for s in ready:
                            try:
                                data = s.recv(65536)
                            except OSError:
                                return
                            if not data:
                                return
                            pair[s].sendall(data)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(listen, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the node -----------------------------------------------------------------


@dataclass
class Node:
    """A booted node: its tree on the host, its init's pid, its link-local address, what runs for it."""

    name: str
    root: Path
    index: int
    workdir: Path
    popen: subprocess.Popen | None = None  # type: ignore[type-arg]
    pid: int = 0
    relays: list[Relay] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        return f"169.254.{self.index}.1"

    @property
    def address(self) -> str:
        return f"169.254.{self.index}.2"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def boot(self) -> None:
        (self.root / "etc/hostname").write_text(self.name + "\n")
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--quiet",
                    "--console=passive",
                    "-D",
                    str(self.root),
                    "-M",
                    self.name,
                    "--network-veth",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not self.pid:
            if self.popen.poll() is not None:
                raise NodeError(
                    f"systemd-nspawn exited {self.popen.returncode}: {self.log.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise NodeError(f"the node's init never started: {self.log.read_text()[-3000:]}")
            self.pid = self._init_pid()
            time.sleep(0.05)
        # The manager's socket appears a moment after PID 1 starts.
        while True:
            r = self.sh("systemctl is-system-running --wait", check=False, timeout=120)
            if "Failed to connect to bus" not in r.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if r.stdout.strip() not in ("running", "degraded"):
            raise NodeError(
                f"the node did not boot: {r.stdout}{r.stderr}\n{self.sh('systemctl --failed', check=False).stdout}"
            )
        veth = f"ve-{self.name}"[:15]
        subprocess.run(["ip", "addr", "add", f"{self.host_address}/30", "dev", veth], check=True)
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        self.sh(f"ip addr add {self.address}/30 dev host0 && ip link set host0 up")
        mirror = urlsplit(host_mirror())
        port = mirror.port or 80
        upstream = socket.getaddrinfo(mirror.hostname, port, socket.AF_INET, socket.SOCK_STREAM)[0][
            4
        ][:2]
        self.relays.append(Relay((self.host_address, port), upstream))
        with (self.root / "etc/hosts").open("a") as f:
            f.write(f"{self.host_address} {mirror.hostname}\n")

    def _init_pid(self) -> int:
        assert self.popen is not None
        for child in Path("/proc").glob("[0-9]*"):
            try:
                stat = (child / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == self.popen.pid and (child / "comm").read_text().strip() == "systemd":
                return int(child.name)
        return 0

    def forward(self, port: int, upstream: tuple[str, int]) -> str:
        """Make ``upstream`` (on the host) reachable from the node at the host end's ``port``; returns host:port."""
        self.relays.append(Relay((self.host_address, port), upstream))
        return f"{self.host_address}:{port}"

    def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the node (its PID 1's namespaces), with a clean environment."""
        full = [
            "nsenter",
            "-t",
            str(self.pid),
            "-a",
            "--",
            "env",
            "-i",
            f"PATH={NODE_PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            *argv,
        ]
        p = subprocess.run(
            full,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise NodeError(
                f"in {self.name}: `{' '.join(argv)}` exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
            )
        return p

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-c", script], check=check, timeout=timeout)

    def path(self, p: str) -> Path:
        """A path of the node, as seen from the host."""
        return self.root / p.lstrip("/")

    def install_agent(self, wheelhouse: Path) -> None:
        """The documented node install: a venv at /opt/treadle, the agent from a wheelhouse, no index."""
        inside = "/var/tmp/treadle-wheelhouse"
        shutil.copytree(wheelhouse, self.path(inside), dirs_exist_ok=True)
        self.sh(
            f"python3 -m venv /opt/treadle && /opt/treadle/bin/pip install -q --no-index --find-links {inside} treadle",
            timeout=600,
        )

    def shutdown(self) -> None:
        for relay in self.relays:
            relay.close()
        self.relays.clear()
        if self.popen is None or self.popen.poll() is not None:
            return
        # systemd-nspawn turns SIGTERM into an orderly poweroff of the node.
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def make_node(name: str, index: int, workdir: Path, tarball: Path) -> Node:
    """Unpack the pristine tree into ``workdir``/root and boot it."""
    root = workdir / "root"
    root.mkdir(parents=True)
    _run(
        ["tar", "-C", str(root), "--numeric-owner", "--xattrs", "-xf", str(tarball)],
        workdir / "make.log",
        600,
        "untar",
    )
    node = Node(name, root, index, workdir)
    try:
        node.boot()
    except BaseException:
        node.shutdown()
        raise
    return node
