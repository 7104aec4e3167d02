"""The httpx fetcher against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket

import anyio
import pytest

from treadle_agent.config import FetchSettings
from treadle_agent.errors import FetchError
from treadle_agent.fetch import HttpFetcher


def _settings(*urls: str, **kw: object) -> FetchSettings:
    base = dict(
        manifest_urls=tuple(urls),
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
        deadline_s=2.0,
        max_manifest_bytes=4096,
        retries=0,
        backoff_base_s=1.0,
        backoff_max_s=60.0,
    )
    base.update(kw)
    return FetchSettings(**base)  # type: ignore[arg-type]


def _fetch(fetcher: HttpFetcher, etag: str | None = None):
    async def go():
        try:
            return await fetcher.fetch(etag)
        finally:
            await fetcher.aclose()

    return anyio.run(go)


def _dead_url() -> str:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/nodes/node-1/manifest"


def test_body_and_etag_are_returned(server):
    server.serve(b'{"a":1}')
    result = _fetch(HttpFetcher(_settings(server.url())))
    assert (
        result.data == b'{"a":1}' and result.etag == server.routes["/v1/nodes/node-1/manifest"].etag
    )


def test_matching_etag_gets_not_modified_rather_than_a_failure(server):
    server.serve(b'{"a":1}')
    etag = server.routes["/v1/nodes/node-1/manifest"].etag
    failures: list[str] = []
    result = _fetch(
        HttpFetcher(_settings(server.url()), on_failure=lambda e, url: failures.append(e.reason)),
        etag,
    )
    assert result.not_modified and result.etag == etag and failures == []
    assert server.requests[-1] == ("/v1/nodes/node-1/manifest", etag)


def test_first_url_failing_fails_over_to_the_second_in_order(server):
    server.serve(b"{}", path="/mirror")
    failures: list[tuple[str, str]] = []
    fetcher = HttpFetcher(
        _settings(server.url("/missing"), server.url("/mirror")),
        on_failure=lambda e, url: failures.append((e.reason, url)),
    )
    result = _fetch(fetcher)
    assert result.data == b"{}" and result.url == server.url("/mirror")
    assert failures == [("http_status", server.url("/missing"))]
    assert [p for p, _ in server.requests] == ["/missing", "/mirror"]


def test_unreachable_server_is_a_connect_failure():
    with pytest.raises(FetchError) as e:
        _fetch(HttpFetcher(_settings(_dead_url())))
    assert e.value.reason == "connect"


def test_retries_back_off_exponentially_with_jitter_and_cap(server):
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    fetcher = HttpFetcher(
        _settings(server.url("/missing"), retries=4, backoff_base_s=1.0, backoff_max_s=5.0),
        sleep=fake_sleep,
        rng=lambda: 0.5,
    )
    with pytest.raises(FetchError) as e:
        _fetch(fetcher)
    assert e.value.reason == "http_status"
    assert sleeps == [0.5, 1.0, 2.0, 2.5]  # half of 1, 2, 4, min(8, 5)
    assert len(server.requests) == 5


def test_declared_length_over_the_cap_is_refused(server):
    server.serve(b"x" * 5000)
    with pytest.raises(FetchError) as e:
        _fetch(HttpFetcher(_settings(server.url())))
    assert e.value.reason == "too_large"


def test_endless_undeclared_body_is_cut_off_at_the_cap(server):
    server.serve(b"", mode="flood")
    with pytest.raises(FetchError, match="cut off") as e:
        _fetch(HttpFetcher(_settings(server.url(), max_manifest_bytes=100_000)))
    assert e.value.reason == "too_large"


def test_unsized_body_within_the_cap_is_read_to_its_end(server):
    server.serve(b'{"b":2}', mode="unsized")
    assert _fetch(HttpFetcher(_settings(server.url()))).data == b'{"b":2}'


def test_trickling_server_is_cut_off_by_the_overall_deadline_despite_a_long_read_timeout(server):
    server.serve(b"", mode="trickle")
    with pytest.raises(FetchError) as e:
        _fetch(HttpFetcher(_settings(server.url(), deadline_s=0.3, read_timeout_s=30.0)))
    assert e.value.reason == "deadline"


def test_silent_server_is_a_read_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/m"
        with pytest.raises(FetchError) as e:
            _fetch(HttpFetcher(_settings(url, read_timeout_s=0.2, deadline_s=5.0)))
    assert e.value.reason == "timeout"


def test_node_placeholder_in_urls_is_replaced_by_the_node_name(tmp_path, keys, kit):
    path = kit.write_config(
        tmp_path, keys.trust_root, ["http://a.example/v1/nodes/{node}/manifest"]
    )
    assert kit.load_config(path).fetch.manifest_urls == (
        "http://a.example/v1/nodes/node-1/manifest",
    )
