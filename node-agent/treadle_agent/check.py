"""``treadle-agent check``: what the next run would change on this node, changing nothing.

Like ``puppet agent --noop`` or ``ansible --check``. The manifest is fetched
and verified exactly as a run does (signatures, node, generation against the
highest one accepted, expiry); when the fetch is skipped (``--offline``),
fails, or the fetched manifest is refused, the check uses the last manifest
the agent accepted, as a run would keep enforcing it, and says so. Then every
resource is inspected (:meth:`~treadle_agent.apply.Applier.check`), and the
services a run would restart (notified by a file it would change) are listed.
Nothing is written: not the host, not the state dir, not the inventory.

Exit codes: 0 the node is in sync with the manifest; 1 something would
change, has drifted, cannot be inspected, or the fetched manifest was
refused; 2 usage or environment error (as for ``run`` and ``once``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from treadle_agent.apply import Applier, CheckReport
from treadle_agent.config import AgentConfig
from treadle_agent.contract.manifest import Manifest
from treadle_agent.contract.trustroot import TrustRoot
from treadle_agent.errors import FetchError
from treadle_agent.fetch import HttpFetcher
from treadle_agent.host_mode import host_for
from treadle_agent.state import StateStore, StoredState
from treadle_agent.verify import TrustedState, Verifier, VerifyError


@dataclass(frozen=True)
class CheckOutcome:
    """The manifest checked, where it came from, why a fetched one was not used, and the verdict."""

    manifest: Manifest | None
    source: str  # "fetched" or "stored" (the last manifest the agent accepted) or "none"
    note: str
    refused: bool
    report: CheckReport | None

    @property
    def ok(self) -> bool:
        return self.report is not None and self.report.in_sync and not self.refused


async def run_check(config: AgentConfig, *, offline: bool = False) -> CheckOutcome:
    """Fetch (unless ``offline``), verify and inspect; see the module docstring.

    Raises:
        ConfigError: the trust root is unusable.
        StateError: the state dir cannot be read.
        HostError: the managed root cannot be opened.
    """
    trust = TrustRoot.load(config.trust_root)
    stored = StateStore(config.state_dir).load() if config.state_dir.is_dir() else StoredState()
    trusted = TrustedState()
    trusted.highest_generation = stored.generation
    verifier = Verifier(trust, config.node, trusted)
    manifest, source, note, refused = None, "none", "", False
    if offline:
        note = "not fetched (--offline)"
    else:
        manifest, note, refused = await _fetch_and_verify(config, verifier)
        source = "fetched" if manifest is not None else source
    if manifest is None and stored.envelope is not None:
        verified = stored.envelope_intact() and stored.trust_root_sha256 == trust.digest
        try:
            manifest, source = verifier.restore(stored.envelope, verified=verified), "stored"
        except VerifyError as e:
            note += f"; the stored manifest no longer verifies ({e.reason}: {e})"
    if manifest is None:
        return CheckOutcome(None, "none", note or "no manifest", refused, None)
    applier = Applier(
        config.root,
        config.state_dir,
        host_for(config.host, config.state_dir),
        config.drift_policy,
        read_only=True,
    )
    return CheckOutcome(manifest, source, note, refused, applier.check(manifest))


async def _fetch_and_verify(
    config: AgentConfig, verifier: Verifier
) -> tuple[Manifest | None, str, bool]:
    """(the fetched manifest if it verifies, why not otherwise, whether it was refused)."""
    fetcher = HttpFetcher(config.fetch)
    try:
        fetched = await fetcher.fetch(None)
    except FetchError as e:
        return None, f"fetch failed ({e.reason}: {e})", False
    finally:
        await fetcher.aclose()
    if fetched.data is None:
        return None, "the server sent no manifest", False
    try:
        return verifier.accept(fetched.data), f"from {fetched.url}", False
    except VerifyError as e:
        return None, f"the fetched manifest is refused ({e.reason}: {e})", True


def format_text(outcome: CheckOutcome) -> str:
    """One line per resource that is not in sync (with its difference, indented), then a verdict."""
    lines = []
    if outcome.manifest is None:
        return f"no manifest to check: {outcome.note}\n"
    m = outcome.manifest
    origin = {"fetched": "fetched", "stored": "the last accepted manifest"}[outcome.source]
    about = f"{origin}; {outcome.note}" if outcome.note else origin
    lines.append(f"node {m.metadata['node']}, generation {m.generation} ({about})")
    report = outcome.report
    assert report is not None
    for r in (*report.results, *report.removed):
        if r.status == "in_sync":
            continue
        lines.append(f"{r.status:<13} {r.id}")
        lines += [f"    {line}" for line in r.message.splitlines() if line]
    counts: dict[str, int] = {}
    for r in (*report.results, *report.removed):
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(counts.items()))
    verdict = "in sync" if report.in_sync else "NOT in sync"
    if outcome.refused:
        verdict += (
            " (and the fetched manifest was refused: a run keeps enforcing the last accepted one)"
        )
    lines.append(f"{verdict}: {summary or 'no resources'}")
    return "\n".join(lines) + "\n"


def as_dict(outcome: CheckOutcome) -> dict[str, Any]:
    """The outcome as JSON values: stable keys, resources in apply order."""
    m, report = outcome.manifest, outcome.report
    return {
        "node": m.metadata["node"] if m else None,
        "generation": m.generation if m else None,
        "source": outcome.source,
        "note": outcome.note,
        "refused": outcome.refused,
        "in_sync": outcome.ok,
        "resources": [
            {"id": r.id, "type": r.type, "status": r.status, "diff": r.message}
            for r in ((*report.results, *report.removed) if report else ())
        ],
    }


def format_json(outcome: CheckOutcome) -> str:
    return json.dumps(as_dict(outcome), indent=2, sort_keys=True) + "\n"
