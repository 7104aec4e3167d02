"""The running controller: the pipeline loop, the ref watcher and the HTTP API in one anyio task group.

The pipeline's cycle is blocking work (git, rendering, signing, fsync), so it
runs in a worker thread, one cycle at a time (a capacity limiter of 1); the
API keeps answering meanwhile. Anything that learns of a push (the ref
watcher, the webhook, an accepted history) only sets a trigger; a trigger that
arrives during a cycle makes the next one start at once, and that cycle
fetches the newest head, so a burst of pushes costs one or two cycles.

Health observation (scraping the agents, or asking Prometheus) runs in a
thread of its own (:class:`treadle.rollout.health.HealthWatcher`): a rollout
tick only reads its latest observations, so neither a push nor the API ever
waits for an agent that is down or hung.

SIGTERM and SIGINT stop the loop after the cycle in progress (a cycle is never
abandoned halfway, although a crash mid-cycle is safe too) and shut the HTTP
server down.

Raises:
    UsageError: the listen address cannot be bound.
    SigningKeyError, StoreError: the key or the state directory is unusable at start.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn

from treadle import log
from treadle.daemon.api import ApiContext, build_app
from treadle.daemon.config import ControllerConfig
from treadle.daemon.fetch import GitSource, local_git_dir, watch_refs
from treadle.daemon.gate import SignaturePolicy
from treadle.daemon.metrics import ControllerMetrics
from treadle.daemon.pipeline import Outcome, Pipeline, Settings
from treadle.daemon.publish import PublishStore
from treadle.daemon.sign import ManifestSigner
from treadle.daemon.state import StateDB
from treadle.errors import SourceError, StoreError, UsageError
from treadle.rollout.health import HealthWatcher
from treadle.rollout.observe import source_from_config
from treadle.rollout.service import RolloutService

STATE_DB = "state.sqlite3"
#: After a failed cycle (git unreachable, disk full) retry sooner than the poll interval, but not in a tight loop.
RETRY_AFTER_FAILURE_S = 5.0


class Trigger:
    """A level-triggered wake-up: any number of ``set()`` calls before a ``wait()`` wake it once."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait for a trigger or ``timeout_s``; whether it was a trigger."""
        with anyio.move_on_after(timeout_s):
            await self._event.wait()
        triggered = self._event.is_set()
        self._event = anyio.Event()
        return triggered


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals are the controller's: it stops the server itself


