"""Gemini native image generation ("Nano Banana") over the REST ``generateContent`` API.

Request (``POST {base_url}/models/{model}:generateContent``, key in the ``x-goog-api-key`` header)::

    {"contents": [{"role": "user", "parts": [{"text": gen_prompt},
                                             {"inline_data": {"mime_type": "image/jpeg", "data": b64}}, ...]}],
     "generationConfig": {"responseModalities": ["IMAGE"], "seed": 0,
                          "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}}

Response: ``candidates[0].content.parts[*]`` holds ``text`` and ``inlineData{mimeType, data}`` parts
(camelCase); a blocked prompt has ``promptFeedback.blockReason`` and no candidates; a blocked or
failed image has a ``finishReason`` (``SAFETY``, ``IMAGE_SAFETY``, ``PROHIBITED_CONTENT``, ...) and no
image part. Models: ``gemini-2.5-flash-image`` (Nano Banana), ``gemini-3-pro-image-preview`` (Nano
Banana Pro) and their successors; any model id is passed through unchecked, since names change.

Why the choices below:

- The prompt comes first, then the references in program order: programs say "the first reference
  image", and the order of the image parts is the only thing that ties those words to an image.
- Parts marked ``thought: true`` are the thinking models' interim drafts: the last image that is not
  a thought is the answer.
- Any answer without an image is ``refused``, whatever the ``finishReason``: in practice the model
  declines in text ("I can't create images of ...") as often as through a safety flag, and the
  reason and text are kept in the message for the failure report.
- The seed goes in ``generationConfig.seed``; the API accepts it, but image output is not
  guaranteed to be reproducible from it.
- ``aspect_ratio`` unset sends no ``imageConfig``: with references the model then follows the first
  reference's shape, as the paper's renderer does; without references it draws a square.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Sequence
from typing import Any

import httpx

from genevolve.registry import ConfigError
from genevolve.render._api_common import HttpImageRenderer, decode_b64_image, json_object
from genevolve.render.base import RenderError, RenderResult
from genevolve.types import Program

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
_RATIO = re.compile(r"^\d{1,2}:\d{1,2}$")
_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


def build_request(prompt: str, refs: list[tuple[str, str]], *, seed: int | None, with_text: bool,
                  aspect_ratio: str | None, image_size: str | None) -> dict[str, Any]:
    """The ``generateContent`` body for a prompt and ``(mime, base64)`` references (no I/O)."""
    parts: list[dict[str, Any]] = [{"text": prompt}]
    parts += [{"inline_data": {"mime_type": mime, "data": data}} for mime, data in refs]
    config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"] if with_text else ["IMAGE"]}
    if seed is not None:
        config["seed"] = seed
    image_config = {k: v for k, v in (("aspectRatio", aspect_ratio), ("imageSize", image_size)) if v}
    if image_config:
        config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


def _field(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """Responses use camelCase; proxies that re-serialise through an SDK sometimes send snake_case."""
    return obj.get(camel, obj.get(snake))


def parse_response(data: dict[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    """``(base64 image, info)`` from a ``generateContent`` answer; ``refused`` / ``bad_response`` else."""
    feedback = _field(data, "promptFeedback", "prompt_feedback") or {}
    block = feedback.get("blockReason", feedback.get("block_reason")) if isinstance(feedback, dict) else None
    if block:
        raise RenderError("refused", f"{what} blocked the prompt (blockReason {block})")
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        raise RenderError("bad_response", f"{what} returned no candidates")
    candidate = candidates[0]
    finish = _field(candidate, "finishReason", "finish_reason")
    content = candidate.get("content") or {}
    parts = content.get("parts") if isinstance(content, dict) else None
    parts = [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
    images = []
    for part in parts:
        blob = _field(part, "inlineData", "inline_data")
        if isinstance(blob, dict) and not part.get("thought"):
            mime = str(_field(blob, "mimeType", "mime_type") or "")
            if mime.startswith("image/") or not mime:
                images.append(blob)
    text = " ".join(" ".join(texts).split())[:500]
    if not images:
        said = f"; the model said: {text!r}" if text else ""
        raise RenderError("refused", f"{what} returned no image (finishReason {finish or 'none'}){said}")
    info = {"finish_reason": finish, "text": text, "model_version": data.get("modelVersion"),
            "usage": data.get("usageMetadata")}
    return images[-1].get("data"), info


def retry_info_delay(response: httpx.Response) -> float | None:
    """Gemini's 429 body names its wait in ``error.details[].retryDelay`` (``"13s"``), not in a header."""
    try:
        details = response.json()["error"]["details"]
    except (ValueError, KeyError, TypeError):
        return None
    for detail in details if isinstance(details, list) else []:
        match = _DELAY.match(str(detail.get("retryDelay", ""))) if isinstance(detail, dict) else None
        if match:
            return float(match.group(1))
    return None


