"""The hosted image-API renderers (Gemini ``generateContent``, OpenAI Images) against loopback servers.

Bodies follow the shapes in the providers' public API references (trimmed to the fields we read plus
a few we ignore, so unknown fields are proven harmless). The failure tests run against both providers.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from genevolve.registry import ConfigError, build
from genevolve.render import RENDERERS
from genevolve.render.base import RenderError
from genevolve.render.gemini import GeminiRenderer
from genevolve.render.openai_images import OpenAIImagesRenderer
from genevolve.types import Program, Reference
from tests.loopback_http import LoopbackServer, Recorded, send_bytes, send_json, sequence, sleepy

KEY = "test-key-7d1e4a-very-secret"
GEMINI_PATH = "/v1beta/models/gemini-2.5-flash-image:generateContent"
FAST = {"timeout": 2.0, "max_retries": 2, "backoff": 0.01, "backoff_max": 2.0}


def png_b64(size: tuple[int, int] = (96, 64), color: str = "teal") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def header(request: Recorded, name: str) -> str:
    return next((v for k, v in request.headers.items() if k.lower() == name.lower()), "")


def open_bytes(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.fixture
def program(tmp_path) -> Program:
    """Two references: a large transparent PNG (must be capped, stay PNG) and a small JPEG photo."""
    sprite = Image.new("RGBA", (2100, 840), (0, 0, 0, 0))
    sprite.paste((200, 30, 30, 255), (700, 200, 1400, 600))
    sprite.save(tmp_path / "sprite.png")
    Image.new("RGB", (640, 480), "orange").save(tmp_path / "photo.jpg", quality=85)
    return Program(gen_prompt="The fox from the first reference image on the bench from the second.",
                   references=[Reference(img_id="IMG_001", path=str(tmp_path / "sprite.png")),
                               Reference(img_id="IMG_002", path=str(tmp_path / "photo.jpg"))])


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    for env in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


# -- protocol stand-ins ---------------------------------------------------------------------------


def gemini_ok(size: tuple[int, int] = (96, 64)):
    def route(h, request):
        send_json(h, {
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "Drafting the composition.", "thought": True},
                    {"inlineData": {"mimeType": "image/png", "data": png_b64((8, 8), "gray")}, "thought": True},
                    {"text": "Here is the fox on the bench."},
                    {"inlineData": {"mimeType": "image/png", "data": png_b64(size)}},
                ]},
                "finishReason": "STOP", "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": 1290, "candidatesTokenCount": 1290, "totalTokenCount": 2580},
            "modelVersion": "gemini-2.5-flash-image", "responseId": "abc123",
        })
    return route


def openai_ok(size: tuple[int, int] = (96, 64)):
    def route(h, request):
        send_json(h, {"created": 1760000000, "data": [{"b64_json": png_b64(size)}], "background": "opaque",
                      "output_format": "png", "size": "1024x1024", "quality": "medium",
                      "usage": {"input_tokens": 50, "output_tokens": 1056, "total_tokens": 1106}})
    return route


@dataclass
class Provider:
    """One API as the failure tests see it: where its requests go and what success looks like."""

    name: str
    path: str
    ok: Any
    make: Any
    env: str

    def renderer(self, server: LoopbackServer, **kw: Any):
        return self.make(server, **{**FAST, **kw})


PROVIDERS = [
    Provider("gemini", GEMINI_PATH, gemini_ok,
             lambda s, **kw: GeminiRenderer(base_url=s.url("/v1beta"), **kw), "GEMINI_API_KEY"),
    Provider("openai", "/v1/images/edits", openai_ok,
             lambda s, **kw: OpenAIImagesRenderer(base_url=s.url("/v1"), **kw), "OPENAI_API_KEY"),
]


@pytest.fixture(params=PROVIDERS, ids=lambda p: p.name)
def provider(request) -> Provider:
    return request.param


def error_json(status: int, message: str, code: str | None = None):
    def route(h, request):
        send_json(h, {"error": {"code": code or status, "message": message, "status": "ERR"}}, status=status)
    return route


# -- Gemini -----------------------------------------------------------------------------------------


async def test_gemini_sends_references_inline_and_returns_the_final_image(program):
    with LoopbackServer({GEMINI_PATH: gemini_ok((120, 80))}) as server:
        renderer = GeminiRenderer(base_url=server.url("/v1beta"), aspect_ratio="16:9", image_size="2K", **FAST)
        result = await renderer.arender(program, seed=42)
    request = server.requests[0]
    assert header(request, "x-goog-api-key") == KEY
    assert KEY not in request.body.decode()
    body = request.json()
    parts = body["contents"][0]["parts"]
    assert parts[0] == {"text": program.gen_prompt}
    sent = [p["inline_data"] for p in parts[1:]]
    assert [s["mime_type"] for s in sent] == ["image/png", "image/jpeg"]
    sprite, photo = (open_bytes(base64.b64decode(s["data"])) for s in sent)
    assert sprite.size == (2048, 819) and sprite.mode == "RGBA"  # capped, transparency kept
    assert photo.size == (640, 480)
    assert body["generationConfig"] == {"responseModalities": ["IMAGE"], "seed": 42,
                                        "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}
    assert result.image.size == (120, 80)  # the final image, not the thought draft
    meta = result.meta
    assert meta["model"] == "gemini-2.5-flash-image" and meta["seed"] == 42 and meta["attempts"] == 1
    assert meta["n_references"] == 2 and meta["latency_s"] >= 0 and meta["finish_reason"] == "STOP"
    assert meta["text"] == "Here is the fox on the bench."


async def test_gemini_without_references_sends_only_the_prompt(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)  # the fallback name
    with LoopbackServer({GEMINI_PATH: gemini_ok()}) as server:
        renderer = GeminiRenderer(base_url=server.url("/v1beta"), with_text=True, send_seed=False, **FAST)
        result = await renderer.arender(Program(gen_prompt="a red cube"))
    body = server.requests[0].json()
    assert body["contents"][0]["parts"] == [{"text": "a red cube"}]
    assert body["generationConfig"] == {"responseModalities": ["TEXT", "IMAGE"]}
    assert header(server.requests[0], "x-goog-api-key") == KEY
    assert result.meta["seed"] is None


@pytest.mark.parametrize("answer, says", [
    ({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 9}},
     "PROHIBITED_CONTENT"),
    ({"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]}, "IMAGE_SAFETY"),
    ({"candidates": [{"content": {"parts": [{"text": "I can't create that image."}], "role": "model"},
                      "finishReason": "STOP"}]}, "I can't create that image."),
])
async def test_gemini_refusals(program, answer, says):
    with LoopbackServer({GEMINI_PATH: lambda h, r: send_json(h, answer)}) as server:
        with pytest.raises(RenderError) as info:
            await GeminiRenderer(base_url=server.url("/v1beta"), **FAST).arender(program)
    assert info.value.code == "refused" and says in info.value.message
    assert server.hits(GEMINI_PATH) == 1  # a refusal is not retried


async def test_gemini_waits_the_retry_delay_its_429_body_names(program):
    def quota(h, request):
        send_json(h, {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.4s"}]}}, status=429)

    with LoopbackServer({GEMINI_PATH: sequence(quota, gemini_ok())}) as server:
        started = time.monotonic()
        await GeminiRenderer(base_url=server.url("/v1beta"), **FAST).arender(program)
    assert time.monotonic() - started >= 0.38


def test_gemini_options_are_checked_and_the_kind_is_registered():
    renderer = build(RENDERERS, "gemini", "renderer", model="gemini-3-pro-image-preview", aspect_ratio="1:1")
    assert renderer.name == "gemini:gemini-3-pro-image-preview"
    with pytest.raises(ConfigError, match="aspect_ratio"):
        GeminiRenderer(aspect_ratio="wide")
    with pytest.raises(ConfigError, match="timout"):
        build(RENDERERS, "gemini", "renderer", timout=3)


# -- OpenAI Images ----------------------------------------------------------------------------------


def form_parts(request: Recorded) -> list[tuple[str, str | None, str, bytes]]:
    """``(field, filename, content type, bytes)`` for each part of a multipart/form-data body."""
    raw = f"Content-Type: {header(request, 'content-type')}\r\n\r\n".encode() + request.body
    msg = email.message_from_bytes(raw, policy=email.policy.HTTP)
    assert msg.is_multipart()
    return [(p.get_param("name", header="content-disposition"), p.get_filename(), p.get_content_type(),
             p.get_payload(decode=True)) for p in msg.iter_parts()]


async def test_openai_edits_upload_each_reference_as_a_file(program):
    with LoopbackServer({"/v1/images/edits": openai_ok((100, 70))}) as server:
        renderer = OpenAIImagesRenderer(base_url=server.url("/v1"), input_fidelity="high", quality="low", **FAST)
        result = await renderer.arender(program, seed=7)
    request = server.requests[0]
    assert header(request, "authorization") == f"Bearer {KEY}"
    parts = form_parts(request)
    fields = {name: data.decode() for name, filename, _, data in parts if filename is None}
    assert fields == {"model": "gpt-image-1", "prompt": program.gen_prompt, "n": "1", "size": "auto",
                      "quality": "low", "input_fidelity": "high"}
    files = [(name, ctype, open_bytes(data)) for name, filename, ctype, data in parts if filename]
    assert [(name, ctype) for name, ctype, _ in files] == [("image[]", "image/png"), ("image[]", "image/jpeg")]
    assert files[0][2].size == (2048, 819) and files[1][2].size == (640, 480)
    assert result.image.size == (100, 70)
    assert result.meta["seed"] is None and result.meta["requested_seed"] == 7
    assert result.meta["endpoint"] == "edits" and result.meta["usage"]["total_tokens"] == 1106


async def test_openai_without_references_uses_generations_json():
    with LoopbackServer({"/v1/images/generations": openai_ok()}) as server:
        renderer = OpenAIImagesRenderer(base_url=server.url("/v1"), size="1024x1536", input_fidelity="high",
                                        extra_fields={"background": "opaque"}, **FAST)
        result = await renderer.arender(Program(gen_prompt="a red cube"))
    assert server.requests[0].json() == {"model": "gpt-image-1", "prompt": "a red cube", "n": 1,
                                         "size": "1024x1536", "background": "opaque"}
    assert result.meta["endpoint"] == "generations"


async def test_openai_fetches_an_image_returned_by_url():
    def answer(h, request):
        send_json(h, {"created": 1, "data": [{"url": server.url("/img.png"), "revised_prompt": "a cube"}]})

    png = base64.b64decode(png_b64((30, 20)))
    with LoopbackServer({"/v1/images/generations": answer,
                         "/img.png": lambda h, r: send_bytes(h, png, "image/png")}) as server:
        renderer = OpenAIImagesRenderer(model="dall-e-2", size="256x256", base_url=server.url("/v1"), **FAST)
        result = await renderer.arender(Program(gen_prompt="a cube"))
    assert server.requests[0].json()["response_format"] == "b64_json"
    assert not header(server.requests[1], "authorization")  # the key stays with the API
    assert result.image.size == (30, 20) and result.meta["revised_prompt"] == "a cube"


@pytest.mark.parametrize("code", ["moderation_blocked", "content_policy_violation"])
async def test_openai_moderation_is_a_refusal(program, code):
    route = error_json(400, "Your request was rejected by the safety system.", code=code)
    with LoopbackServer({"/v1/images/edits": route}) as server:
        with pytest.raises(RenderError) as info:
            await OpenAIImagesRenderer(base_url=server.url("/v1"), **FAST).arender(program)
    assert info.value.code == "refused" and code in info.value.message
    assert server.hits("/v1/images/edits") == 1


# -- both providers -----------------------------------------------------------------------------------


async def test_no_key_fails_before_any_request(provider, program, monkeypatch):
    monkeypatch.delenv(provider.env)
    with LoopbackServer({provider.path: provider.ok()}) as server:
        with pytest.raises(RenderError) as info:
            await provider.renderer(server).arender(program)
    assert info.value.code == "no_api_key" and provider.env in info.value.message
    assert server.requests == []


async def test_server_error_then_success(provider, program):
    route = sequence(error_json(500, "Internal error"), error_json(503, "overloaded"), provider.ok())
    with LoopbackServer({provider.path: route}) as server:
        result = await provider.renderer(server).arender(program)
    assert server.hits(provider.path) == 3 and result.meta["attempts"] == 3


async def test_server_errors_past_the_retries(provider, program):
    with LoopbackServer({provider.path: error_json(502, "bad gateway")}) as server:
        with pytest.raises(RenderError) as info:
            await provider.renderer(server, max_retries=1).arender(program)
    assert info.value.code == "http_502" and "2 attempts" in info.value.message


async def test_rate_limit_honours_retry_after(provider, program):
    def limited(h, request):
        send_bytes(h, b'{"error": {"message": "Rate limit reached"}}', "application/json", status=429,
                   headers={"Retry-After": "0.5"})

    with LoopbackServer({provider.path: sequence(limited, provider.ok())}) as server:
        started = time.monotonic()
        await provider.renderer(server).arender(program)
    assert time.monotonic() - started >= 0.48
    with LoopbackServer({provider.path: limited}) as server:
        with pytest.raises(RenderError) as info:
            await provider.renderer(server, max_retries=1, backoff_max=0.05).arender(program)
    assert info.value.code == "rate_limited" and server.hits(provider.path) == 2


async def test_timeout(provider, program):
    with LoopbackServer({provider.path: sleepy(1.5, provider.ok())}) as server:
        started = time.monotonic()
        with pytest.raises(RenderError) as info:
            await provider.renderer(server, timeout=0.3, max_retries=1).arender(program)
    assert info.value.code == "timeout" and time.monotonic() - started < 1.4
    assert server.hits(provider.path) == 2


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"candidates": [], "data": []}'])
async def test_malformed_answers(provider, program, body):
    with LoopbackServer({provider.path: lambda h, r: send_bytes(h, body, "application/json")}) as server:
        with pytest.raises(RenderError) as info:
            await provider.renderer(server).arender(program)
    assert info.value.code == "bad_response"
    assert server.hits(provider.path) == 1


@pytest.mark.parametrize("payload", ["@@not-base64@@", base64.b64encode(b"GIF89a but not really").decode()])
async def test_undecodable_image_is_a_bad_response(provider, program, payload):
    def answer(h, request):
        if provider.name == "gemini":
            send_json(h, {"candidates": [{"content": {"parts": [
                {"inlineData": {"mimeType": "image/png", "data": payload}}]}, "finishReason": "STOP"}]})
        else:
            send_json(h, {"data": [{"b64_json": payload}]})

    with LoopbackServer({provider.path: answer}) as server:
        with pytest.raises(RenderError) as info:
            await provider.renderer(server).arender(program)
    assert info.value.code == "bad_response"


async def test_key_never_reaches_errors_or_logs(provider, program, caplog):
    caplog.set_level(logging.DEBUG)
    echo = error_json(401, f"API key not valid: {KEY}. Please pass a valid API key.")
    with LoopbackServer({provider.path: echo}) as server:
        with pytest.raises(RenderError) as info:
            await provider.renderer(server).arender(program)
    assert info.value.code == "http_401" and server.hits(provider.path) == 1  # not retried
    assert KEY not in str(info.value) and KEY not in info.value.message and "***" in info.value.message
    with LoopbackServer({provider.path: sequence(error_json(500, f"boom {KEY}"), provider.ok())}) as server:
        result = await provider.renderer(server).arender(program)
    assert KEY not in caplog.text and KEY not in repr(result.meta)


async def test_unreadable_reference_fails_before_any_request(provider, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    for ref in (Reference(img_id="IMG_009", path=str(tmp_path / "broken.png")),
                Reference(img_id="IMG_010", path=str(tmp_path / "missing.png")),
                Reference(img_id="IMG_011")):
        with LoopbackServer({provider.path: provider.ok()}) as server:
            with pytest.raises(RenderError) as info:
                await provider.renderer(server).arender(Program(gen_prompt="x", references=[ref]))
        assert info.value.code == "bad_reference" and ref.img_id in info.value.message
        assert server.requests == []


async def test_options_reach_the_registry(provider):
    kind = "gemini" if provider.name == "gemini" else "openai-images"
    renderer = build(RENDERERS, kind, "renderer", timeout=5, max_retries=0, requests_per_minute=30,
                     max_concurrency=2)
    assert renderer.timeout == 5 and renderer.limiter.max_concurrency == 2
