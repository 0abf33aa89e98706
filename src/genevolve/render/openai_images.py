"""The OpenAI Images API (``gpt-image-1`` and successors, or any gateway speaking it) as a renderer.

With references: ``POST {base_url}/images/edits``, multipart form ``model``, ``prompt``, ``n=1``,
``size`` and one ``image[]`` file part per reference, in program order. Without references:
``POST {base_url}/images/generations`` with the same fields as JSON. The key goes in
``Authorization: Bearer``. Response: ``{"data": [{"b64_json": ..., "revised_prompt"?: ...}], "usage"?: ...}``;
``dall-e-*`` models are asked for ``response_format=b64_json`` (their default is a URL), and a
``url`` item is still fetched when a gateway sends one.

Why the choices below:

- httpx, not the ``openai`` SDK: the request is two plain calls, and one retry loop and one set of
  error codes (``_api_common``) then serve both hosted renderers.
- A safety refusal comes back as HTTP 400 with ``error.code`` ``moderation_blocked`` (GPT image
  models) or ``content_policy_violation`` (DALL-E); both map to ``refused``, not ``http_400``, so
  reports can tell a prompt the provider declined from a malformed request.
- The API takes no seed: ``meta["seed"]`` is ``None`` and the requested one is kept as
  ``meta["requested_seed"]``, so nobody reads two renders as seed-controlled repeats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx
from PIL import Image

from genevolve.render._api_common import HttpImageRenderer, decode_b64_image, decode_image, json_object
from genevolve.render.base import RenderError, RenderResult
from genevolve.types import Program

OPENAI_BASE_URL = "https://api.openai.com/v1"
REFUSAL_CODES = frozenset({"moderation_blocked", "content_policy_violation"})


def refusal_reason(response: httpx.Response) -> str | None:
    """The moderation code of a 400 answer that is a safety refusal, else ``None``."""
    if response.status_code != 400:
        return None
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    if code in REFUSAL_CODES:
        return str(code)
    message = str(error.get("message", "")).lower() if isinstance(error, dict) else ""
    return "safety_system" if "safety system" in message else None


def parse_response(data: dict[str, Any], what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(first data item, info)`` from an Images API answer; ``bad_response`` when it has no image."""
    items = data.get("data")
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise RenderError("bad_response", f"{what} returned no image in 'data'")
    item = items[0]
    if not item.get("b64_json") and not item.get("url"):
        raise RenderError("bad_response", f"{what} returned an image item with neither b64_json nor url")
    info = {"revised_prompt": item.get("revised_prompt"), "usage": data.get("usage")}
    return item, info


class OpenAIImagesRenderer(HttpImageRenderer):
    """Render a program with the OpenAI Images API; references are uploaded as ``image[]`` files.

    Args (besides those of :class:`~genevolve.render._api_common.HttpImageRenderer`):
        model: ``gpt-image-1`` (default), ``gpt-image-1-mini``, a newer GPT image model, or ``dall-e-2``.
        base_url: API root including ``/v1``; any gateway that speaks the Images API.
        api_key_env: environment variable holding the key (default ``OPENAI_API_KEY``).
        size: ``"1024x1024"``, ``"1536x1024"``, ``"1024x1536"`` or ``"auto"`` (the default; DALL-E needs a size).
        quality: ``"low"``, ``"medium"``, ``"high"`` or ``"auto"``; ``None`` = the API default.
        input_fidelity: ``"high"`` keeps faces, logos and fine detail of the references (edits only).
        extra_fields: further request fields sent as given (``background``, ``output_format``, ``moderation``).
    """

    kind = "openai-images"

    def __init__(
        self,
        model: str = "gpt-image-1",
        base_url: str = OPENAI_BASE_URL,
        api_key_env: str | Sequence[str] = "OPENAI_API_KEY",
        size: str | None = "auto",
        quality: str | None = None,
        input_fidelity: str | None = None,
        extra_fields: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.check_options(options)
        super().__init__(model, base_url, api_key_env, **options)
        self.size = size
        self.quality = quality
        self.input_fidelity = input_fidelity
        self.extra_fields = dict(extra_fields or {})

    def fields(self, prompt: str, *, edit: bool) -> dict[str, Any]:
        """The request fields other than the images (no I/O)."""
        fields: dict[str, Any] = {"model": self.model, "prompt": prompt, "n": 1}
        optional = {"size": self.size, "quality": self.quality,
                    "input_fidelity": self.input_fidelity if edit else None}
        fields.update({k: v for k, v in optional.items() if v is not None})
        if self.model.startswith("dall-e"):
            fields["response_format"] = "b64_json"
        fields.update(self.extra_fields)
        return fields

    async def arender(self, program: Program, *, seed: int = 0) -> RenderResult:
        key = self.api_key()
        started = time.monotonic()
        refs = await self.encode_references(program)
        headers = {"Authorization": f"Bearer {key}"}
        edit = bool(refs)
        fields = self.fields(program.gen_prompt, edit=edit)
        if edit:
            # dall-e-2 takes one file named "image"; GPT image models take repeated "image[]" parts
            part = "image" if self.model.startswith("dall-e") else "image[]"
            files = [(part, (f"reference_{i + 1}.{mime.split('/')[1]}", data, mime))
                     for i, (data, mime) in enumerate(refs)]
            url, body = f"{self.base_url}/images/edits", {"data": {k: str(v) for k, v in fields.items()},
                                                           "files": files}
        else:
            url, body = f"{self.base_url}/images/generations", {"json": fields}
        async with self.client() as client:
            response, attempts = await self.send(lambda: client.post(url, headers=headers, **body),
                                                 secrets=(key,), refusal=refusal_reason)
            item, info = parse_response(json_object(response, self.what), self.what)
            if item.get("b64_json"):
                image = await asyncio.to_thread(decode_b64_image, item["b64_json"], self.what)
            else:
                image = await self._fetch(client, str(item["url"]))
        meta = self.base_meta(None, started, attempts, len(refs))
        meta.update(info, requested_seed=seed, endpoint="edits" if edit else "generations",
                    size=list(image.size))
        return RenderResult(image=image, meta=meta)

    async def _fetch(self, client: httpx.AsyncClient, url: str) -> Image.Image:
        """An image the API returned by URL (DALL-E defaults, some gateways); one attempt, no key sent."""
        try:
            async with asyncio.timeout(self.timeout):
                response = await client.get(url, follow_redirects=True)
        except (TimeoutError, httpx.HTTPError) as exc:
            raise RenderError("bad_response", f"{self.what}: cannot fetch the returned image URL ({exc})") from exc
        if response.status_code >= 300:
            raise RenderError("bad_response",
                              f"{self.what}: the returned image URL answered HTTP {response.status_code}")
        return await asyncio.to_thread(decode_image, response.content, self.what)
