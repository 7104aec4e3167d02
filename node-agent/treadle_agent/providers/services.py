"""service resources, through the host's service manager (systemd).

``enabled`` and ``state`` are each unmanaged when null. A service the run
starts is remembered in the context, so a notify restart right after it is
skipped (it already runs with the new files).
"""

from __future__ import annotations

from treadle_agent.inventory import Entry
from treadle_agent.providers.base import Context, Observed, Resource


class ServiceProvider:
    type = "service"

    def want(self, res: Resource) -> list:
        return [res["enabled"], res["state"]]

    def inspect(self, res: Resource, ctx: Context, entry: Entry | None) -> Observed:
        services, name = ctx.host.services, res["name"]
        diffs, fix = [], {}
        if res["enabled"] is not None and services.is_enabled(name) != res["enabled"]:
            diffs.append("disabled, want enabled" if res["enabled"] else "enabled, want disabled")
            fix["enabled"] = res["enabled"]
        if res["state"] is not None and services.is_active(name) != (res["state"] == "running"):
            diffs.append("stopped, want running" if res["state"] == "running" else "running, want stopped")
            fix["running"] = res["state"] == "running"
        return Observed("; ".join(diffs) or None, detail=fix)

    def repair(self, res: Resource, ctx: Context, observed: Observed) -> Entry:
        services, name, fix = ctx.host.services, res["name"], observed.detail
        if "enabled" in fix:
            services.set_enabled(name, fix["enabled"])
        if "running" in fix:
            services.set_running(name, fix["running"])
            if fix["running"]:
                ctx.started.add(name)
        return {}

    def remove(self, rid: str, entry: Entry, ctx: Context) -> str:
        return "forgotten (a service is left as it is when the manifest drops it)"
