"""The agent's acceptance of a fetched manifest: DESIGN.md's ordered checks, in one method.

:meth:`Verifier.accept` reads like the list in DESIGN.md ("Node manifest and
envelope"); each step raises :class:`VerifyError` with the reason that becomes
the ``reason`` label of ``treadle_agent_verify_failures_total``. A refusal
changes nothing: the trusted state is updated only after the last check.

The first three checks need no state (envelope, signatures, schema): they
are an :class:`Authenticator`, run in-process by default or, in the daemon,
in a short-lived child process (:class:`IsolatedAuthenticator`). The child
parses the untrusted bytes, so a parser fault cannot take the daemon down, and
the signature and schema stacks (about 19 MB) never stay resident in a daemon
that idles for hours between manifests. The stateful checks (node,
generation, expiry) always run here, over the trusted state.

The clock is injected so expiry is tested with a fake one.

    python -m treadle_agent.verify [--check-keys]   # the child; see IsolatedAuthenticator
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from treadle_agent.contract.envelope import check_signatures, parse_envelope
from treadle_agent.contract.manifest import Manifest, ManifestFormatError, parse_json, parse_time
from treadle_agent.contract.trustroot import TrustRoot
from treadle_agent.errors import ConfigError, VerifyError
from treadle_agent.trust import TrustedState

#: Every reason a manifest can be refused for, in check order (metric label values); ``internal``: the checks
#: themselves failed on this input (a bug of ours, still a counted refusal, never a crash).
REASONS = (
    "envelope",
    "payload_type",
    "signature",
    "threshold",
    "schema",
    "node",
    "rollback",
    "equivocation",
    "expired",
    "internal",
)


class Authenticator(ABC):
    """The stateless checks: the envelope parses and is ours, is signed to threshold, and holds a valid manifest."""

    @abstractmethod
    def __call__(self, data: bytes) -> Manifest:
        """The manifest in envelope ``data``.

        Raises:
            VerifyError: envelope, payload_type, signature, threshold or schema.
        """

    @abstractmethod
    def check_keys(self) -> None:
        """Load every trusted key now. Raises ConfigError when one is unusable."""


class InProcessAuthenticator(Authenticator):
    def __init__(self, trust: TrustRoot) -> None:
        self.trust = trust

    def __call__(self, data: bytes) -> Manifest:
        envelope = parse_envelope(data)  # envelope, payload_type
        payload = check_signatures(envelope, self.trust)  # signature, threshold
        return parse_manifest(payload)  # schema

    def check_keys(self) -> None:
        self.trust.check_keys()


class Verifier:
    """Decides whether a fetched envelope becomes the manifest this node enforces."""

    def __init__(
        self,
        trust: TrustRoot,
        node: str,
        state: TrustedState,
        clock: Callable[[], float] = time.time,
        authenticate: Authenticator | None = None,
    ) -> None:
        self.trust = trust
        self.node = node
        self.state = state
        self.clock = clock
        self.authenticate = authenticate or InProcessAuthenticator(trust)

    def accept(self, data: bytes) -> Manifest:
        """Accept envelope ``data``, or refuse it and leave the trusted state as it was.

        Raises:
            VerifyError: the first check that fails, see :data:`REASONS`.
        """
        if self.state.is_current(data):  # verified when accepted; only the clock has moved since
            return self.check_current()
        manifest = self.authenticate(data)  # envelope, payload_type, signature, threshold, schema
        self._check_node(manifest)  # node
        self.state.check_generation(manifest)  # rollback, equivocation
        self._check_expiry(manifest)  # expired
        self.state.accept(data, manifest)
        return manifest

    def check_current(self) -> Manifest:
        """The accepted manifest, re-served as is (a 304, or the same bytes): only expiry can have changed.

        Raises:
            VerifyError: ``expired`` (the source is frozen on an old manifest),
                or ``envelope`` when nothing was ever accepted.
        """
        if self.state.manifest is None:
            raise VerifyError(
                "envelope", "the server says the manifest is unchanged, but none was accepted yet"
            )
        self._check_expiry(self.state.manifest)
        return self.state.manifest

    def restore(self, data: bytes, *, verified: bool) -> Manifest:
        """Re-admit the envelope stored in the state dir at start-up.

        ``verified`` says the stored bytes are those accepted under this very
        trust root (digests match), so the signatures need no second check.
        Generation and expiry are not checked: this is the last good manifest,
        which the agent keeps enforcing until a newer one is accepted.

        Raises:
            VerifyError: the stored envelope no longer passes (the trust root changed).
        """
        if verified:
            manifest = parse_manifest(parse_envelope(data).payload, validate=False)
        else:
            manifest = self.authenticate(data)
        self._check_node(manifest)
        self.state.accept(data, manifest)
        return manifest

    def _check_node(self, manifest: Manifest) -> None:
        if manifest.node != self.node:
            raise VerifyError(
                "node", f"the manifest is for node {manifest.node!r}, this is {self.node!r}"
            )

    def _check_expiry(self, manifest: Manifest) -> None:
        expires = manifest.metadata["expires"]
        if expires is None:  # an unsigned render; a signed manifest always expires
            raise VerifyError("expired", "the manifest has no expiry (expires is null)")
        if parse_time(expires) <= self.clock():
            raise VerifyError("expired", f"the manifest expired at {expires}")


def parse_manifest(payload: bytes, *, validate: bool = True) -> Manifest:
    """The manifest in ``payload``: strict JSON that matches schemas/manifest.json.

    Raises:
        VerifyError: ``schema``, naming the first violation and where it is.
    """
    try:
        doc = parse_json(payload)
    except ManifestFormatError as e:
        raise VerifyError("schema", f"the payload is not strict JSON: {e}") from e
    if validate:
        import treadle_schemas

        errors = treadle_schemas.errors("manifest.json", doc)
        if errors:
            where, message = errors[0]
            path = "/".join(str(p) for p in where) or "(top level)"
            raise VerifyError(
                "schema", f"the manifest breaks schemas/manifest.json at {path}: {message}"
            )
        for field in (
            "issued",
            "expires",
        ):  # the schema's pattern admits a 13th month; the expiry check needs a real time
            value = doc["metadata"][field]
            if value is None:
                continue
            try:
                parse_time(value)
            except ValueError as e:
                raise VerifyError(
                    "schema", f"metadata.{field} {value!r} is not a valid UTC time"
                ) from e
    elif not isinstance(doc, dict):
        raise VerifyError("schema", "the stored manifest is not an object")
    return Manifest(raw=payload, doc=doc)


class IsolatedAuthenticator(Authenticator):
    """Runs the stateless checks in a child process: ``python -m treadle_agent.verify``.

    The child gets the trust root's bytes and the envelope on stdin (the
    trust root as the agent loaded it, never re-read from disk), and answers:
    exit 0 with the verified payload on stdout; exit 1 with
    ``{"reason", "message"}`` (a refusal); exit 2 with a message (an unusable
    trust root). A child that crashes or overruns ``timeout_s`` on an envelope
    refuses it as ``envelope``: it is the input that made the parser fail.
    """

    def __init__(self, trust_root_bytes: bytes, timeout_s: float = 120.0) -> None:
        self.trust_root_bytes = trust_root_bytes
        self.timeout_s = timeout_s

    def _run(self, args: Sequence[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
        stdin = b"%d\n%b%b" % (len(self.trust_root_bytes), self.trust_root_bytes, data)
        try:
            return subprocess.run(
                [sys.executable, "-m", "treadle_agent.verify", *args],
                input=stdin,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise VerifyError(
                "envelope", f"the verifier process overran {self.timeout_s:g} s on this envelope"
            ) from e
        except OSError as e:
            raise ConfigError(
                f"cannot start the verifier process {sys.executable}: {e.strerror}"
            ) from e

    def __call__(self, data: bytes) -> Manifest:
        p = self._run([], data)
        if p.returncode == 0:
            return parse_manifest(p.stdout, validate=False)  # the child validated these very bytes
        if p.returncode == 1:
            answer = json.loads(p.stdout)
            raise VerifyError(answer["reason"], answer["message"])
        if p.returncode == 2:
            raise ConfigError(p.stderr.decode(errors="replace").strip())
        detail = p.stderr.decode(errors="replace").strip()[-300:]
        raise VerifyError(
            "envelope",
            f"the verifier process failed on this envelope (exit {p.returncode}): {detail}",
        )

    def check_keys(self) -> None:
        p = self._run(["--check-keys"], b"")
        if p.returncode != 0:
            raise ConfigError(
                p.stderr.decode(errors="replace").strip()
                or f"the verifier process exited {p.returncode}"
            )


def _child(argv: Sequence[str]) -> int:
    """The child side of :class:`IsolatedAuthenticator`.

    Only the trust root can make it exit 2 (the agent's environment); whatever
    the envelope provokes, even an exception of ours, is a refusal (exit 1).
    """
    stdin = sys.stdin.buffer.read()
    size, _, rest = stdin.partition(b"\n")
    try:
        n = int(size)
        trust = TrustRoot.from_bytes(rest[:n], "<trust root from the agent>")
        if "--check-keys" in argv:
            trust.check_keys()
            return 0
    except (ConfigError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    try:
        manifest = InProcessAuthenticator(trust)(rest[n:])
    except VerifyError as e:
        sys.stdout.write(json.dumps({"reason": e.reason, "message": str(e)}))
        return 1
    except ConfigError as e:  # a key that fails only now: the trust root, not the envelope
        print(e, file=sys.stderr)
        return 2
    except Exception as e:  # a bug of ours on this envelope: still a counted refusal
        sys.stdout.write(
            json.dumps({"reason": "internal", "message": f"{type(e).__name__}: {str(e)[:300]}"})
        )
        return 1
    sys.stdout.buffer.write(manifest.raw)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
