"""Rendering as an HTTP service: a FastAPI server around any Renderer, and the matching client.

The wire format is the public GenEvolve render service's::

    POST /generate  {"prompt": str, "image_urls": [str, ...], "seed": int,
                     "true_cfg_scale": float?, "num_inference_steps": int?, "width": int?, "height": int?}
    -> 200 {"success": true, "image": "<base64 PNG>", "meta": {...}}
    -> 200 {"success": false, "error": "...", "code": "..."}      the renderer refused or failed
    -> 4xx {"success": false, "error": "..."}                      the payload is malformed or too big
    GET /health -> {"status": "ok", "renderer": name}

``image_urls`` entries may be data URLs, bare base64, or http(s) URLs (fetched by the server, size
capped; turn off with ``allow_url_fetch=False``). ``meta`` and ``code`` are our additions; clients of
the public service ignore them. The sampling fields reach renderers that offer ``arender_with``
(the diffusers ones); others ignore them and the response lists them in ``meta["ignored"]``.

Client choices (``HTTPRenderer``):

- Round-robin over ``urls``: each call starts at the next URL, and a failed attempt moves to the next
  one, so one dead replica costs a connection error, not a failed rollout. A URL that failed is put
  last for ``cooldown`` seconds, so later calls do not wait on it first.
- Retried (up to ``retries`` more attempts): timeouts, connection errors, 5xx, and unusable responses.
  Not retried: 4xx (the payload is wrong) and ``success: false`` (the renderer's own answer).
  Backoff (``backoff * 2**k``) only when an attempt goes back to a URL this call already tried.
- ``timeout`` bounds each attempt as a whole (a diffusion render takes tens of seconds).
- Error codes: ``timeout``, ``connection_error``, ``http_<status>``, ``bad_response``, ``server_error``
  (the message carries the server's code and text), ``bad_reference`` (a local file we cannot read).
- References are re-encoded as PNG with the long side capped at ``max_image_side``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import itertools
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genevolve.registry import require
from genevolve.render.base import Renderer, RenderError, RenderResult
from genevolve.types import Program, Reference

log = logging.getLogger(__name__)

SAMPLING_FIELDS = {"num_inference_steps": "steps", "true_cfg_scale": "cfg", "width": "width", "height": "height"}


class GenerateRequest(BaseModel):
    """The ``POST /generate`` body. Unknown fields are ignored (other clients send extras)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    image_urls: list[str] = Field(default_factory=list)
    seed: int = 0
    true_cfg_scale: float | None = Field(None, ge=0, le=50)
    num_inference_steps: int | None = Field(None, ge=1, le=500)
    width: int | None = Field(None, ge=16, le=4096)
    height: int | None = Field(None, ge=16, le=4096)


class PayloadError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- image encoding


