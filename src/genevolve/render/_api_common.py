"""What the hosted image-API renderers (Gemini, OpenAI images) share: keys, references, retries, decoding.

Why the choices below:

- Both APIs must map the same failures to the same ``RenderError`` codes, because reports count
  failures by code: ``no_api_key``, ``bad_reference``, ``timeout``, ``connection_error``,
  ``rate_limited`` (429 after the retries), ``http_<status>``, ``bad_response`` (not JSON, no image, an
  image Pillow cannot decode) and ``refused`` (the provider's safety system declined).
- Retried: timeouts, connection errors, 408, 429 and 5xx, with exponential backoff (equal jitter) or
  the server's ``Retry-After`` when longer, both capped at ``backoff_max``. Other 4xx are not retried:
  resending the same request cannot help.
- ``timeout`` bounds each attempt as a whole, not each socket read: an image API that trickles a
  10 MB body could otherwise hold a rollout for minutes.
- The key is read from the environment at render time (so configs build without it, and rotating
  it needs no rebuild) and removed from every message that could reach a log or a report.
- References are always re-encoded (PNG when they carry transparency, else JPEG q92) and capped at
  ``max_image_side`` on the long side: it bounds the upload, gives the API a format it accepts, and
  strips EXIF/GPS metadata from users' own photos before they leave the machine.
- One ``httpx.AsyncClient`` per render call: a call takes seconds to minutes, so connection reuse
  saves nothing worth the care a client bound to one event loop needs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import inspect
import io
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from PIL import Image, ImageOps

from genevolve.ratelimit import RateLimiter, shared_limiter
from genevolve.registry import ConfigError
from genevolve.render.base import Renderer, RenderError
from genevolve.types import Program, Reference

log = logging.getLogger(__name__)

DEFAULT_MAX_SIDE = 2048
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: a hook that reads a provider-specific refusal out of an error response; returns the reason or None
RefusalHook = Callable[[httpx.Response], str | None]
#: a hook that reads a provider-specific retry delay (seconds) out of an error response
RetryHint = Callable[[httpx.Response], float | None]


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def body_snippet(response: httpx.Response, limit: int = 300) -> str:
    """The provider's own explanation: ``error.message`` when the body is the usual JSON error, else raw text."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and data["error"].get("message"):
        return " ".join(str(data["error"]["message"]).split())[:limit]
    return " ".join(response.text[:limit].split())


