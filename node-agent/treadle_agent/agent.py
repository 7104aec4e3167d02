"""The agent's loop: fetch -> verify -> apply -> check health -> report.

One cycle is :meth:`Agent.cycle`, a list of named steps. What each failure
means for the rest of the cycle is decided here, in one place:

* fetch failed (FetchError): each failed request was counted; go on with the
  last good manifest, offline.
* verify refused (VerifyError): the reason is counted; go on with the last good
  manifest, of which nothing changed.
* no manifest was ever accepted: nothing to enforce; the cycle reports that.
* apply: per-resource results, never an exception for one bad resource.
* anything else raised on some input is a bug of ours, but still no crash:
  in verification it is a refusal counted as ``internal``; in a fetch,
  ``other``; in an apply, a failed run; and the daemon goes on to the next
  cycle with the last good manifest (README, "Security").

Metrics and the cycle's log line are written once, at the end (:meth:`_report`).

The apply is synchronous and is never interrupted: a stop request (SIGTERM,
SIGINT) cancels a fetch in flight or the sleep between cycles, never an apply,
so a stop cannot leave a node half-configured.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from treadle_agent.config import AgentConfig
from treadle_agent.contract.log import get_logger
from treadle_agent.contract.manifest import Manifest, parse_time
from treadle_agent.contract.trustroot import TrustRoot
from treadle_agent.errors import ConfigError, FetchError, HostError, StateError, VerifyError
from treadle_agent.fetch import Fetcher, FetchResult, HttpFetcher
from treadle_agent.metrics import AgentMetrics
from treadle_agent.state import ENVELOPE, StateStore
from treadle_agent.trust import TrustedState
from treadle_agent.verify import IsolatedAuthenticator, Verifier

if TYPE_CHECKING:
    from treadle_agent.apply import Applier, ApplyReport
    from treadle_agent.host import Host

log = get_logger("agent")


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one cycle did; ``ok`` is the exit status of ``treadle-agent once``."""

    fetch_failed: str | None = None  # FetchError reason
    refused: str | None = None  # VerifyError reason
    generation: int | None = None  # of the manifest enforced, None when there is none
    apply_ok: bool = False
    healthy: bool = False

    @property
    def ok(self) -> bool:
        return (
            self.fetch_failed is None
            and self.refused is None
            and self.generation is not None
            and self.apply_ok
            and self.healthy
        )


