"""A simulated host for tests and the demo: packages and units in memory, real command lines.

:class:`SimulatedHost` is a :class:`~treadle_agent.host.Host` whose runner
answers dpkg-query, apt-get, rpm, dnf and systemctl from memory, the way the
real programs answer (exit codes and output formats included), and records
every argv it is given. Programs it does not simulate (a health check's argv)
run for real. Sysctl and files are never simulated: point ``proc_sys`` and
the managed root at temp dirs.

It is also agent.toml's ``simulated`` host mode (:meth:`SimulatedHost.persistent`),
for demos and for trying a fabric where the agent must not install or start
anything: every package name is available and every unit exists once asked
for, and what the agent "installed", enabled and started is kept in
``<state_dir>/simulated-host.json`` between runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from treadle_agent.contract.files import write_atomic
from treadle_agent.contract.names import SIMULATED_HOST_FILE
from treadle_agent.errors import StateError
from treadle_agent.host import (
    AptPackages,
    CommandResult,
    DnfPackages,
    Host,
    NoPackages,
    NoServices,
    PackageManager,
    ProcessRunner,
    ServiceManager,
    Systemd,
)


@dataclass
class Unit:
    enabled: bool = False
    active: bool = False
    #: Starting or restarting fails, as a broken unit's would.
    broken: bool = False
    #: Starting succeeds and leaves it inactive, as an unmet Condition… does.
    condition_fails: bool = False
    #: What ``is-enabled`` says instead of enabled/disabled: "static", "masked", "alias"...
    file_state: str | None = None
    #: The unit this name is an alias of (``show -p Id``).
    alias_of: str | None = None
    #: Its files changed on disk since the last daemon-reload.
    need_reload: bool = False


#: The version every package has in the ``simulated`` mode, unless the manifest pins another.
SIMULATED_VERSION = "1.0-1"
#: Verbs that change the simulated state (saved after each, in the ``simulated`` mode).
_CHANGES = frozenset(
    {"install", "remove", "purge", "enable", "disable", "start", "stop", "restart", "daemon-reload"}
)


@dataclass
class SimulatedRunner:
    """Answers dpkg-query, apt-get, rpm, dnf and systemctl from memory; runs anything else for real.

    ``permissive``: every package name is available and every unit exists once enabled or started
    (the ``simulated`` mode, where the fabric's packages are not known in advance). ``state_file``:
    where the installed packages and units are kept between runs (None: memory only).
    """

    installed: dict[str, str] = field(default_factory=dict)
    available: dict[str, str] = field(default_factory=dict)
    units: dict[str, Unit] = field(default_factory=dict)
    commands: list[tuple[str, ...]] = field(default_factory=list)
    envs: list[dict[str, str]] = field(default_factory=list)
    permissive: bool = False
    state_file: Path | None = None
    #: Keep every argv in ``commands`` (for tests); off in the ``simulated`` mode, where an agent runs for days.
    record: bool = True
    #: Packages apt only knows after ``apt-get update`` (added to ``available`` then).
    upstream: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state_file is not None and self.state_file.exists():
            try:
                doc = json.loads(self.state_file.read_bytes())
                self.installed = dict(doc["installed"])
                self.units = {name: Unit(**u) for name, u in doc["units"].items()}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise StateError(
                    f"{self.state_file}: unreadable simulated host state ({e}); delete it to start empty"
                ) from e

    def run(
        self, argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        argv = tuple(argv)
        if self.record:
            self.commands.append(argv)
            self.envs.append(dict(env or {}))
        handler = {
            "dpkg-query": self._dpkg_query,
            "apt-get": self._apt_get,
            "rpm": self._rpm,
            "dnf": self._dnf,
            "systemctl": self._systemctl,
        }.get(argv[0])
        if handler is None:
            return ProcessRunner().run(argv, timeout_s=timeout_s, env=env)
        rc, out, err = handler(argv[1:])
        if self.state_file is not None and _CHANGES.intersection(argv[1:2]):
            self._save()
        return CommandResult(argv, rc, out, err)

    def _save(self) -> None:
        # The simulated mode's units only ever change these three (the other fields are for tests).
        doc = {
            "installed": self.installed,
            "units": {
                name: {k: v for k, v in asdict(u).items() if k in ("enabled", "active", "broken")}
                for name, u in self.units.items()
            },
        }
        assert self.state_file is not None
        write_atomic(self.state_file, json.dumps(doc, indent=1, sort_keys=True).encode())

    def _known(self, names: Iterable[str]) -> None:
        """In permissive mode, every package name asked about is available."""
        if self.permissive:
            for name in names:
                self.available.setdefault(name, SIMULATED_VERSION)

    def _dpkg_query(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        names = args[2:]
        self._known(names)
        out = "".join(
            f"{n} install ok installed {self.installed[n]}\n" for n in names if n in self.installed
        )
        missing = [n for n in names if n not in self.installed and n not in self.available]
        err = "".join(f"dpkg-query: no packages found matching {n}\n" for n in missing)
        # Known but not installed packages print "unknown ok not-installed".
        out += "".join(
            f"{n} unknown ok not-installed \n"
            for n in names
            if n not in self.installed and n in self.available
        )
        return (1 if missing else 0), out, err

    def _rpm(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        names = args[3:]
        out = "".join(
            f"{n} {self.installed[n]}\n"
            if n in self.installed
            else f"package {n} is not installed\n"
            for n in names
        )
        return (0 if all(n in self.installed for n in names) else 1), out, ""

    def _install(self, spec: str, sep: str) -> tuple[int, str, str]:
        name, _, version = (
            spec.partition(sep) if sep == "=" else _split_rpm_spec(spec, self.available)
        )
        if self.permissive and (name not in self.available or version):
            self.available[name] = version or SIMULATED_VERSION
        if name not in self.available or (
            version
            and not (
                self.available[name] == version or self.available[name].startswith(version + "-")
            )
        ):
            return 100, "", f"E: Unable to locate package {spec}\n"
        self.installed[name] = self.available[name]
        return 0, f"Setting up {name} ({self.installed[name]}) ...\n", ""

    def _remove(self, name: str) -> tuple[int, str, str]:
        self.installed.pop(name, None)
        return 0, "", ""

    def _apt_get(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        if args[0] == "update":
            self.available.update(self.upstream)
            return 0, "Reading package lists...\n", ""
        return self._install(args[-1], "=") if args[0] == "install" else self._remove(args[-1])

    def _dnf(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        return self._install(args[-1], "-") if args[0] == "install" else self._remove(args[-1])

    def _systemctl(self, args: tuple[str, ...]) -> tuple[int, str, str]:
        verb, name = args[0], args[-1]
        if verb == "daemon-reload":
            for u in self.units.values():
                u.need_reload = False
            return 0, "", ""
        if self.permissive and verb in _CHANGES:
            self.units.setdefault(name, Unit())
        if verb == "show":  # an unknown unit shows too (LoadState=not-found)
            unit = self.units.get(name) or Unit()
            return (
                0,
                "".join(
                    f"{p}={self._property(name, unit, p)}\n"
                    for p in args[1].partition("=")[2].split(",")
                ),
                "",
            )
        found = self.units.get(name)
        if found is None:
            if verb == "is-active":
                return 3, "inactive\n", ""
            return (
                (1 if verb == "is-enabled" else 5),
                "",
                f"Failed to {verb} unit: Unit {name}.service not found.\n",
            )
        unit = found
        if verb == "is-enabled":
            if unit.file_state:
                return (
                    (1 if unit.file_state in ("disabled", "masked") else 0),
                    f"{unit.file_state}\n",
                    "",
                )
            return (0, "enabled\n", "") if unit.enabled else (1, "disabled\n", "")
        if verb == "is-active":
            return (0, "active\n", "") if unit.active else (3, "inactive\n", "")
        if unit.file_state == "masked" and verb in ("enable", "start", "restart"):
            return 1, "", f"Failed to {verb} unit: Unit file {name}.service is masked.\n"
        if verb in ("enable", "disable"):
            if unit.file_state != "static":
                unit.enabled = verb == "enable"
        elif verb in ("start", "restart"):
            if unit.broken:
                unit.active = False
                return (
                    1,
                    "",
                    f"Job for {name}.service failed because the control process exited with error code.\n",
                )
            unit.active = not unit.condition_fails
        elif verb == "stop":
            unit.active = False
        return 0, "", ""

    @staticmethod
    def _property(name: str, unit: Unit, prop: str) -> str:
        return {
            "Id": unit.alias_of or (name if "." in name else f"{name}.service"),
            "NeedDaemonReload": "yes" if unit.need_reload else "no",
            "ActiveState": "active" if unit.active else "inactive",
            "SubState": "running" if unit.active else "dead",
            "Result": "success",
            "ConditionResult": "no" if unit.condition_fails else "yes",
            "AssertResult": "yes",
        }.get(prop, "")


def _split_rpm_spec(spec: str, available: Mapping[str, str]) -> tuple[str, str, str]:
    if spec in available:
        return spec, "", ""
    name, _, version = spec.partition("-")
    return name, "-", version


class SimulatedHost(Host):
    """A host whose packages and units live in memory; see :class:`SimulatedRunner`.

    ``commands`` lists every argv run, in order, for tests to assert on.
    """

    def __init__(
        self,
        *,
        proc_sys: Path | str,
        package_manager: str = "apt",
        service_manager: str = "systemd",
        sysctl_dir: str = "/etc/sysctl.d",
        installed: Mapping[str, str] | None = None,
        available: Mapping[str, str] | None = None,
        units: Mapping[str, Unit] | None = None,
        permissive: bool = False,
        state_file: Path | None = None,
    ) -> None:
        self.sim = SimulatedRunner(
            dict(installed or {}),
            dict(available or {}),
            dict(units or {}),
            permissive=permissive,
            state_file=state_file,
            record=state_file is None,
        )
        packages: PackageManager = (
            AptPackages(self.sim, lists_dir=None)
            if package_manager == "apt"
            else DnfPackages(self.sim)
            if package_manager == "dnf"
            else NoPackages()
        )
        services: ServiceManager = (
            Systemd(self.sim) if service_manager == "systemd" else NoServices()
        )
        super().__init__(
            self.sim, packages=packages, services=services, proc_sys=proc_sys, sysctl_dir=sysctl_dir
        )

    @classmethod
    def persistent(
        cls, state_dir: Path, *, proc_sys: Path | str, sysctl_dir: str = "/etc/sysctl.d"
    ) -> SimulatedHost:
        """agent.toml's ``simulated`` mode: apt and systemd answered from ``state_dir``/simulated-host.json.

        Raises:
            StateError: the file exists but cannot be read.
        """
        return cls(
            proc_sys=proc_sys,
            sysctl_dir=sysctl_dir,
            permissive=True,
            state_file=Path(state_dir) / SIMULATED_HOST_FILE,
        )

    @property
    def commands(self) -> list[tuple[str, ...]]:
        return self.sim.commands

    def changes(
        self, programs: Iterable[str] = ("apt-get", "dnf", "systemctl")
    ) -> list[tuple[str, ...]]:
        """The recorded commands that change state (reads such as is-active and dpkg-query left out)."""
        reads = {"is-active", "is-enabled", "show"}
        return [
            c
            for c in self.sim.commands
            if c[0] in programs and not (c[0] == "systemctl" and c[1] in reads)
        ]
