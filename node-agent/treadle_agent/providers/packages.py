"""package resources, through the host's package manager (apt/dpkg or dnf/rpm).

Every package of the manifest is read in one query per run; a change is
verified by reading the package back, so an install that "succeeded" without
installing is a failure, not a silent drift.
"""

from __future__ import annotations

from typing import Any

from treadle_agent.errors import HostError
from treadle_agent.inventory import Entry
from treadle_agent.providers.base import Context, Observed, Resource


class PackageProvider:
    type = "package"

    def want(self, res: Resource) -> list:
        return [res["ensure"], res["version"]]

    def _diff(self, res: Resource, ctx: Context, state: Any) -> str | None:
        if res["ensure"] == "absent":
            return f"installed ({state.version}), want absent" if state.installed else None
        if not state.installed:
            return "not installed"
        if res["version"] and not ctx.host.packages.version_matches(
            state.version or "", res["version"]
        ):
            return f"version {state.version} installed, want {res['version']}"
        return None

    def inspect(self, res: Resource, ctx: Context, entry: Entry | None) -> Observed:
        state = ctx.package(res["name"])
        return Observed(self._diff(res, ctx, state), detail=state)

    def repair(self, res: Resource, ctx: Context, observed: Observed) -> Entry:
        name = res["name"]
        if res["ensure"] == "absent":
            ctx.host.packages.remove(name)
        else:
            ctx.host.packages.install(name, res["version"])
        after = ctx.package_changed(name)
        still = self._diff(res, ctx, after)
        if still is not None:
            raise HostError(
                f"package {name}: the package manager reported success but it is still {still}"
            )
        return {"created": res["ensure"] == "present" and not observed.detail.installed}

    def remove(self, rid: str, entry: Entry, ctx: Context) -> str:
        name = rid.partition(":")[2]
        state = ctx.package(name)
        if not state.installed and not state.partial:
            return "already gone"
        ctx.host.packages.remove(name)
        ctx.package_changed(name)
        return "removed (installed by the agent, no longer in the manifest)"
