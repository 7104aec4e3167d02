"""A client of the controller's HTTP API (:mod:`.api`), for the commands that talk to a running controller.

Every failure is a :class:`~treadle.errors.UsageError` naming what to fix
(the URL, the token file) or the controller's own error message, so a
command prints one line and exits 2.
"""

from __future__ import annotations

from typing import Any

from treadle.errors import UsageError

DEFAULT_URL = "http://127.0.0.1:8080"


def api_call(
    method: str, url: str, path: str, body: Any = None, token_file: str | None = None
) -> dict[str, Any]:
    """One request to the controller's API, with the admin token of ``token_file`` when given.

    Raises:
        UsageError: the token file is unreadable, or the controller cannot be reached or answered with an error.
    """
    import httpx

    headers = {}
    if token_file:
        try:
            headers["authorization"] = "Bearer " + open(token_file, encoding="utf-8").read().strip()
        except OSError as e:
            raise UsageError(
                f"{token_file}: cannot read the admin token: {e.strerror} (--token-file)"
            ) from e
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=10
        )
    except httpx.HTTPError as e:
        raise UsageError(
            f"cannot reach the controller at {url}: {e}; is `treadle controller run` running? (--url)"
        ) from e
    try:
        doc = response.json()
    except ValueError:
        doc = {}
    if response.status_code >= 400:
        raise UsageError(
            f"{url}{path}: HTTP {response.status_code}: {doc.get('error', response.text.strip())}"
        )
    return doc
