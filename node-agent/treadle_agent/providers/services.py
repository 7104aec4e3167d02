"""service resources, through the host's service manager (systemd).

``enabled`` and ``state`` are each unmanaged when null. A service the run
starts is remembered in the context, so a notify restart right after it is
skipped (it already runs with the new files).

``enabled`` against what ``systemctl is-enabled`` says, explicitly:

- enabled, enabled-runtime: enabled; disabled: disabled.
- static, indirect, generated, transient: the unit has no [Install] section
  of its own to enable (something else starts it): ``enabled: true`` is in
  sync; ``enabled: false`` cannot be had and fails saying so.
- masked: ``enabled: false`` is in sync (a masked unit cannot even be
  started); ``enabled: true`` fails: the agent never unmasks a unit someone
  masked.
- alias: the resource fails naming the unit itself. Enabling through an
  alias works only while the unit is enabled (disabling a unit removes its
  aliases), so a manifest must name the unit (ssh, not sshd, on Debian).
"""

from __future__ import annotations

from treadle_agent.errors import HostError
from treadle_agent.host import ENABLED_STATES
from treadle_agent.inventory import Entry
from treadle_agent.providers.base import Context, Observed, Resource

#: Units without an [Install] section of their own: nothing to enable or disable.
_NOT_INSTALLABLE = frozenset({"static", "indirect", "generated", "transient"})


class ServiceProvider:
    type = "service"

    def want(self, res: Resource) -> list:
        return [res["enabled"], res["state"]]

    def inspect(self, res: Resource, ctx: Context, entry: Entry | None) -> Observed:
        services, name = ctx.host.services, res["name"]
        diffs, fix = [], {}
        if res["enabled"] is not None and self._enabled_diff(ctx, name, res["enabled"]):
            diffs.append("disabled, want enabled" if res["enabled"] else "enabled, want disabled")
            fix["enabled"] = res["enabled"]
        if res["state"] is not None and services.is_active(name) != (res["state"] == "running"):
            diffs.append(
                "stopped, want running" if res["state"] == "running" else "running, want stopped"
            )
            fix["running"] = res["state"] == "running"
        return Observed("; ".join(diffs) or None, detail=fix)

    @staticmethod
    def _enabled_diff(ctx: Context, name: str, want: bool) -> bool:
        """Whether ``enable``/``disable`` is needed; raises HostError when it cannot be had (see the module docstring)."""
        state = ctx.host.services.file_state(name)
        if state == "alias":
            real = ctx.host.services.unit_id(name)
            raise HostError(
                f"{name} is an alias of {real}: name the unit itself (service {real.removesuffix('.service')}); "
                "disabling a unit removes its aliases, and an alias cannot be enabled then"
            )
        if state in _NOT_INSTALLABLE:
            if want:
                return False
            raise HostError(
                f"{name} is {state} (no [Install] section of its own): it cannot be disabled; "
                "mask it on the node, stop it with state: stopped, or set enabled: null"
            )
        if state.startswith("masked"):
            if not want:
                return False
            raise HostError(
                f"{name} is masked: the agent does not unmask units (run `systemctl unmask {name}` "
                "on the node if it should run, or set enabled: false)"
            )
        return (state in ENABLED_STATES) != want

    def repair(self, res: Resource, ctx: Context, observed: Observed) -> Entry:
        services, name, fix = ctx.host.services, res["name"], observed.detail
        ctx.reload_units()
        if "enabled" in fix:
            services.set_enabled(name, fix["enabled"])
        if "running" in fix:
            services.set_running(name, fix["running"])
            if fix["running"]:
                ctx.started.add(name)
        return {}

    def remove(self, rid: str, entry: Entry, ctx: Context) -> str:
        return "forgotten (a service is left as it is when the manifest drops it)"