class GeminiRenderer(HttpImageRenderer):
    """Render a program with a Gemini image model; references go inline as base64.

    Args (besides those of :class:`~genevolve.render._api_common.HttpImageRenderer`):
        model: ``gemini-2.5-flash-image`` (default, Nano Banana), ``gemini-3-pro-image-preview`` (Pro), ...
        base_url: API root including the version; default the public Gemini API ``v1beta``.
        api_key_env: ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``.
        aspect_ratio: ``"1:1"``, ``"16:9"``, ...; ``None`` lets the model follow the first reference.
        image_size: ``"1K"``, ``"2K"`` or ``"4K"`` on models that accept it; ``None`` = model default.
        with_text: also ask for text (``["TEXT", "IMAGE"]``); the text lands in ``meta["text"]``.
        send_seed: send the render seed as ``generationConfig.seed``.
    """

    kind = "gemini"

    def __init__(
        self,
        model: str = "gemini-2.5-flash-image",
        base_url: str = GEMINI_BASE_URL,
        api_key_env: str | Sequence[str] = ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        aspect_ratio: str | None = None,
        image_size: str | None = None,
        with_text: bool = False,
        send_seed: bool = True,
        **options: Any,
    ) -> None:
        if aspect_ratio is not None and not _RATIO.match(aspect_ratio):
            raise ConfigError(f"gemini renderer: aspect_ratio={aspect_ratio!r}; expected 'W:H' such as '16:9'")
        if image_size is not None and image_size not in ("512", "1K", "2K", "4K"):
            raise ConfigError(f"gemini renderer: image_size={image_size!r}; expected 512, 1K, 2K or 4K")
        self.check_options(options)
        super().__init__(model, base_url, api_key_env, **options)
        self.aspect_ratio = aspect_ratio
        self.image_size = image_size
        self.with_text = with_text
        self.send_seed = send_seed

    async def arender(self, program: Program, *, seed: int = 0) -> RenderResult:
        key = self.api_key()
        started = time.monotonic()
        refs = await self.encode_references(program)
        body = build_request(
            program.gen_prompt, [(mime, base64.b64encode(data).decode("ascii")) for data, mime in refs],
            seed=seed if self.send_seed else None, with_text=self.with_text,
            aspect_ratio=self.aspect_ratio, image_size=self.image_size)
        url = f"{self.base_url}/models/{self.model}:generateContent"
        headers = {"x-goog-api-key": key}
        async with self.client() as client:
            response, attempts = await self.send(lambda: client.post(url, json=body, headers=headers),
                                                 secrets=(key,), retry_hint=retry_info_delay)
        data = json_object(response, self.what)
        b64, info = parse_response(data, self.what)
        image = await asyncio.to_thread(decode_b64_image, b64, self.what)
        meta = self.base_meta(seed if self.send_seed else None, started, attempts, len(refs))
        meta.update(info, size=list(image.size), aspect_ratio=self.aspect_ratio, image_size=self.image_size)
        return RenderResult(image=image, meta=meta)
