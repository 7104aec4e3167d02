"""Fetching the node's envelope: one small abstract class and its httpx implementation.

Nothing fetched is trusted (verify.py decides that), so this layer only has
to be robust against a slow, broken or hostile server and mirror:

* connect and read timeouts on every socket operation, and a deadline on the
  whole request (headers and body) enforced by cancellation, so a server that
  trickles bytes forever is cut off;
* a byte cap enforced while streaming: a declared Content-Length above the cap
  is refused before reading the body, and an undeclared one is cut off as soon
  as it passes the cap (decoded bytes count, so a compression bomb is caught);
* ``If-None-Match`` with the ETag of the accepted envelope: a 304 means "still
  the same envelope", not a failure. An ETag is stored and sent back on every
  later request, so one hostile response must not poison them all: only a
  valid entity tag (RFC 9110: ``"..."`` or ``W/"..."`` of visible ASCII, at
  most :data:`MAX_ETAG_CHARS`) is kept (:func:`valid_etag`); any other is
  dropped as if the server had sent none;
* failover across the configured URLs in order, then retry rounds with
  exponential backoff and full jitter.

Redirects are not followed: the URL list is what the node is configured to
use, and it keeps TLS set up only when an https URL is listed.

Every failed request is reported to ``on_failure`` (the agent counts it); the
fetch as a whole raises the last :class:`FetchError` once every round failed.
Reasons: connect, timeout, http_status, too_large, deadline, other. Any other
exception a response provokes (in httpx, h11 or here) is ``other`` too: no
response can crash the agent.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import anyio

from treadle_agent.config import FetchSettings
from treadle_agent.errors import FetchError

if TYPE_CHECKING:
    import httpx

#: Every fetch failure reason (metric label values).
REASONS = ("connect", "timeout", "http_status", "too_large", "deadline", "other")

#: The longest ETag kept (characters); common servers refuse request headers over 8 KB in all.
MAX_ETAG_CHARS = 256
_ETAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e]*"')
_CONTENT_LENGTH = re.compile(r"[0-9]{1,20}")


def valid_etag(value: object) -> str | None:
    """``value`` if it is an entity tag the agent may store and send back, else None (RFC 9110 section 8.8.3)."""
    if isinstance(value, str) and len(value) <= MAX_ETAG_CHARS and _ETAG.fullmatch(value):
        return value
    return None


@dataclass(frozen=True, slots=True)
class FetchResult:
    url: str
    data: bytes | None  # None: 304 Not Modified, the envelope of ``etag`` is still current
    etag: str | None

    @property
    def not_modified(self) -> bool:
        return self.data is None


class Fetcher(ABC):
    """Where envelopes come from. Implementations raise only :class:`FetchError`."""

    @abstractmethod
    async def fetch(self, etag: str | None) -> FetchResult:
        """The node's current envelope, or "not modified" when it still has ``etag``.

        Raises:
            FetchError: no source answered usefully.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional: most fetchers hold no connection
        """Release connections."""


def _httpx() -> ModuleType:
    """httpx, without its command-line front end.

    ``import httpx`` also imports its CLI, which pulls in click, pygments and
    rich when they are installed (they are, with the controller extra): half
    of httpx's import time and memory, for a tool the agent never runs. A
    ``None`` in sys.modules makes that optional import fail the way httpx
    already handles (it then defines a stub ``main``).
    """
    import sys

    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    import httpx

    return httpx


class HttpFetcher(Fetcher):
    """Fetches over HTTP(S) with httpx; see the module docstring for the rules."""

    def __init__(
        self,
        settings: FetchSettings,
        *,
        on_failure: Callable[[FetchError, str], None] = lambda error, url: None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.on_failure = on_failure
        self.sleep = sleep
        self.rng = rng
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        """The client, made on first use: httpx is imported here, not at start-up."""
        if self._client is None:
            httpx = _httpx()
            s = self.settings
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    connect=s.connect_timeout_s,
                    read=s.read_timeout_s,
                    write=s.read_timeout_s,
                    pool=s.connect_timeout_s,
                ),
                verify=any(u.startswith("https:") for u in s.manifest_urls),
                follow_redirects=False,
                headers={"Accept": "application/json", "User-Agent": "treadle-agent"},
            )
        return self._client

    async def fetch(self, etag: str | None) -> FetchResult:
        last: FetchError | None = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await self.sleep(self.backoff_s(attempt))
            for url in self.settings.manifest_urls:
                try:
                    return await self._get(url, etag)
                except FetchError as e:
                    self.on_failure(e, url)
                    last = e
        assert last is not None  # manifest_urls is never empty (schema: minItems 1)
        raise last

    def backoff_s(self, attempt: int) -> float:
        """Delay before retry round ``attempt`` (1-based): full jitter over an exponential ceiling."""
        ceiling = min(
            self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1)
        )
        return ceiling * self.rng()

    async def _get(self, url: str, etag: str | None) -> FetchResult:
        httpx = _httpx()
        etag = valid_etag(etag)
        headers = {"If-None-Match": etag} if etag else {}
        try:
            with anyio.fail_after(self.settings.deadline_s):
                async with self._http().stream("GET", url, headers=headers) as response:
                    return await self._read(url, etag, response)
        except TimeoutError as e:
            raise FetchError(
                "deadline", f"{url}: no complete answer within {self.settings.deadline_s:g} s"
            ) from e
        except httpx.ConnectTimeout as e:
            raise FetchError("timeout", f"{url}: connect timed out") from e
        except httpx.ConnectError as e:
            raise FetchError("connect", f"{url}: cannot connect: {e}") from e
        except httpx.TimeoutException as e:
            raise FetchError("timeout", f"{url}: {type(e).__name__}") from e
        except (httpx.HTTPError, OSError) as e:
            raise FetchError("other", f"{url}: {type(e).__name__}: {e}") from e
        except FetchError:
            raise
        except Exception as e:  # httpx and h11 raise more than HTTPError on hostile answers (STYLE.md: no input crashes us)
            raise FetchError("other", f"{url}: {type(e).__name__}: {str(e)[:300]}") from e

    async def _read(self, url: str, etag: str | None, response: httpx.Response) -> FetchResult:
        if response.status_code == 304 and etag:
            return FetchResult(url, None, etag)
        if response.status_code != 200:
            raise FetchError("http_status", f"{url}: HTTP {response.status_code}")
        cap = self.settings.max_manifest_bytes
        declared = response.headers.get("content-length", "")
        if _CONTENT_LENGTH.fullmatch(declared) and int(declared) > cap:
            raise FetchError(
                "too_large", f"{url}: Content-Length {declared} is above the cap of {cap} bytes"
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > cap:
                raise FetchError(
                    "too_large", f"{url}: the response passed the cap of {cap} bytes; cut off"
                )
        return FetchResult(url, bytes(body), valid_etag(response.headers.get("etag")))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
