"""The Applier: one reconcile of the host against a manifest's resources.

A run, in order:

1. plan: resources in dependency order (``requires`` and the nearest managed
   parent directory), manifest order otherwise; computed once per manifest;
2. sweep (first run of a process only): temp files a killed run left behind;
3. each resource: inspect; in sync, drifted, or changed; repair unless the
   policy is ``report`` and it is drift (see below); skipped when something it
   depends on failed or was skipped; one resource failing never stops others;
4. the persistent sysctl file, once;
5. prune: resources a newer manifest dropped are removed if the agent created
   them, otherwise forgotten and left alone;
6. notify: each service named by a changed or healed file is restarted once
   (a failed restart is retried next run). The restart is recorded as pending
   in the inventory, and the inventory saved, *before* the notifying file is
   changed: a run killed between the change and the restart (kill -9, power
   loss) leaves the record, and the next run restarts the service;
7. fsync the directories whose entries changed, then save the inventory
   (only if it changed: a no-op run writes nothing at all).

Drift versus change: the inventory keeps a fingerprint of the desired state
the agent last enforced for each resource. If the fingerprint is unchanged and
the host differs, someone changed the host: that is drift, repaired and
reported ``healed`` under ``heal``, only reported ``drifted`` under ``report``.
If the fingerprint changed (or the resource is new), the manifest asks for a
change, which is applied under either policy and reported ``changed``.

:meth:`Applier.check` answers what a run would do without doing any of it
(``treadle-agent check``): every resource is inspected the same way, nothing
is repaired, removed, restarted or written, not even the inventory.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treadle_agent.contract.log import get_logger
from treadle_agent.contract.manifest import RESOURCE_ORDER, Manifest, resource_id
from treadle_agent.contract.names import RESOURCE_STATUS_OF_RESULT, RESOURCE_STATUSES
from treadle_agent.errors import AgentError, ConfigError, HostError, PathEscapeError
from treadle_agent.host import Host
from treadle_agent.inventory import Inventory
from treadle_agent.providers.base import Context, Observed, Provider
from treadle_agent.providers.files import DirectoryProvider, FileProvider, SymlinkProvider
from treadle_agent.providers.packages import PackageProvider
from treadle_agent.providers.paths import RootFS, split_path
from treadle_agent.providers.services import ServiceProvider
from treadle_agent.providers.sysctl import SysctlProvider, sync_persistent

log = get_logger("apply")

STATUSES = ("in_sync", "changed", "drifted", "healed", "failed", "skipped")
_PATH_TYPES = ("directory", "file", "symlink")
#: Where systemd reads unit files and drop-ins (systemd.unit(5)); a change there needs a daemon-reload.
UNIT_DIRS = (
    "/etc/systemd/system/",
    "/run/systemd/system/",
    "/usr/local/lib/systemd/system/",
    "/usr/lib/systemd/system/",
    "/lib/systemd/system/",
)


@dataclass(frozen=True, slots=True)
class ResourceResult:
    id: str
    type: str
    status: str
    message: str = ""


@dataclass(frozen=True)
class ApplyReport:
    """What one run did. ``removed`` lists resources pruned or forgotten because the manifest dropped them."""

    results: tuple[ResourceResult, ...]
    restarted: tuple[str, ...] = ()
    removed: tuple[ResourceResult, ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing failed or was skipped."""
        return all(r.status not in ("failed", "skipped") for r in (*self.results, *self.removed))

    def counts(self) -> dict[tuple[str, str], int]:
        """(type, in_sync|drifted|failed) -> number of resources, zeros included, for treadle_agent_resources."""
        out = {(t, s): 0 for t in RESOURCE_ORDER for s in RESOURCE_STATUSES}
        for r in self.results:
            out[(r.type, RESOURCE_STATUS_OF_RESULT[r.status])] += 1
        return out


#: Statuses of :meth:`Applier.check`: in sync, a change the manifest asks for, drift from what was applied,
#: a resource that cannot be inspected, one the manifest dropped that a run would remove, and a service a
#: changed file notifies (or whose restart failed before) that a run would restart.
CHECK_STATUSES = ("in_sync", "would_change", "drifted", "failed", "would_remove", "would_restart")


@dataclass(frozen=True)
class CheckReport:
    """What a run would do: ``results`` in apply order, then what it would remove."""

    results: tuple[ResourceResult, ...]
    removed: tuple[ResourceResult, ...] = ()

    @property
    def in_sync(self) -> bool:
        return all(r.status == "in_sync" for r in self.results) and not self.removed