class Agent:
    """One node's agent. Build it with :meth:`from_config`; call :meth:`start` once, then cycles."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        trust: TrustRoot,
        fetcher: Fetcher,
        applier: Applier,
        host: Host,
        metrics: AgentMetrics,
        store: StateStore,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.trust = trust
        self.fetcher = fetcher
        self.applier = applier
        self.host = host
        self.metrics = metrics
        self.store = store
        self.clock = clock
        self.rng = rng
        self.trusted = TrustedState()
        self.verifier = Verifier(trust, config.node, self.trusted, clock=clock)
        self.etag: str | None = None  # of the accepted envelope, for If-None-Match
        self._stop: anyio.Event | None = None
        self._fetch_scope: anyio.CancelScope | None = None
        self._health_threads: dict[
            str, threading.Thread
        ] = {}  # a hung check's thread, not started again while alive

    @classmethod
    def from_config(
        cls,
        config: AgentConfig,
        *,
        host: Host | None = None,
        fetcher: Fetcher | None = None,
        clock: Callable[[], float] = time.time,
        isolate_verification: bool = False,
    ) -> Agent:
        """The agent for ``config``, with the real host and HTTP fetcher unless given others.

        ``isolate_verification`` runs the envelope, signature and schema checks
        in a child process (the daemon does; see verify.py).

        Raises:
            ConfigError: the trust root is unusable.
        """
        from treadle_agent.apply import Applier
        from treadle_agent.host_mode import host_for

        trust = TrustRoot.load(config.trust_root)
        metrics = AgentMetrics(config.node)
        host = host or host_for(config.host, config.state_dir)
        fetcher = fetcher or HttpFetcher(
            config.fetch, on_failure=lambda e, url: cls._fetch_failed(metrics, e, url)
        )
        applier = Applier(config.root, config.state_dir, host, config.drift_policy)
        agent = cls(
            config,
            trust=trust,
            fetcher=fetcher,
            applier=applier,
            host=host,
            metrics=metrics,
            store=StateStore(config.state_dir, clock=clock),
            clock=clock,
        )
        if isolate_verification:
            agent.verifier.authenticate = IsolatedAuthenticator(trust.raw)
        return agent

    @staticmethod
    def _fetch_failed(metrics: AgentMetrics, error: FetchError, url: str) -> None:
        metrics.fetch_failed(error.reason)
        log.warning("fetch.failed", url=url, reason=error.reason, error=str(error))

    def start(self) -> None:
        """Take up the trusted facts and the last accepted manifest from the state dir.

        The generation floor and the digest accepted under it come from every
        readable state file (state.py); facts recorded under another trust
        root are ignored, which is how rotating the trust root resets the
        floor. The trust root's keys are loaded now unless the stored manifest
        was accepted under this very trust root (same digest), which proves
        them usable; a restarted no-op agent then never loads the signature
        stack. Keys are checked before the stored manifest is looked at, so an
        unusable trust root stops the agent (exit 2) and leaves it untouched.

        Raises:
            StateError: the state dir cannot be created or read at all.
            ConfigError: the state dir is not private, or a key in a new trust root is unusable.
        """
        stored = self.store.load()
        trust_digest = self.trust.digest
        if stored.rotated(trust_digest):
            log.warning(
                "trust_root.rotated",
                recorded=stored.trust_root_sha256,
                now=trust_digest,
                action="generation floor reset; the stored manifest is verified again under the new trust root",
            )
        floor = stored.floor(trust_digest)
        self.trusted.highest_generation, self.trusted.highest_digest = (
            floor.generation,
            floor.manifest_sha256,
        )
        verified = stored.envelope_intact(trust_digest)
        if not verified:
            self.verifier.authenticate.check_keys()
        if stored.envelope is None:
            log.info(
                "state.empty", state_dir=str(self.store.dir), highest_generation=floor.generation
            )
            return
        try:
            manifest = self.verifier.restore(stored.envelope, verified=verified)
        except VerifyError as e:
            self.store.set_aside(
                ENVELOPE, f"the stored manifest no longer verifies ({e.reason}: {e})"
            )
            return
        self.etag = floor.etag if verified else None
        if not stored.complete(
            trust_digest
        ):  # a file was missing, damaged or stale: write every copy again
            self._save(stored.envelope, self.etag)
        log.info("state.restored", generation=manifest.generation, reverified=not verified)

    async def cycle(self) -> CycleResult:
        """One pass: fetch, verify, apply, check health, report."""
        fetched, fetch_failed = await self._fetch()
        if self._stop is not None and self._stop.is_set():
            return CycleResult(fetch_failed=fetch_failed)
        refused = self._verify(fetched) if fetched is not None else None
        manifest = self.trusted.manifest
        if manifest is None:
            log.warning("cycle.nothing_to_enforce", reason="no manifest has been accepted yet")
            return CycleResult(fetch_failed=fetch_failed, refused=refused)
        report, duration_s = self._apply(manifest)
        checks = self._check_health(manifest)
        self._report(manifest, report, duration_s, checks)
        return CycleResult(
            fetch_failed,
            refused,
            manifest.generation,
            report is not None and report.ok,
            all(checks.values()),
        )

    async def _fetch(self) -> tuple[FetchResult | None, str | None]:
        with anyio.CancelScope() as scope:
            self._fetch_scope = scope
            try:
                return await self.fetcher.fetch(self.etag), None
            except FetchError as e:
                log.warning(
                    "fetch.gave_up",
                    reason=e.reason,
                    error=str(e),
                    action="enforcing the last good manifest",
                )
                return None, e.reason
            except Exception as e:  # a Fetcher's bug on some answer: counted, never a crash
                self.metrics.fetch_failed("other")
                log.error(
                    "fetch.crashed",
                    reason="other",
                    error=f"{type(e).__name__}: {str(e)[:300]}",
                    action="enforcing the last good manifest",
                )
                return None, "other"
            finally:
                self._fetch_scope = None
        return None, None  # cancelled by a stop request

    def _verify(self, fetched: FetchResult) -> str | None:
        """Accept the fetched envelope or count why not; returns the refusal reason."""
        try:
            if fetched.not_modified:
                self.verifier.check_current()
                return None
            assert fetched.data is not None
            previous = self.trusted.envelope
            manifest = self.verifier.accept(fetched.data)
        except VerifyError as e:
            self.metrics.verify_failed(e.reason)
            log.warning(
                "verify.refused",
                url=fetched.url,
                reason=e.reason,
                error=str(e),
                action="enforcing the last good manifest",
            )
            return e.reason
        except ConfigError:
            raise
        except Exception as e:  # a bug of ours on this input: refuse it, counted, and go on
            self.metrics.verify_failed("internal")
            log.error(
                "verify.crashed",
                url=fetched.url,
                reason="internal",
                error=f"{type(e).__name__}: {str(e)[:300]}",
                action="enforcing the last good manifest",
            )
            return "internal"
        if fetched.data != previous or fetched.etag != self.etag:
            self._persist(fetched)
        if fetched.data != previous:
            log.info(
                "manifest.accepted",
                url=fetched.url,
                generation=manifest.generation,
                digest=manifest.digest,
            )
        return None

    def _persist(self, fetched: FetchResult) -> None:
        assert fetched.data is not None
        if self._save(fetched.data, fetched.etag):
            self.etag = fetched.etag

    def _save(self, envelope: bytes, etag: str | None) -> bool:
        try:
            self.store.save(
                envelope,
                self.trusted.highest_generation,
                etag,
                self.trust.digest,
                self.trusted.highest_digest,
            )
        except (
            StateError
        ) as e:  # enforcement goes on from memory; the next accept retries the write
            log.error("state.write_failed", error=str(e))
            return False
        return True

    def _apply(self, manifest: Manifest) -> tuple[ApplyReport | None, float]:
        """Apply, or None when the run could not start or finish as a whole (root unusable, inventory unsaved)."""
        started = time.perf_counter()
        try:
            report = self.applier.apply(manifest)
        except (HostError, StateError) as e:
            log.error("apply.failed", generation=manifest.generation, error=str(e))
            report = None
        except (
            Exception
        ) as e:  # a bug of ours on this manifest or host: this run failed, the next one retries
            log.error(
                "apply.crashed",
                generation=manifest.generation,
                error=f"{type(e).__name__}: {str(e)[:300]}",
            )
            report = None
        return report, time.perf_counter() - started

    def _check_health(self, manifest: Manifest) -> dict[str, bool]:
        from treadle_agent.health import run_checks

        return run_checks(manifest.health, self.host, self.config.root, self._health_threads)

    def _report(
        self,
        manifest: Manifest,
        report: ApplyReport | None,
        duration_s: float,
        checks: Mapping[str, bool],
    ) -> None:
        expires = manifest.metadata["expires"]
        results = () if report is None else (*report.results, *report.removed)
        # A resource removed from the manifest is no longer managed; it counts only while removing it fails.
        managed = (
            [*report.results, *(r for r in report.removed if r.status == "failed")]
            if report
            else []
        )
        # One update: a scrape never pairs this cycle's generation with the last cycle's health.
        self.metrics.report(
            manifest,
            parse_time(expires) if expires else None,
            self.trusted.highest_generation,
            ok=report is not None and report.ok,
            statuses=[(r.type, r.status) for r in managed],
            duration_s=duration_s,
            now=self.clock(),
            checks=checks,
        )
        counts: dict[str, Any] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
            if r.status != "in_sync":
                log.info("resource." + r.status, id=r.id, message=r.message)
        for name, up in checks.items():
            if not up:
                log.warning("health.down", check=name)
        log.info(
            "cycle.done",
            generation=manifest.generation,
            ok=report is not None and report.ok,
            healthy=all(checks.values()),
            duration_ms=round(duration_s * 1000, 1),
            restarted=list(report.restarted) if report else [],
            **counts,
        )

    async def run(self) -> None:
        """Cycle every ``interval_s`` plus jitter until :meth:`request_stop`."""
        self._stop = anyio.Event()
        while not self._stop.is_set():
            try:
                await self.cycle()
            except (ConfigError, anyio.get_cancelled_exc_class()):
                raise
            except Exception as e:  # no input may stop the daemon; the next cycle starts from the last good manifest
                log.error(
                    "cycle.crashed",
                    error=f"{type(e).__name__}: {str(e)[:300]}",
                    action="next cycle as usual",
                )
            with anyio.move_on_after(
                self.config.loop.interval_s + self.rng() * self.config.loop.jitter_s
            ):
                await self._stop.wait()
        await self.fetcher.aclose()

    def request_stop(self) -> None:
        """Stop after the current step: a fetch in flight is cancelled, an apply is finished."""
        if self._stop is not None:
            self._stop.set()
        if self._fetch_scope is not None:
            self._fetch_scope.cancel()
