"""The host boundary: running commands, the package manager, systemd, sysctl.

Everything the agent changes outside the managed file tree goes through one
:class:`Host`. A host is made of small parts, each with one job:

    Host
    ├── runner      runs an argv list (never a shell) with a timeout
    ├── packages    AptPackages (dpkg-query, apt-get) | DnfPackages (rpm, dnf) | NoPackages
    ├── services    Systemd (systemctl) | NoServices
    └── sysctl      ProcSys: runtime values as files under ``proc_sys``

:class:`SystemHost` runs real programs. :class:`SimulatedHost` (in
``host_sim.py``, which imports this module and never the other way) keeps the package and unit state in
memory and answers the *same* command lines the real parts produce, recording
every one, so tests exercise the real command lines where this machine cannot
install packages or start units. Which of the two agent.toml asks for is
decided in ``host_mode.py``.

Every failure is a :class:`~treadle_agent.errors.HostError` naming the command
and what it printed; nothing else escapes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from treadle_agent.errors import HostError

#: Generous: an apt-get install may download for minutes.
PACKAGE_TIMEOUT_S = 900.0
QUERY_TIMEOUT_S = 60.0
SERVICE_TIMEOUT_S = 120.0

# Names reach argv; one starting with "-" would be read as an option.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:+\-]*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9_.+~:\-]+$")
_SYSCTL_PART_RE = re.compile(r"^[A-Za-z0-9_.:@\-]+$")


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def failure(self, what: str) -> HostError:
        """A HostError describing this failed command."""
        detail = (self.stderr.strip() or self.stdout.strip())[-500:]
        return HostError(f"{what}: `{' '.join(self.argv)}` exited {self.returncode}: {detail}")


class Runner(Protocol):
    def run(
        self, argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        """Run ``argv``; raises HostError if it cannot be started or overruns ``timeout_s``."""
        ...


class ProcessRunner:
    """Runs real processes: argv only, no shell, stdin closed, output captured."""

    def run(
        self, argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        import subprocess  # only when a command runs: a file-only no-op run never pays for it

        argv = tuple(argv)
        full_env = {**os.environ, **env} if env else None
        try:
            p = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout_s,
                env=full_env,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise HostError(f"`{' '.join(argv)}` did not finish within {timeout_s:g} s") from e
        except OSError as e:
            raise HostError(f"cannot run `{' '.join(argv)}`: {e.strerror or e}") from e
        return CommandResult(argv, p.returncode, p.stdout, p.stderr)


def check_name(kind: str, name: str) -> str:
    """``name`` if it is safe to put in an argv; raises HostError otherwise."""
    if not _NAME_RE.match(name):
        raise HostError(
            f"invalid {kind} name {name!r}: use letters, digits and . _ @ : + - (not leading)"
        )
    return name


# --- packages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackageState:
    installed: bool
    version: str | None = None
    #: Not (fully) installed, but dpkg has some of it on disk (half-installed, unpacked, half-configured...):
    #: removing it is still work to do.
    partial: bool = False


class PackageManager(Protocol):
    name: str

    def query(self, names: Sequence[str]) -> dict[str, PackageState]: ...
    def install(self, name: str, version: str | None) -> None: ...
    def remove(self, name: str) -> None: ...
    def version_matches(self, installed: str, wanted: str) -> bool: ...


class NoPackages:
    """No package manager configured: every package resource fails with this reason."""

    name = "none"

    def _refuse(self) -> HostError:
        return HostError(
            'no package manager on this host (package_manager = "none" or none detected)'
        )

    def query(self, names: Sequence[str]) -> dict[str, PackageState]:
        raise self._refuse()

    def install(self, name: str, version: str | None) -> None:
        raise self._refuse()

    def remove(self, name: str) -> None:
        raise self._refuse()

    def version_matches(self, installed: str, wanted: str) -> bool:
        return installed == wanted


#: dpkg status words of a package that is not installed and has nothing but (maybe) its conffiles on disk.
_DPKG_ABSENT = frozenset({"not-installed", "config-files"})
#: apt-get's words for a package (or version) its lists do not know: the lists may be missing or stale.
_APT_UNKNOWN_RE = re.compile(
    r"Unable to locate package|has no installation candidate|Version '[^']*' for '[^']*' was not found"
)
#: After a refresh for an unknown package, the next one waits this long (a name that is really unknown
#: must not cost a download on every run).
_REFRESH_MIN_INTERVAL_S = 300.0


@dataclass
class AptPackages:
    """dpkg-query to read (all names in one call), apt-get to change; never asks a question.

    Every apt-get runs with ``DEBIAN_FRONTEND=noninteractive`` and dpkg's
    ``--force-confdef --force-confold`` (a conffile changed on the node, or
    written by the manifest before its package, is kept: no prompt on a
    closed stdin), and waits up to ``lock_timeout_s`` for another apt or dpkg
    to let go of the dpkg lock. The package lists are refreshed (``apt-get
    update``) before an install when there are none or the newest is older
    than ``lists_max_age_s``, and once more when apt does not know the
    package. A failure's message carries dpkg's own error lines.
    """

    runner: Runner
    name: str = "apt"
    #: apt's list directory; None: never look at it (the simulated host).
    lists_dir: Path | None = Path("/var/lib/apt/lists")
    lists_max_age_s: float = 86400.0
    lock_timeout_s: int = 300
    ENV = {"DEBIAN_FRONTEND": "noninteractive"}
    _refreshed_at: float | None = None

    def _options(self) -> list[str]:
        return [
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "-o",
            f"DPkg::Lock::Timeout={self.lock_timeout_s}",
        ]

    def query(self, names: Sequence[str]) -> dict[str, PackageState]:
        names = [check_name("package", n) for n in names]
        out = {n: PackageState(False) for n in names}
        if not names:
            return out
        # One line per installed architecture; unknown names only print to
        # stderr (and make the exit code 1), so the name leads each line.
        r = self.runner.run(
            ["dpkg-query", "-W", "-f=${Package} ${Status} ${Version}\n", *names],
            timeout_s=QUERY_TIMEOUT_S,
        )
        if r.returncode not in (0, 1):
            raise r.failure("reading package state")
        for line in r.stdout.splitlines():
            parts = line.split(" ", 4)
            if len(parts) >= 4 and parts[0] in out:
                version = parts[4] if len(parts) > 4 else ""
                if parts[3] == "installed":
                    out[parts[0]] = PackageState(True, version)
                elif parts[3] not in _DPKG_ABSENT and not out[parts[0]].installed:
                    out[parts[0]] = PackageState(False, version, partial=True)
        return out

    def install(self, name: str, version: str | None) -> None:
        spec = check_name("package", name) + (f"={_check_version(version)}" if version else "")
        refresh_failed = None
        if self._lists_stale():
            try:
                self.refresh()
            except HostError as e:  # the lists at hand may still do (a mirror down for a while)
                refresh_failed = e
        argv = ["apt-get", "install", "-y", "--no-install-recommends", *self._options(), spec]
        r = self.runner.run(argv, timeout_s=PACKAGE_TIMEOUT_S, env=self.ENV)
        if (
            r.returncode != 0
            and _APT_UNKNOWN_RE.search(r.stderr + r.stdout)
            and self._may_refresh()
        ):
            self.refresh()
            r = self.runner.run(argv, timeout_s=PACKAGE_TIMEOUT_S, env=self.ENV)
        if r.returncode != 0:
            failure = apt_failure(r, f"installing {spec}")
            if refresh_failed is not None:
                failure = HostError(f"{failure}\n(before it, {refresh_failed})")
            raise failure

    def remove(self, name: str) -> None:
        r = self.runner.run(
            ["apt-get", "remove", "-y", *self._options(), check_name("package", name)],
            timeout_s=PACKAGE_TIMEOUT_S,
            env=self.ENV,
        )
        if r.returncode != 0:
            raise apt_failure(r, f"removing {name}")

    def refresh(self) -> None:
        """``apt-get update``; raises HostError if it fails (an install would fail the same way)."""
        r = self.runner.run(
            ["apt-get", "update", "-q", "-o", f"DPkg::Lock::Timeout={self.lock_timeout_s}"],
            timeout_s=PACKAGE_TIMEOUT_S,
            env=self.ENV,
        )
        self._refreshed_at = time.monotonic()
        if r.returncode != 0:
            raise apt_failure(r, "refreshing the package lists")

    def _may_refresh(self) -> bool:
        return (
            self._refreshed_at is None
            or time.monotonic() - self._refreshed_at >= _REFRESH_MIN_INTERVAL_S
        )

    def _lists_stale(self) -> bool:
        """No package lists, or the newest older than ``lists_max_age_s`` (and not refreshed by this process since)."""
        if self.lists_dir is None:
            return False
        if (
            self._refreshed_at is not None
            and time.monotonic() - self._refreshed_at < self.lists_max_age_s
        ):
            return False
        try:
            newest = max(
                (e.stat().st_mtime for e in os.scandir(self.lists_dir) if "_Packages" in e.name),
                default=None,
            )
        except OSError:
            newest = None
        return newest is None or time.time() - newest > self.lists_max_age_s

    def version_matches(self, installed: str, wanted: str) -> bool:
        return installed == wanted


def apt_failure(r: CommandResult, what: str) -> HostError:
    """A failed apt-get, with dpkg's own reason: its ``dpkg:`` lines and their indented details, then apt's ``E:`` lines.

    apt-get's last line is only ``E: Sub-process /usr/bin/dpkg returned an error code (1)``; dpkg says why
    (on stdout or stderr, depending on how apt runs it).
    """
    lines: list[str] = []
    for text in (r.stdout, r.stderr):
        keep = False
        for line in text.splitlines():
            # dpkg's error may follow a prompt on the same line: "*** x.conf (Y/I/N/O/D/Z) [default=N] ? dpkg: error..."
            start = min(
                (i for i in (line.find("dpkg: "), line.find("dpkg-deb: ")) if i >= 0), default=-1
            )
            if start >= 0:
                keep, line = True, line[start:]
            elif line.startswith(("E:", "Errors were encountered")):
                keep = True
            elif not line.startswith(" "):
                keep = False
            if keep and line not in lines:
                lines.append(line)
    if not lines:
        return r.failure(what)
    detail = "\n".join(lines)
    if len(detail) > 2000:
        detail = "..." + detail[-2000:]
    return HostError(f"{what}: `{' '.join(r.argv)}` exited {r.returncode}:\n{detail}")


@dataclass
class DnfPackages:
    """rpm to read (all names in one call), dnf to change."""

    runner: Runner
    name: str = "dnf"

    def query(self, names: Sequence[str]) -> dict[str, PackageState]:
        names = [check_name("package", n) for n in names]
        out = {n: PackageState(False) for n in names}
        if not names:
            return out
        r = self.runner.run(
            ["rpm", "-q", "--qf", "%{NAME} %{VERSION}-%{RELEASE}\n", *names],
            timeout_s=QUERY_TIMEOUT_S,
        )
        if r.returncode != 0 and "is not installed" not in r.stdout:
            raise r.failure("reading package state")
        for line in r.stdout.splitlines():
            parts = line.split(" ")
            if len(parts) == 2 and parts[0] in out:
                out[parts[0]] = PackageState(True, parts[1])
        return out

    def install(self, name: str, version: str | None) -> None:
        spec = check_name("package", name) + (f"-{_check_version(version)}" if version else "")
        r = self.runner.run(["dnf", "install", "-y", spec], timeout_s=PACKAGE_TIMEOUT_S)
        if r.returncode != 0:
            raise r.failure(f"installing {spec}")

    def remove(self, name: str) -> None:
        r = self.runner.run(
            ["dnf", "remove", "-y", check_name("package", name)], timeout_s=PACKAGE_TIMEOUT_S
        )
        if r.returncode != 0:
            raise r.failure(f"removing {name}")

    def version_matches(self, installed: str, wanted: str) -> bool:
        # "1.2" names every release of 1.2, as dnf's name-version does.
        return installed == wanted or installed.startswith(wanted + "-")


def _check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise HostError(f"invalid package version {version!r}: use letters, digits and . + ~ : _ -")
    return version


# --- services ----------------------------------------------------------------


class ServiceManager(Protocol):
    name: str

    def is_enabled(self, unit: str) -> bool: ...
    def file_state(self, unit: str) -> str: ...
    def unit_id(self, unit: str) -> str: ...
    def is_active(self, unit: str) -> bool: ...
    def daemon_reload(self) -> None: ...
    def set_enabled(self, unit: str, enabled: bool) -> None: ...
    def set_running(self, unit: str, running: bool) -> None: ...
    def restart(self, unit: str) -> None: ...


class NoServices:
    """No service manager: service resources fail, service health checks are down."""

    name = "none"

    def _refuse(self) -> HostError:
        return HostError(
            'no service manager on this host (service_manager = "none" or systemd not running)'
        )

    def is_enabled(self, unit: str) -> bool:
        raise self._refuse()

    def file_state(self, unit: str) -> str:
        raise self._refuse()

    def unit_id(self, unit: str) -> str:
        raise self._refuse()

    def daemon_reload(self) -> None:
        raise self._refuse()

    def is_active(self, unit: str) -> bool:
        raise self._refuse()

    def set_enabled(self, unit: str, enabled: bool) -> None:
        raise self._refuse()

    def set_running(self, unit: str, running: bool) -> None:
        raise self._refuse()

    def restart(self, unit: str) -> None:
        raise self._refuse()


#: ``systemctl is-enabled`` words that mean enabled.
ENABLED_STATES = frozenset({"enabled", "enabled-runtime"})
#: Properties that say why a unit is not running after a start.
_WHY_PROPERTIES = ("ActiveState", "SubState", "Result", "ConditionResult", "AssertResult")


@dataclass
class Systemd:
    """systemctl is-enabled / is-active / show to read; enable, disable, start, stop, restart to change.

    Every change is read back: a start that leaves the unit inactive (an unmet
    ``Condition…``, a process that exits at once), a stop that leaves it
    active, an enable that leaves it disabled is a failure saying what
    systemd reports. A unit whose file or drop-ins changed on disk since
    systemd loaded it (``NeedDaemonReload=yes``) is reloaded
    (``systemctl daemon-reload``) before it is started or restarted, so it
    runs what its files say.
    """

    runner: Runner
    name: str = "systemd"

    def _run(self, *args: str) -> CommandResult:
        return self.runner.run(["systemctl", *args], timeout_s=SERVICE_TIMEOUT_S)

    def is_enabled(self, unit: str) -> bool:
        return self.file_state(unit) in ENABLED_STATES

    def file_state(self, unit: str) -> str:
        """``systemctl is-enabled``'s word (enabled, disabled, static, masked, alias, indirect...), or "not-found"."""
        r = self._run("is-enabled", check_name("service", unit))
        words = r.stdout.split()
        return words[0] if words else "not-found"

    def unit_id(self, unit: str) -> str:
        """The unit's own name (an alias resolves to the unit it names)."""
        return self.show(unit, "Id").get("Id") or unit

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show``'s values of ``properties`` (missing ones absent)."""
        r = self._run(
            "show", f"--property={','.join(properties)}", "--", check_name("service", unit)
        )
        if r.returncode != 0:
            raise r.failure(f"reading unit {unit}")
        return dict(line.partition("=")[::2] for line in r.stdout.splitlines() if "=" in line)

    def is_active(self, unit: str) -> bool:
        r = self._run("is-active", check_name("service", unit))
        return r.returncode == 0 and r.stdout.strip() == "active"

    def _change(self, verb: str, unit: str) -> None:
        r = self._run(verb, check_name("service", unit))
        if r.returncode != 0:
            raise r.failure(f"{verb} {unit}")

    def daemon_reload(self) -> None:
        r = self._run("daemon-reload")
        if r.returncode != 0:
            raise r.failure("daemon-reload (unit files changed)")

    def _reload_if_needed(self, unit: str) -> None:
        if self.show(unit, "NeedDaemonReload").get("NeedDaemonReload") == "yes":
            self.daemon_reload()

    def _why_not_active(self, unit: str) -> str:
        try:
            props = self.show(unit, *_WHY_PROPERTIES)
        except HostError as e:
            return str(e)
        why = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')}), result {props.get('Result', '?')}"
        if props.get("ConditionResult") == "no":
            why += "; a Condition… of the unit is not met"
        if props.get("AssertResult") == "no":
            why += "; an Assert… of the unit failed"
        return why

    def set_enabled(self, unit: str, enabled: bool) -> None:
        self._change("enable" if enabled else "disable", unit)
        state = self.file_state(unit)
        if (state in ENABLED_STATES) != enabled:
            raise HostError(
                f"{'enable' if enabled else 'disable'} {unit} had no effect: systemctl is-enabled says {state}"
            )

    def set_running(self, unit: str, running: bool) -> None:
        if running:
            self._reload_if_needed(unit)
        self._change("start" if running else "stop", unit)
        if self.is_active(unit) != running:
            raise HostError(
                f"{'start' if running else 'stop'} {unit} had no effect: it is {self._why_not_active(unit)}"
            )

    def restart(self, unit: str) -> None:
        self._reload_if_needed(unit)
        self._change("restart", unit)
        if not self.is_active(unit):
            raise HostError(
                f"restart {unit}: it did not stay running: it is {self._why_not_active(unit)}"
            )