def retry_after_s(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


# -- images ------------------------------------------------------------------------------------


def encode_reference(ref: Reference, max_side: int) -> tuple[bytes, str]:
    """``(bytes, mime)`` of a reference's local file, upright, capped and re-encoded; ``bad_reference`` else."""
    if not ref.path:
        raise RenderError("bad_reference", f"reference {ref.img_id} has no local file to upload")
    try:
        with Image.open(ref.path) as src:
            img = ImageOps.exif_transpose(src)
            if max(img.size) > max_side:
                img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            buf = io.BytesIO()
            if has_alpha:
                img.convert("RGBA").save(buf, format="PNG")
                return buf.getvalue(), "image/png"
            img.convert("RGB").save(buf, format="JPEG", quality=92)
            return buf.getvalue(), "image/jpeg"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RenderError("bad_reference", f"reference {ref.img_id} ({ref.path}) is not a readable image: {exc}") from exc


def decode_image(data: bytes, what: str) -> Image.Image:
    """A fully loaded RGB/RGBA image from the API's bytes; ``bad_response`` when Pillow cannot read them."""
    try:
        with Image.open(io.BytesIO(data)) as src:
            src.load()
            return src.copy() if src.mode in ("RGB", "RGBA") else src.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RenderError("bad_response", f"{what} returned image data that is not a readable image ({exc})") from exc


def decode_b64_image(text: Any, what: str) -> Image.Image:
    if not isinstance(text, str) or not text:
        raise RenderError("bad_response", f"{what} returned an image field that is not base64 text")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RenderError("bad_response", f"{what} returned image data that is not valid base64") from exc
    return decode_image(data, what)


# -- the shared renderer -------------------------------------------------------------------------


class HttpImageRenderer(Renderer):
    """Options and plumbing common to the hosted image-API renderers (see the module docstring).

    Args:
        model: the provider's model id.
        base_url: API root; point it at a proxy, a gateway or a test server.
        api_key_env: environment variable(s) holding the key; the first one set is used. Never logged.
        timeout: seconds per attempt (image APIs often take 10-60 s).
        max_retries: retries after the first attempt on transient failures (0 = one attempt).
        backoff: seconds; the n-th retry waits about ``backoff * 2**(n-1)`` (jittered).
        backoff_max: cap, in seconds, on any wait, including the server's Retry-After.
        max_image_side: long-side cap, in pixels, for uploaded references.
        max_concurrency: requests in flight at once (``None`` = unbounded).
        requests_per_minute: sustained request rate (``None`` = unlimited); image quotas are often low.
        limit_group: renderers (and judges) naming the same group share one limiter (one quota).
        name: label for render records; default ``<kind>:<model>``.
    """

    kind = "api"

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str | Sequence[str],
        *,
        timeout: float = 180.0,
        max_retries: int = 3,
        backoff: float = 2.0,
        backoff_max: float = 60.0,
        max_image_side: int = DEFAULT_MAX_SIDE,
        max_concurrency: int | None = 4,
        requests_per_minute: float | None = None,
        limit_group: str | None = None,
        name: str | None = None,
    ) -> None:
        if timeout <= 0 or max_retries < 0 or backoff < 0 or backoff_max < 0:
            raise ConfigError(f"{self.kind} renderer: timeout must be > 0, max_retries, backoff and "
                              f"backoff_max >= 0 (got {timeout}, {max_retries}, {backoff}, {backoff_max})")
        if max_image_side < 64:
            raise ConfigError(f"{self.kind} renderer: max_image_side={max_image_side}; expected >= 64")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_envs = (api_key_env,) if isinstance(api_key_env, str) else tuple(api_key_env)
        if not self.api_key_envs:
            raise ConfigError(f"{self.kind} renderer: api_key_env names no environment variable")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_image_side = max_image_side
        self.limiter = (shared_limiter(limit_group, requests_per_minute, max_concurrency) if limit_group
                        else RateLimiter(requests_per_minute, max_concurrency))
        self.name = name or f"{self.kind}:{model}"

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Subclasses forward ``**options`` here; a misspelt option is the user's error, said as such."""
        valid = [p for p in inspect.signature(HttpImageRenderer.__init__).parameters
                 if p not in ("self", "model", "base_url", "api_key_env")]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ConfigError(f"{cls.kind} renderer: unknown option(s) {', '.join(unknown)}; "
                              f"valid shared options: {', '.join(valid)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def what(self) -> str:
        return f"{self.name} at {self.base_url}"

    def api_key(self) -> str:
        for env in self.api_key_envs:
            key = os.environ.get(env, "").strip()
            if key:
                return key
        names = " or ".join(self.api_key_envs)
        raise RenderError("no_api_key", f"{self.name}: no API key; set the environment variable {names}")

    async def encode_references(self, program: Program) -> list[tuple[bytes, str]]:
        """Every reference, in program order, encoded off the event loop (Pillow on a 4K photo is slow)."""
        return await asyncio.to_thread(
            lambda: [encode_reference(ref, self.max_image_side) for ref in program.references])

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)

    async def send(
        self,
        send: Callable[[], Awaitable[httpx.Response]],
        *,
        secrets: Sequence[str],
        refusal: RefusalHook | None = None,
        retry_hint: RetryHint | None = None,
    ) -> tuple[httpx.Response, int]:
        """``(response, attempts)`` for the first 2xx answer; ``RenderError`` otherwise."""
        for attempt in range(1, self.max_retries + 2):
            response: httpx.Response | None = None
            try:
                async with self.limiter, asyncio.timeout(self.timeout):
                    response = await send()
            except (TimeoutError, httpx.TimeoutException):
                error = RenderError("timeout", f"{self.what} did not answer within {self.timeout:g} s")
            except httpx.TransportError as exc:
                error = RenderError("connection_error", redact(f"{self.what}: cannot connect ({exc})", secrets))
            else:
                status = response.status_code
                if status < 300:
                    return response, attempt
                detail = redact(body_snippet(response), secrets)
                reason = refusal(response) if refusal is not None else None
                if reason is not None:
                    raise RenderError("refused", redact(f"{self.what} refused the request ({reason}): {detail}",
                                                        secrets))
                code = "rate_limited" if status == 429 else f"http_{status}"
                error = RenderError(code, f"{self.what} answered HTTP {status}: {detail}")
                if status not in RETRY_STATUSES:
                    raise error
            if attempt > self.max_retries:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise RenderError(error.code, error.message + tries)
            delay = self._delay(attempt, response, retry_hint)
            log.info("%s: %s, retry %d/%d in %.2f s", self.name, error.code, attempt, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, response: httpx.Response | None, retry_hint: RetryHint | None) -> float:
        """Equal-jitter exponential backoff, raised to the server's hint when it asks for longer."""
        delay = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if response is not None:
            hint = retry_after_s(response)
            if hint is None and retry_hint is not None:
                hint = retry_hint(response)
            if hint is not None:
                delay = max(delay, min(hint, self.backoff_max))
        return delay

    def base_meta(self, seed: int | None, started: float, attempts: int, n_refs: int) -> dict[str, Any]:
        return {"renderer": self.name, "model": self.model, "seed": seed, "n_references": n_refs,
                "attempts": attempts, "latency_s": round(time.monotonic() - started, 3)}


def json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    """The body as a JSON object, or ``bad_response``."""
    try:
        data = response.json()
    except ValueError as exc:
        raise RenderError("bad_response", f"{what} returned a body that is not JSON") from exc
    if not isinstance(data, dict):
        raise RenderError("bad_response", f"{what} returned JSON that is not an object")
    return data