@dataclass(frozen=True)
class Plan:
    """The apply order of one manifest and what each resource depends on."""

    ids: tuple[str, ...]
    order: tuple[int, ...]
    requires: tuple[tuple[str, ...], ...]
    parent: tuple[str | None, ...]
    errors: Mapping[int, str]


def make_plan(resources: Sequence[Mapping[str, Any]]) -> Plan:
    """Dependency order (Kahn's algorithm, manifest order breaking ties); unknown ids and cycles become errors."""
    ids = tuple(resource_id(r) for r in resources)
    index = {rid: i for i, rid in enumerate(ids)}
    errors: dict[int, str] = {}
    requires, parents = [], []
    for i, r in enumerate(resources):
        unknown = [d for d in r.get("requires") or () if d not in index]
        if unknown:
            errors[i] = (
                f"requires {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not in the manifest"
            )
        requires.append(tuple(d for d in r.get("requires") or () if d in index and d != ids[i]))
        parents.append(_managed_parent(r, index, resources))
    edges: list[list[int]] = [[] for _ in resources]
    indegree = [0] * len(resources)
    for i in range(len(resources)):
        for d in {*requires[i], *([parents[i]] if parents[i] else [])}:
            edges[index[d]].append(i)
            indegree[i] += 1
    ready = [i for i, n in enumerate(indegree) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in edges[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, j)
    cyclic = [i for i, n in enumerate(indegree) if n > 0]
    for i in cyclic:
        errors[i] = "dependency cycle among " + ", ".join(ids[j] for j in cyclic)
    return Plan(ids, tuple(order + cyclic), tuple(requires), tuple(parents), errors)


def _managed_parent(
    r: Mapping[str, Any], index: Mapping[str, int], resources: Sequence[Mapping[str, Any]]
) -> str | None:
    if r["type"] not in _PATH_TYPES:
        return None
    try:
        comps = split_path(r["path"])
    except PathEscapeError:
        return None  # the resource itself fails with this error
    for k in range(len(comps) - 1, 0, -1):
        rid = "directory:/" + "/".join(comps[:k])
        if rid in index and resources[index[rid]]["ensure"] == "present":
            return rid
    return None


class Applier:
    """Applies manifests to the host below ``root``; keeps its inventory in ``state_dir``.

    ``read_only`` is for :meth:`check` alone: the inventory is read without creating the state dir.

    Raises (constructor):
        ConfigError: ``drift_policy`` is not "heal" or "report".
        StateError: the inventory cannot be read.
    """

    def __init__(
        self, root: Path, state_dir: Path, host: Host, drift_policy: str, *, read_only: bool = False
    ) -> None:
        if drift_policy not in ("heal", "report"):
            raise ConfigError(f'drift_policy {drift_policy!r}: use "heal" or "report"')
        self.root = Path(root)
        self.state_dir = Path(state_dir)
        self.host = host
        self.heal = drift_policy == "heal"
        self.inventory = Inventory.load(Path(state_dir), read_only=read_only)
        providers: list[Provider] = [
            DirectoryProvider(),
            FileProvider(),
            SymlinkProvider(),
            PackageProvider(),
            SysctlProvider(),
            ServiceProvider(),
        ]
        self._providers = {p.type: p for p in providers}
        self._plan: Plan | None = None
        self._plan_raw: bytes | None = None
        self._swept = False

    def apply(self, manifest: Manifest) -> ApplyReport:
        """One run over ``manifest.resources``; see the module docstring.

        Raises:
            HostError: the managed root cannot be opened (nothing was applied).
            StateError: the inventory could not be saved (the host was changed).
        """
        resources = manifest.resources
        if self._plan is None or manifest.raw != self._plan_raw:
            self._plan, self._plan_raw = make_plan(resources), manifest.raw
        plan = self._plan
        with RootFS(self.root) as fs:
            ctx = self._context(fs, manifest)
            if not self._swept:
                self._sweep(ctx, resources)
            self._remember_new(ctx, resources, plan)
            results: list[ResourceResult] = [
                ResourceResult(rid, r["type"], "skipped")
                for rid, r in zip(plan.ids, resources, strict=False)
            ]
            statuses: dict[str, str] = {}
            notified: set[str] = set()
            for i in plan.order:
                results[i] = res = self._one(resources[i], plan, i, ctx, statuses)
                if res.status in ("changed", "healed") and res.type == "file":
                    notified.update(resources[i]["notify"])
            self._sysctl_file(ctx, resources, statuses, results)
            removed = self._prune(ctx, set(plan.ids))
            restarted = self._restart(ctx, resources, statuses, notified, results)
            try:  # unit files changed and no service change reloaded systemd yet: it should know them now
                ctx.reload_units()
            except (AgentError, OSError) as e:
                log.warning("units.reload_failed", error=_describe(e))
            fs.sync_dirs()
        self.inventory.save()
        return ApplyReport(tuple(results), restarted, tuple(removed))

    def check(self, manifest: Manifest) -> CheckReport:
        """What :meth:`apply` would do to the host now, changing nothing (see the module docstring).

        Raises:
            HostError: the managed root cannot be opened.
        """
        resources = manifest.resources
        plan = make_plan(resources)
        results: list[ResourceResult] = []
        starting: set[str] = set()
        with RootFS(self.root) as fs:
            ctx = self._context(fs, manifest)
            for i in plan.order:
                rid, res = plan.ids[i], resources[i]
                if i in plan.errors:
                    results.append(ResourceResult(rid, res["type"], "failed", plan.errors[i]))
                    continue
                try:
                    _, _, observed, drift = self._judge(res, rid, ctx)
                except (AgentError, OSError, ValueError) as e:
                    results.append(ResourceResult(rid, res["type"], "failed", _describe(e)))
                    continue
                status = (
                    "in_sync" if observed.diff is None else "drifted" if drift else "would_change"
                )
                results.append(ResourceResult(rid, res["type"], status, observed.diff or ""))
                if (
                    res["type"] == "service"
                    and (observed.detail or {}).get("running")
                    and (self.heal or not drift)
                ):
                    starting.add(res["name"])
        ids = set(plan.ids)
        removed = tuple(
            ResourceResult(rid, rid.partition(":")[0], "would_remove", "dropped from the manifest")
            for rid, entry in sorted(self.inventory.resources.items())
            if rid not in ids and rid.partition(":")[0] in self._providers and entry.get("created")
        )
        return CheckReport(
            (*results, *self._would_restart(resources, plan, results, starting)), removed
        )

    def _would_restart(
        self,
        resources: Sequence[Mapping[str, Any]],
        plan: Plan,
        results: Sequence[ResourceResult],
        starting: set[str],
    ) -> list[ResourceResult]:
        """The restarts a run would do (see :meth:`_restart`): services notified by files it would change or
        heal, and restarts that failed before, except services it stops and services it starts (a start
        runs the new files: the run does not restart them)."""
        changing = {"would_change", "drifted"} if self.heal else {"would_change"}
        by_id = {r.id: r for r in results}
        why: dict[str, list[str]] = {
            name: ["a restart that failed in an earlier run"]
            for name in self.inventory.pending_restarts
        }
        for rid, res in zip(plan.ids, resources, strict=False):
            if res["type"] == "file" and by_id[rid].status in changing:
                for name in res["notify"]:
                    why.setdefault(name, []).append(f"notified by {res['path']}")
        stopped = {
            r["name"] for r in resources if r["type"] == "service" and r["state"] == "stopped"
        }
        return [
            ResourceResult(f"service:{name}", "service", "would_restart", "; ".join(reasons))
            for name, reasons in sorted(why.items())
            if name not in stopped and name not in starting
        ]

    # --- one resource ---------------------------------------------------------

    def _one(
        self, res: Mapping[str, Any], plan: Plan, i: int, ctx: Context, statuses: dict[str, str]
    ) -> ResourceResult:
        rid, rtype = plan.ids[i], res["type"]
        if i in plan.errors:
            status, message = "failed", plan.errors[i]
        elif blocked := _blocked(plan, i, statuses):
            status, message = "skipped", blocked
        else:
            try:
                status, message = self._reconcile(res, rid, ctx)
            except (AgentError, OSError, ValueError) as e:
                status, message = "failed", _describe(e)
        statuses[rid] = status
        if status in ("changed", "healed") and rtype in _PATH_TYPES and _in_unit_dir(res["path"]):
            ctx.units_changed = True
        entry = self.inventory.get(rid)
        if status in ("failed", "skipped") and entry is not None and entry.get("want") is None:
            # A placeholder of _remember_new; kept so that a resource failing every run does not rewrite the
            # inventory. Whether the agent created it stays as recorded before the attempt: a failed install
            # can leave the package (half-)installed, and it must be pruned when the manifest drops it.
            self.inventory.put(rid, {"want": None, "created": bool(entry.get("created"))})
        return ResourceResult(rid, rtype, status, message)

    def _judge(
        self, res: Mapping[str, Any], rid: str, ctx: Context
    ) -> tuple[Any, Any, Observed, bool]:
        """(inventory entry, desired fingerprint, what the host has, whether a difference is drift); reads only."""
        entry = self.inventory.get(rid)
        want = self._providers[res["type"]].want(res)
        observed = self._providers[res["type"]].inspect(res, ctx, entry)
        return entry, want, observed, entry is not None and entry.get("want") == want

    def _reconcile(self, res: Mapping[str, Any], rid: str, ctx: Context) -> tuple[str, str]:
        provider = self._providers[res["type"]]
        entry, want, observed, drift = self._judge(res, rid, ctx)
        created = bool(entry and entry.get("created"))
        if observed.diff is None:
            if entry is None or entry.get("want") != want or observed.record is not None:
                self.inventory.put(
                    rid,
                    {**(entry or {}), **(observed.record or {}), "want": want, "created": created},
                )
            return "in_sync", ""
        if drift and not self.heal:
            return "drifted", observed.diff
        before = self._note_restarts(res)
        try:
            record = provider.repair(res, ctx, observed)
        except BaseException:
            if before is not None:  # nothing changed (writes are atomic): no restart is owed for it
                self.inventory.set_pending_restarts(before)
            raise
        created = created or bool(record.pop("created", False))
        self.inventory.put(rid, {**record, "want": want, "created": created})
        return ("healed" if drift else "changed"), observed.diff

    def _note_restarts(self, res: Mapping[str, Any]) -> list[str] | None:
        """Persist the restarts a file about to change owes; returns the pending list as it was, if it grew.

        Raises:
            StateError: the inventory cannot be saved (then the file is not changed either).
        """
        if res["type"] != "file" or not res.get("notify"):
            return None
        before = list(self.inventory.pending_restarts)
        wanted = sorted({*before, *res["notify"]})
        if wanted == sorted(before):
            return None
        self.inventory.set_pending_restarts(wanted)
        self.inventory.save()
        return before

    # --- whole-run steps ------------------------------------------------------

    def _context(self, fs: RootFS, manifest: Manifest) -> Context:
        """What the providers see of this host for ``manifest``: the same for :meth:`apply` and :meth:`check`."""
        return Context(
            fs,
            self.host,
            self.inventory,
            package_names=[r["name"] for r in manifest.resources if r["type"] == "package"],
            special_modes=tuple(manifest.metadata.get("special_modes") or ()),
            state_dir=self.state_dir,
        )

    def _sweep(self, ctx: Context, resources: Sequence[Mapping[str, Any]]) -> None:
        """Remove temp files a killed run left next to the files it was replacing."""
        paths = [r["path"] for r in resources if r["type"] in ("file", "symlink")]
        paths += [
            rid.partition(":")[2]
            for rid in self.inventory.resources
            if rid.startswith(("file:", "symlink:", "sysctl.d:"))
        ]
        paths.append(ctx.host.sysctl_dir.rstrip("/") + "/x")
        dirs = set()
        for p in paths:
            try:
                comps = split_path(p)
            except PathEscapeError:
                continue
            dirs.add("/" + "/".join(comps[:-1]))
        try:
            for p in ctx.fs.remove_temp_files(dirs):
                log.warning("apply.temp_file_removed", path=p, why="left by an interrupted run")
        except (AgentError, OSError) as e:
            # Leftovers are harmless (never read as content); the next write of that file replaces them.
            log.warning("apply.temp_sweep_failed", error=_describe(e))
        self._swept = True

    def _remember_new(
        self, ctx: Context, resources: Sequence[Mapping[str, Any]], plan: Plan
    ) -> None:
        """Record, before touching them, whether resources new to the inventory exist yet.

        A run killed after creating a file but before saving the inventory
        would otherwise leave the next run believing the file was there
        before the agent (and never prune it). The placeholder's ``want`` is
        None, so the first real inspection counts as a change, not drift.
        """
        known = self.inventory.resources
        new = [
            (rid, r)
            for rid, r in zip(plan.ids, resources, strict=False)
            if rid not in known
            and r["type"] in (*_PATH_TYPES, "package")
            and r["ensure"] == "present"
        ]
        for rid, r in new:
            try:
                exists = (
                    ctx.fs.lstat(r["path"]) is not None
                    if r["type"] != "package"
                    else ctx.package(r["name"]).installed
                )
            except (AgentError, OSError):
                continue  # inspecting it will fail and say why
            self.inventory.put(rid, {"want": None, "created": not exists})
        if new:
            self.inventory.save()

    def _sysctl_file(
        self,
        ctx: Context,
        resources: Sequence[Mapping[str, Any]],
        statuses: Mapping[str, str],
        results: list[ResourceResult],
    ) -> None:
        keys = [
            (r["key"], r["value"], statuses.get(f"sysctl:{r['key']}", "skipped"))
            for r in resources
            if r["type"] == "sysctl"
        ]
        if not keys and not any(rid.startswith("sysctl.d:") for rid in self.inventory.resources):
            return
        try:
            message = sync_persistent(ctx, keys, self.heal)
        except (AgentError, OSError) as e:
            # The file belongs to every key: each one reports the failure.
            for n, r in enumerate(results):
                if r.type == "sysctl" and r.status not in ("failed", "skipped"):
                    results[n] = ResourceResult(
                        r.id, r.type, "failed", f"persisting failed: {_describe(e)}"
                    )
            return
        if message:
            log.info("sysctl.persisted", message=message)

    def _prune(self, ctx: Context, ids: set[str]) -> list[ResourceResult]:
        dropped = [
            rid
            for rid in self.inventory.resources
            if rid not in ids and rid.partition(":")[0] in self._providers
        ]
        # Contents before their directories, deepest directories first.
        dropped.sort(key=lambda rid: (rid.startswith("directory:"), -rid.count("/"), rid))
        out = []
        for rid in dropped:
            rtype, entry = rid.partition(":")[0], self.inventory.resources[rid]
            if not entry.get("created"):
                self.inventory.forget(rid)
                out.append(
                    ResourceResult(
                        rid,
                        rtype,
                        "changed",
                        "forgotten: dropped from the manifest; left in place (not created by the agent)",
                    )
                )
                continue
            try:
                message = self._providers[rtype].remove(rid, entry, ctx)
            except (AgentError, OSError, ValueError) as e:
                out.append(
                    ResourceResult(
                        rid,
                        rtype,
                        "failed",
                        f"removing it failed (retried next run): {_describe(e)}",
                    )
                )
                continue
            self.inventory.forget(rid)
            out.append(ResourceResult(rid, rtype, "changed", message))
            if rtype in _PATH_TYPES and _in_unit_dir(rid.partition(":")[2]):
                ctx.units_changed = True
        return out

    def _restart(
        self,
        ctx: Context,
        resources: Sequence[Mapping[str, Any]],
        statuses: Mapping[str, str],
        notified: set[str],
        results: list[ResourceResult],
    ) -> tuple[str, ...]:
        services = {r["name"]: n for n, r in enumerate(resources) if r["type"] == "service"}
        keep, done = [], []
        for name in sorted(notified | set(self.inventory.pending_restarts)):
            n = services.get(name)
            if n is not None:
                if statuses.get(results[n].id) in ("failed", "skipped"):
                    keep.append(name)
                    continue
                if resources[n]["state"] == "stopped" or name in ctx.started:
                    continue
            try:
                ctx.reload_units()
                ctx.host.services.restart(name)
                done.append(name)
                log.info("service.restarted", service=name, why="a file that notifies it changed")
            except (AgentError, OSError) as e:
                keep.append(name)
                failure = ResourceResult(
                    f"service:{name}",
                    "service",
                    "failed",
                    f"restart after a notifying file changed failed (retried next run): {_describe(e)}",
                )
                if n is not None:
                    results[n] = failure
                else:
                    results.append(failure)
        self.inventory.set_pending_restarts(keep)
        return tuple(done)


def _in_unit_dir(path: str) -> bool:
    return path.startswith(UNIT_DIRS) or path.rstrip("/") + "/" in UNIT_DIRS


def _blocked(plan: Plan, i: int, statuses: Mapping[str, str]) -> str | None:
    for dep in plan.requires[i]:
        if statuses.get(dep) in ("failed", "skipped"):
            return f"requires {dep}, which {statuses[dep]}"
    parent = plan.parent[i]
    if parent and statuses.get(parent) in ("failed", "skipped"):
        return f"its parent directory {parent} {statuses[parent]}"
    return None


def _describe(e: BaseException) -> str:
    if isinstance(e, HostError | AgentError):
        return str(e)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}"
    return f"{type(e).__name__}: {e}"