def encode_png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def reference_data_url(path: str, max_side: int = 2048) -> str:
    """A local image as a PNG data URL, EXIF rotation applied, long side capped at ``max_side``."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.load()
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if "transparency" in im.info or im.mode == "P" else "RGB")
    return "data:image/png;base64," + encode_png_b64(im)


def decode_b64_image(text: str) -> bytes:
    """Bytes of a data URL or bare base64 string; ``PayloadError(400)`` when it is neither."""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise PayloadError(400, "image data URL must be base64 (data:image/...;base64,...)")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(400, f"image is neither a data URL, base64, nor an http(s) URL ({exc})") from exc


# ---------------------------------------------------------------- server


async def _fetch(url: str, max_bytes: int, timeout: float) -> bytes:
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise PayloadError(400, f"fetching {url}: HTTP {response.status_code}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadError(413, f"image at {url} is larger than {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise PayloadError(400, f"fetching {url}: {type(exc).__name__}: {exc}") from exc


async def _write_references(body: GenerateRequest, folder: Path, *, max_image_bytes: int,
                            allow_url_fetch: bool, fetch_timeout: float) -> list[Reference]:
    refs = []
    for i, item in enumerate(body.image_urls):
        if item.startswith(("http://", "https://")):
            if not allow_url_fetch:
                raise PayloadError(400, f"image_urls[{i}]: URL references are disabled on this server")
            data = await _fetch(item, max_image_bytes, fetch_timeout)
        else:
            data = decode_b64_image(item)
        if len(data) > max_image_bytes:
            raise PayloadError(413, f"image_urls[{i}] is {len(data)} bytes; the limit is {max_image_bytes}")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
                fmt = (im.format or "png").lower()
        except Exception as exc:  # Pillow raises many types for a non-image
            raise PayloadError(400, f"image_urls[{i}] is not a readable image ({exc})") from exc
        path = folder / f"ref_{i:02d}.{fmt}"
        path.write_bytes(data)
        refs.append(Reference(img_id=f"IMG_{i + 1:03d}", path=str(path)))
    return refs


def create_app(renderer: Renderer, *, max_body_bytes: int = 64 << 20, max_images: int = 8,
               max_image_bytes: int = 20 << 20, allow_url_fetch: bool = True, fetch_timeout: float = 30.0,
               max_concurrency: int = 4) -> Any:
    """A FastAPI app serving ``renderer`` at ``POST /generate`` and ``GET /health``.

    ``max_concurrency`` bounds renders in flight (more requests wait); diffusers renderers also
    serialise their own pipeline calls.
    """
    fastapi = require("fastapi", "serve")
    from fastapi.responses import JSONResponse

    app = fastapi.FastAPI(title="genevolve render service")
    gate = asyncio.Semaphore(max_concurrency)

    def fail(status: int, message: str, code: str | None = None) -> JSONResponse:
        content: dict[str, Any] = {"success": False, "error": message}
        if code:
            content["code"] = code
        return JSONResponse(content, status_code=status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "renderer": renderer.name}

    async def generate(request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return fail(413, f"request body over {max_body_bytes} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                return fail(413, f"request body over {max_body_bytes} bytes")
        try:
            body = GenerateRequest.model_validate_json(bytes(raw))
        except ValidationError as exc:
            kind = "invalid JSON" if any(e["type"] == "json_invalid" for e in exc.errors()) else "invalid payload"
            status = 400 if kind == "invalid JSON" else 422
            return fail(status, f"{kind}: {exc.errors(include_url=False, include_input=False)}")
        if len(body.image_urls) > max_images:
            return fail(413, f"{len(body.image_urls)} images; the limit is {max_images}")
        overrides = {SAMPLING_FIELDS[k]: v for k in SAMPLING_FIELDS if (v := getattr(body, k)) is not None}
        with tempfile.TemporaryDirectory(prefix="genevolve-render-") as tmp:
            try:
                refs = await _write_references(body, Path(tmp), max_image_bytes=max_image_bytes,
                                               allow_url_fetch=allow_url_fetch, fetch_timeout=fetch_timeout)
            except PayloadError as exc:
                return fail(exc.status, str(exc))
            program = Program(gen_prompt=body.prompt, references=refs)
            render_with = getattr(renderer, "arender_with", None)
            start = time.perf_counter()
            try:
                async with gate:
                    if render_with is not None:
                        result = await render_with(program, seed=body.seed, **overrides)
                    else:
                        result = await renderer.arender(program, seed=body.seed)
            except RenderError as exc:
                return fail(200, f"{exc.code}: {exc.message}", exc.code)
            except Exception as exc:  # a bug in the renderer: the server must keep serving
                log.exception("render failed")
                return fail(500, f"internal error: {type(exc).__name__}: {exc}", "internal")
        meta = {k: v for k, v in result.meta.items() if k != "manifest"}  # manifests can be large
        meta["seconds"] = round(time.perf_counter() - start, 3)
        if render_with is None and overrides:
            meta["ignored"] = sorted(k for k in SAMPLING_FIELDS if getattr(body, k) is not None)
        return JSONResponse({"success": True, "image": encode_png_b64(result.image),
                             "meta": _jsonable(meta)})

    # registered by hand: FastAPI needs the real Request class, and this module keeps fastapi optional
    generate.__annotations__ = {"request": fastapi.Request, "return": JSONResponse}
    app.post("/generate")(generate)
    return app


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in meta.items():
        if isinstance(value, str | int | float | bool | type(None) | list | dict):
            out[key] = value
        else:
            out[key] = repr(value)
    return out


def serve(renderer: Renderer, host: str = "127.0.0.1", port: int = 8100, **app_options: Any) -> None:
    """Run the service until interrupted (``genevolve serve render``)."""
    uvicorn = require("uvicorn", "serve")
    uvicorn.run(create_app(renderer, **app_options), host=host, port=port, log_level="info")


# ---------------------------------------------------------------- client


class HTTPRenderer(Renderer):
    """Renders through one or more ``/generate`` services (ours or the public GenEvolve one)."""

    name = "http"

    def __init__(self, urls: list[str] | str, *, timeout: float = 300.0, retries: int = 2, backoff: float = 1.0,
                 cooldown: float = 30.0, max_image_side: int = 2048, true_cfg_scale: float | None = None,
                 num_inference_steps: int | None = None, width: int | None = None, height: int | None = None):
        """
        Args:
            urls: service base URLs (``http://host:8100``) or full ``.../generate`` URLs.
            timeout: seconds per attempt, the whole response included.
            retries: further attempts after the first, each on the next URL.
            backoff: base seconds between attempts that return to an already tried URL (doubles).
            cooldown: seconds a failed URL is tried last by later calls.
            max_image_side: long-side cap of the uploaded references.
            true_cfg_scale, num_inference_steps, width, height: sent when set; else the server decides.
        """
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise ValueError("HTTPRenderer needs at least one URL")
        self.urls = [u if u.rstrip("/").endswith("/generate") else u.rstrip("/") + "/generate" for u in urls]
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.cooldown = cooldown
        self.max_image_side = max_image_side
        self.sampling = {k: v for k, v in dict(true_cfg_scale=true_cfg_scale, num_inference_steps=num_inference_steps,
                                               width=width, height=height).items() if v is not None}
        self._next = itertools.count()
        self._failed_until: dict[str, float] = {}

    def _order(self) -> list[str]:
        start = next(self._next) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        now = time.monotonic()
        return sorted(rotated, key=lambda u: self._failed_until.get(u, 0.0) > now)  # stable: healthy first

    def _payload(self, program: Program, seed: int) -> dict[str, Any]:
        images = []
        for i, ref in enumerate(program.references):
            if not ref.path:
                raise RenderError("bad_reference", f"reference {i} ({ref.img_id}) has no local file")
            try:
                images.append(reference_data_url(ref.path, self.max_image_side))
            except (OSError, ValueError) as exc:
                raise RenderError("bad_reference", f"reference {i} ({ref.img_id}, {ref.path}): {exc}") from exc
        return {"prompt": program.gen_prompt, "image_urls": images, "seed": seed, **self.sampling}

    async def arender(self, program: Program, *, seed: int = 0) -> RenderResult:
        if not program.gen_prompt.strip():
            raise RenderError("empty_prompt", "the program's gen_prompt is empty")
        payload = await asyncio.to_thread(self._payload, program, seed)
        order = self._order()
        last: RenderError | None = None
        for attempt in range(self.retries + 1):
            url = order[attempt % len(order)]
            if attempt >= len(order):
                await asyncio.sleep(self.backoff * 2 ** (attempt // len(order) - 1))
            try:
                result = await asyncio.wait_for(self._post(url, payload), self.timeout)
            except (TimeoutError, httpx.TimeoutException):
                last = RenderError("timeout", f"{url}: no response within {self.timeout} s")
            except httpx.TransportError as exc:
                last = RenderError("connection_error", f"{url}: {type(exc).__name__}: {exc}")
            except _Retryable as exc:
                last = exc.error
            else:
                self._failed_until.pop(url, None)
                result.meta.update(url=url, attempts=attempt + 1)
                return result
            self._failed_until[url] = time.monotonic() + self.cooldown
            log.warning("render attempt %d failed: %s", attempt + 1, last.message)
        assert last is not None
        raise last

    async def _post(self, url: str, payload: dict[str, Any]) -> RenderResult:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(url, json=payload)
        if response.status_code >= 500:
            raise _Retryable(RenderError(f"http_{response.status_code}", f"{url}: {_snippet(response)}"))
        if response.status_code != 200:  # the payload itself is wrong: resending cannot help
            raise RenderError(f"http_{response.status_code}", f"{url}: {_snippet(response)}")
        try:
            data = response.json()
        except ValueError:
            raise _Retryable(RenderError("bad_response", f"{url}: not JSON: {_snippet(response)}")) from None
        if not isinstance(data, dict) or "success" not in data:
            raise _Retryable(RenderError("bad_response", f"{url}: no 'success' field: {_snippet(response)}"))
        if not data["success"]:
            code = data.get("code") or "unknown"
            raise RenderError("server_error", f"{url}: [{code}] {data.get('error') or 'no error message'}")
        try:
            image = Image.open(io.BytesIO(decode_b64_image(str(data.get("image") or ""))))
            image.load()
        except (PayloadError, OSError, ValueError) as exc:
            raise _Retryable(RenderError("bad_response", f"{url}: unusable image: {exc}")) from exc
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        return RenderResult(image=image, meta={"server": meta})


class _Retryable(Exception):
    def __init__(self, error: RenderError):
        super().__init__(error.message)
        self.error = error


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    return f"HTTP {response.status_code}: " + " ".join(response.text[:limit].split())