# --- sysctl ------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSys:
    """Runtime kernel parameters as files under ``proc_sys`` (``/proc/sys`` on a real host)."""

    proc_sys: Path

    def path(self, key: str) -> Path:
        """The file of ``key``: dots separate levels, unless the key uses slashes (as sysctl(8) allows)."""
        parts = key.split("/") if "/" in key else key.split(".")
        if not key or any(not p or p in (".", "..") or not _SYSCTL_PART_RE.match(p) for p in parts):
            raise HostError(
                f"invalid sysctl key {key!r}: use dotted names such as net.ipv4.ip_forward"
            )
        return self.proc_sys.joinpath(*parts)

    def read(self, key: str) -> str | None:
        """The current value, whitespace-normalised, or None if the kernel has no such key."""
        try:
            with open(self.path(key), "rb") as f:
                return normalize_sysctl(f.read().decode("utf-8", "replace"))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise HostError(f"cannot read sysctl {key}: {e.strerror or e}") from e

    def write(self, key: str, value: str) -> None:
        """Set the runtime value; the key must exist (the kernel creates them, never the agent)."""
        try:
            fd = os.open(self.path(key), os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise HostError(f"unknown sysctl key {key} (no {self.path(key)})") from e
        except OSError as e:
            raise HostError(f"cannot write sysctl {key}: {e.strerror or e}") from e
        try:
            os.write(fd, (value + "\n").encode())
        except OSError as e:
            raise HostError(f"the kernel refused {key} = {value}: {e.strerror or e}") from e
        finally:
            os.close(fd)


def normalize_sysctl(value: str) -> str:
    """Multi-value entries print tab-separated; compare them word by word."""
    return " ".join(value.split())


# --- hosts -------------------------------------------------------------------


class Host:
    """One host: a runner and the package, service and sysctl parts built on it."""

    def __init__(
        self,
        runner: Runner,
        *,
        packages: PackageManager,
        services: ServiceManager,
        proc_sys: Path | str = "/proc/sys",
        sysctl_dir: str = "/etc/sysctl.d",
    ) -> None:
        self.runner = runner
        self.packages = packages
        self.services = services
        self.sysctl = ProcSys(Path(proc_sys))
        #: Absolute path, applied below the managed root.
        self.sysctl_dir = sysctl_dir

    def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        """Run a health check's argv; raises HostError if it cannot start or overruns."""
        return self.runner.run(argv, timeout_s=timeout_s)


def _packages(kind: str, runner: Runner, lists_max_age_s: float = 86400.0) -> PackageManager:
    if kind == "auto":
        import shutil

        if shutil.which("dpkg-query") and shutil.which("apt-get"):
            kind = "apt"
        elif shutil.which("rpm") and shutil.which("dnf"):
            kind = "dnf"
        else:
            kind = "none"
    if kind == "apt":
        return AptPackages(runner, lists_max_age_s=lists_max_age_s)
    return DnfPackages(runner) if kind == "dnf" else NoPackages()


def _services(kind: str, runner: Runner) -> ServiceManager:
    if kind == "auto":
        # sd_booted(3): systemd is the running init exactly when this exists.
        kind = "systemd" if os.path.isdir("/run/systemd/system") else "none"
    return Systemd(runner) if kind == "systemd" else NoServices()


class SystemHost(Host):
    """The real machine."""

    def __init__(
        self,
        *,
        package_manager: str = "auto",
        service_manager: str = "auto",
        proc_sys: Path | str = "/proc/sys",
        sysctl_dir: str = "/etc/sysctl.d",
        package_lists_max_age_s: float = 86400.0,
    ) -> None:
        runner = ProcessRunner()
        super().__init__(
            runner,
            packages=_packages(package_manager, runner, package_lists_max_age_s),
            services=_services(service_manager, runner),
            proc_sys=proc_sys,
            sysctl_dir=sysctl_dir,
        )

    @classmethod
    def from_config(cls, config: Any) -> SystemHost:
        """From any object with ``package_manager``, ``service_manager``, ``proc_sys``, ``sysctl_dir``
        (and optionally ``package_lists_max_age_s``)."""
        return cls(
            package_manager=getattr(config, "package_manager", "auto"),
            service_manager=getattr(config, "service_manager", "auto"),
            proc_sys=getattr(config, "proc_sys", "/proc/sys"),
            sysctl_dir=getattr(config, "sysctl_dir", "/etc/sysctl.d"),
            package_lists_max_age_s=float(getattr(config, "package_lists_max_age_s", 86400.0)),
        )