@dataclass
class Controller:
    """The wired parts of one controller process; :meth:`run` is its whole life."""

    config: ControllerConfig
    pipeline: Pipeline
    api: ApiContext
    trigger: Trigger
    health: HealthWatcher | None = None

    async def run(self) -> None:
        """Serve and reconcile until SIGTERM or SIGINT."""
        sock = _bind(self.config.api.host, self.config.api.port)
        host, port = sock.getsockname()[:2]
        server = _Server(
            uvicorn.Config(
                build_app(self.api),
                log_level="warning",
                access_log=False,
                lifespan="off",
                log_config=None,
            )
        )
        log.event("api.listening", host=host, port=port, url=f"http://{host}:{port}")
        if self.health is not None:
            self.health.start()
        async with anyio.create_task_group() as outer:
            outer.start_soon(server.serve, [sock])
            stop = anyio.Event()
            async with anyio.create_task_group() as workers:
                workers.start_soon(self._stop_on_signal, server, workers.cancel_scope, stop)
                workers.start_soon(self._loop)
                git_dir = local_git_dir(self.config.source.repository)
                if git_dir is not None:
                    workers.start_soon(watch_refs, git_dir, self.trigger.set, stop)
                    log.event("source.watching", path=str(git_dir))
            server.should_exit = True
        self.close()
        log.event("controller.stopped")

    def close(self) -> None:
        """Release what the parts hold open: the health thread, database connections, the mirror's pack files."""
        if self.health is not None:
            self.health.stop()
        if self.pipeline.rollouts is not None:
            self.pipeline.rollouts.close()
        self.pipeline.source.close()
        self.pipeline.state.close()

    async def _stop_on_signal(
        self, server: uvicorn.Server, scope: anyio.CancelScope, stop: anyio.Event
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.event("controller.stopping", signal=signal.Signals(signum).name)
                server.should_exit = True
                stop.set()
                scope.cancel()
                return

    async def _loop(self) -> None:
        """Full cycles on a trigger or every poll interval; between them, while a rollout is in flight,
        rollout ticks (observe + advance, no git fetch) every health interval."""
        limiter = anyio.CapacityLimiter(1)
        poll_s, tick_s = self.config.source.poll_interval_s, self.config.health.interval_s
        full, last_full = True, 0.0
        while True:
            if full or time.monotonic() - last_full >= poll_s:
                outcome = await anyio.to_thread.run_sync(self._cycle, limiter=limiter)
                last_full = time.monotonic()
                retry = outcome is None or outcome.result == "failed"
            else:
                await anyio.to_thread.run_sync(self._tick, limiter=limiter)
            wait = poll_s - (time.monotonic() - last_full)
            if retry:
                wait = min(wait, RETRY_AFTER_FAILURE_S)
            if self.pipeline.rollouts is not None and self.pipeline.rollouts.active() is not None:
                wait = min(wait, tick_s)
            full = await self.trigger.wait(max(wait, 0.0))

    def _tick(self) -> None:
        try:
            self.pipeline.tick()
        except Exception as e:  # as in _cycle: keep serving
            log.error("tick.crashed", error_type=type(e).__name__, error=str(e))

    def _cycle(self) -> Outcome | None:
        try:
            outcome = self.pipeline.run_once()
        except (
            Exception
        ) as e:  # a bug must not stop the controller: keep serving the last good store
            log.error("cycle.crashed", error_type=type(e).__name__, error=str(e))
            return None
        self.api.last_cycle.update(
            result=outcome.result, commit=outcome.commit, reason=outcome.reason, at=time.time()
        )
        if outcome.kind not in (
            "unchanged",
            "refused-before",
        ):  # a render ran: free its garbage now
            from treadle.fabric.render import collect_garbage

            collect_garbage()
        if outcome.result in ("deployed", "refused"):
            self.prune()
        return outcome

    def prune(self) -> None:
        """Cut the history kept to the retention settings (README: Retention and cleanup); failures are logged."""
        keep = self.config.retention
        try:
            removed = self.pipeline.state.prune(keep.history_kept)
            if self.pipeline.rollouts is not None:
                removed += self.pipeline.rollouts.prune(keep.rollouts_kept)
            branches = self.pipeline.source.prune_revert_branches(keep.revert_branches_kept)
        except (StoreError, SourceError) as e:
            log.error("retention.failed", error_type=type(e).__name__, error=str(e))
            return
        if removed or branches:
            log.event("retention.pruned", rows=removed, revert_branches=len(branches))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {e.strerror}; change `listen` in controller.toml"
        ) from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build(config: ControllerConfig, **pipeline_overrides: Any) -> Controller:
    """Wire the controller's parts from ``config``.

    Raises:
        SigningKeyError, StoreError: see the module docstring.
    """
    state_dir = config.store.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    state = StateDB(state_dir / STATE_DB, node_history_kept=config.retention.history_kept)
    store = PublishStore(config.store.publish_dir)
    metrics = ControllerMetrics()
    trigger = Trigger()
    h = config.health
    health = HealthWatcher(
        source_from_config(
            h.source, h.prometheus_url, h.scrape_timeout_s, h.scrape_concurrency, h.scrape_round_s
        ),
        interval_s=h.interval_s,
        stale_after_s=h.stale_after_s,
        metrics=metrics,
    )
    rollouts = RolloutService(state_dir / STATE_DB, health, metrics=metrics)
    pipeline = Pipeline(
        source=GitSource(
            config.source.repository,
            config.source.branch,
            state_dir,
            config.source.credentials,
            max_packs=config.retention.mirror_max_packs,
        ),
        state=state,
        store=store,
        metrics=metrics,
        rollouts=rollouts,
        signer=ManifestSigner(
            config.signing.signing_keys, lifetime_s=config.signing.manifest_lifetime_s
        ),
        settings=Settings(resign_before_s=config.signing.resign_before_s),
        policy=SignaturePolicy(config.policy.allowed_signers)
        if config.policy.require_signed and config.policy.allowed_signers
        else None,
        **pipeline_overrides,
    )
    api = ApiContext(
        store=store,
        state=state,
        metrics=metrics,
        trigger=trigger.set,
        branch=config.source.branch,
        rollouts=rollouts,
        repository=config.source.repository,
        webhook_secret=config.api.webhook_secret,
        admin_token=config.api.admin_token,
        target_of=pipeline.executor.target_of,
        scrape_timeout_s=config.health.scrape_timeout_s,
        mirror=_mirror_of(pipeline),
        console_read=config.api.console_read,
        health_status=health.status,
    )
    return Controller(config, pipeline, api, trigger, health)


def _mirror_of(pipeline: Any) -> str | None:
    """The git mirror's path, where the console reads commits (None for a source without one)."""
    path = getattr(pipeline.source, "path", None)
    return None if path is None else str(path)


def run(config: ControllerConfig) -> None:
    """Build and run the controller until a stop signal (uvloop when available).

    SIGUSR1 writes the stack of every thread to stderr (the journal), for a controller that seems stuck.
    """
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    controller = build(config)
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    anyio.run(controller.run, backend_options=options)
