"""HTTP plumbing shared by the web backends: a client per event loop, retries, error codes.

Every web backend must map the same failures to the same ``ToolError`` codes (policies, trajectories
and reports all see them) and none may leak an API key into a message, so both live here once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx

from genevolve.tools.base import ToolError

log = logging.getLogger(__name__)

#: statuses worth a second try: rate limits and transient server trouble
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: never wait longer than this on a server's Retry-After: a rollout has a budget too
MAX_RETRY_AFTER_S = 10.0


class LoopClient:
    """An ``httpx.AsyncClient`` per event loop.

    A client is bound to the loop it first ran on; callers that use ``asyncio.run`` more than once
    (the CLI, tests, notebooks) would otherwise reuse a client whose loop is closed.
    """

    def __init__(self, **client_kwargs: Any):
        self._kwargs = client_kwargs
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            # the old client's loop is gone; its sockets die with it, nothing to await
            self._client = httpx.AsyncClient(**self._kwargs)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove secrets from a message that may reach a log, an observation or a trajectory."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def retry_delay(attempt: int, backoff: float, response: httpx.Response | None = None) -> float:
    """Exponential backoff, or the server's numeric Retry-After when it gives one (capped)."""
    if response is not None:
        try:
            return min(max(float(response.headers.get("retry-after", "")), 0.0), MAX_RETRY_AFTER_S)
        except ValueError:
            pass
    return backoff * (2**attempt)


async def send_with_retry(
    send: Callable[[], Awaitable[httpx.Response]],
    *,
    what: str,
    timeout: float,
    retries: int,
    backoff: float,
    secrets: Iterable[str] = (),
) -> httpx.Response:
    """Run ``send`` until it gives a non-error response; raise ``ToolError`` otherwise.

    ``timeout`` bounds each attempt as a whole (httpx's own timeouts are per socket operation, so
    a server trickling bytes could otherwise hold a rollout for minutes).
    """
    secrets = tuple(secrets)
    for attempt in range(retries + 1):
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(timeout):
                response = await send()
        except (TimeoutError, httpx.TimeoutException):
            error = ToolError("timeout", f"{what} did not answer within {timeout:g} s")
        except httpx.TransportError as exc:
            error = ToolError("connection_error", redact(f"{what}: cannot connect ({exc})", secrets))
        else:
            if response.status_code < 400:
                return response
            error = ToolError(f"http_{response.status_code}", http_error_message(what, response, secrets))
            if response.status_code not in RETRY_STATUSES:
                raise error
        if attempt == retries:
            raise error
        delay = retry_delay(attempt, backoff, response)
        log.info("%s: %s, retry %d/%d in %.2f s", what, error.code, attempt + 1, retries, delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def http_error_message(what: str, response: httpx.Response, secrets: Iterable[str]) -> str:
    """A short message with the start of the body: APIs explain refusals there (quota, bad key)."""
    body = " ".join(response.text[:200].split())
    hint = f": {body}" if body else ""
    return redact(f"{what} answered HTTP {response.status_code}{hint}", secrets)


def parse_json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    """The response body as a JSON object, or ``ToolError('bad_response')``."""
    try:
        data = response.json()
    except ValueError as exc:
        raise ToolError("bad_response", f"{what} returned a body that is not JSON") from exc
    if not isinstance(data, dict):
        raise ToolError("bad_response", f"{what} returned JSON that is not an object")
    return data


def as_text(value: Any) -> str:
    """A field from a third-party JSON payload as a clean one-line string (they are not always strings)."""
    if value is None or isinstance(value, dict | list):
        return ""
    return " ".join(str(value).split())
