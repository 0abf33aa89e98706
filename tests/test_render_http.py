"""The render service (FastAPI app, in-process and under a real uvicorn) and its round-robin client."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from genevolve.render.base import Renderer, RenderError, RenderResult  # noqa: E402
from genevolve.render.collage import CollageRenderer  # noqa: E402
from genevolve.render.http_service import HTTPRenderer, create_app, encode_png_b64  # noqa: E402
from genevolve.types import Program, Reference  # noqa: E402
from tests.loopback_http import LoopbackServer, send_bytes, send_json, sequence, sleepy  # noqa: E402

PROMPT = 'The red square from the first reference image in the center, with the text "HELLO" at the top'


def png_b64(color: str = "red", size: tuple[int, int] = (64, 48)) -> str:
    return encode_png_b64(Image.new("RGB", size, color))


@pytest.fixture
def ref_path(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (80, 60), "red").save(path)
    return str(path)


@pytest.fixture
def program(ref_path):
    return Program(gen_prompt=PROMPT, references=[Reference(img_id="IMG_001", path=ref_path)])


class Recording(Renderer):
    """Records what the service passed on, to check payload decoding and per-call settings."""

    name = "recording"

    def __init__(self, error: RenderError | None = None):
        self.error = error
        self.calls: list[dict] = []

    async def arender_with(self, program, *, seed=0, **overrides):
        sizes = [Image.open(r.path).size for r in program.references]
        self.calls.append({"prompt": program.gen_prompt, "seed": seed, "sizes": sizes, **overrides})
        if self.error:
            raise self.error
        return RenderResult(Image.new("RGB", (32, 32), "blue"), {"seed": seed, "obj": object()})

    async def arender(self, program, *, seed=0):
        return await self.arender_with(program, seed=seed)


def asgi_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


# ---------------------------------------------------------------- the app, in process


async def test_generate_renders_collage_with_decoded_references():
    async with asgi_client(create_app(CollageRenderer())) as client:
        assert (await client.get("/health")).json() == {"status": "ok", "renderer": "collage"}
        refs = ["data:image/png;base64," + png_b64(), png_b64("green")]  # data URL and bare base64
        r = await client.post("/generate", json={"prompt": PROMPT, "image_urls": refs, "seed": 3,
                                                  "true_cfg_scale": 4.0, "num_inference_steps": 40})
    body = r.json()
    assert r.status_code == 200 and body["success"] is True, body
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert image.format == "PNG" and image.size == (512, 512)
    # the red reference is drawn: the image centre is red
    r_, g, b = image.convert("RGB").getpixel((256, 300))
    assert r_ > 200 and g < 60 and b < 60
    assert body["meta"]["seed"] == 3
    assert body["meta"]["ignored"] == ["num_inference_steps", "true_cfg_scale"]  # collage has no such knobs
    assert "manifest" not in body["meta"]


async def test_generate_passes_seed_sizes_and_sampling_settings():
    renderer = Recording()
    async with asgi_client(create_app(renderer)) as client:
        r = await client.post("/generate", json={"prompt": "p", "image_urls": [png_b64(size=(20, 10))],
                                                  "seed": 7, "true_cfg_scale": 2.5, "num_inference_steps": 9,
                                                  "width": 512, "height": 256, "extra_field": "ignored"})
    assert r.json()["success"] is True
    assert renderer.calls == [{"prompt": "p", "seed": 7, "sizes": [(20, 10)], "cfg": 2.5, "steps": 9,
                               "width": 512, "height": 256}]
    assert isinstance(r.json()["meta"]["obj"], str)  # non-JSON meta values are sent as repr


async def test_renderer_error_is_http_200_success_false():
    renderer = Recording(error=RenderError("no_reference", "needs a reference"))
    async with asgi_client(create_app(renderer)) as client:
        r = await client.post("/generate", json={"prompt": "p"})
    assert r.status_code == 200
    assert r.json() == {"success": False, "error": "no_reference: needs a reference", "code": "no_reference"}


async def test_renderer_bug_is_500_and_service_keeps_serving():
    class Buggy(Recording):
        async def arender_with(self, program, *, seed=0, **overrides):
            raise KeyError("oops")

    async with asgi_client(create_app(Buggy())) as client:
        r = await client.post("/generate", json={"prompt": "p"})
        assert r.status_code == 500 and r.json()["code"] == "internal"
        assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b"{not json", 400, "invalid JSON"),
        (b'{"image_urls": []}', 422, "prompt"),
        (b'{"prompt": "p", "seed": "abc"}', 422, "seed"),
        (b'{"prompt": "p", "image_urls": ["%%%not base64%%%"]}', 400, "base64"),
        (b'{"prompt": "p", "image_urls": ["' + base64.b64encode(b"plain text") + b'"]}', 400, "not a readable"),
        (b'{"prompt": "p", "image_urls": ["data:image/png,abc"]}', 400, "base64"),
    ],
)
async def test_malformed_payloads_are_4xx(content, status, fragment):
    renderer = Recording()
    async with asgi_client(create_app(renderer)) as client:
        r = await client.post("/generate", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status and r.json()["success"] is False
    assert fragment in r.json()["error"]
    assert renderer.calls == []


async def test_size_caps():
    renderer = Recording()
    app = create_app(renderer, max_body_bytes=20_000, max_images=2, max_image_bytes=5_000)
    noisy = Image.effect_noise((60, 60), 100).convert("RGB")  # incompressible: about 10 kB as PNG
    async with asgi_client(app) as client:
        too_many = await client.post("/generate", json={"prompt": "p", "image_urls": [png_b64()] * 3})
        too_big_image = await client.post("/generate", json={"prompt": "p", "image_urls": [encode_png_b64(noisy)]})
        too_big_body = await client.post("/generate", json={"prompt": "x" * 30_000})
    assert [too_many.status_code, too_big_image.status_code, too_big_body.status_code] == [413, 413, 413]
    assert renderer.calls == []


async def test_http_image_urls_are_fetched_or_refused():
    png = base64.b64decode(png_b64(size=(30, 30)))
    with LoopbackServer({"/img.png": lambda h, r: send_bytes(h, png, "image/png")}) as web:
        renderer = Recording()
        async with asgi_client(create_app(renderer)) as client:
            ok = await client.post("/generate", json={"prompt": "p", "image_urls": [web.url("/img.png")]})
            missing = await client.post("/generate", json={"prompt": "p", "image_urls": [web.url("/nope")]})
        async with asgi_client(create_app(renderer, allow_url_fetch=False)) as client:
            refused = await client.post("/generate", json={"prompt": "p", "image_urls": [web.url("/img.png")]})
    assert ok.json()["success"] is True and renderer.calls[0]["sizes"] == [(30, 30)]
    assert missing.status_code == 400 and "404" in missing.json()["error"]
    assert refused.status_code == 400 and "disabled" in refused.json()["error"]
    assert len(renderer.calls) == 1


# ---------------------------------------------------------------- client against real servers


@pytest.fixture(scope="module")
def collage_service():
    """The real app under uvicorn on 127.0.0.1, an ephemeral port."""
    server = uvicorn.Server(uvicorn.Config(create_app(CollageRenderer()), host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


def dead_url() -> str:
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def ok_route(h, request):
    send_json(h, {"success": True, "image": png_b64("blue", (16, 16))})


async def test_client_round_trip_matches_local_render(collage_service, program):
    remote = await HTTPRenderer(collage_service, timeout=30).arender(program, seed=5)
    local = await CollageRenderer().arender(program, seed=5)
    assert remote.image.size == local.image.size
    assert remote.image.convert("RGB").tobytes() == local.image.convert("RGB").tobytes()
    assert remote.meta["url"] == collage_service + "/generate" and remote.meta["attempts"] == 1
    assert remote.meta["server"]["seed"] == 5


async def test_client_skips_dead_url_then_puts_it_last(collage_service, program):
    dead = dead_url()
    client = HTTPRenderer([dead, collage_service], timeout=30, retries=1, backoff=0)
    first = await client.arender(program)
    assert first.meta["attempts"] == 2 and first.meta["url"].startswith(collage_service)
    second = await client.arender(program)  # round-robin would start at the live URL anyway
    third = await client.arender(program)  # round-robin starts at the dead one: cooled down, tried last
    assert second.meta["attempts"] == 1 and third.meta["attempts"] == 1


async def test_client_round_robin_spreads_calls(program):
    with LoopbackServer({"/generate": ok_route}) as a, LoopbackServer({"/generate": ok_route}) as b:
        client = HTTPRenderer([a.url("/"), b.url("/generate")], retries=0)
        for _ in range(4):
            result = await client.arender(program)
            assert result.image.size == (16, 16)
        assert (a.hits("/generate"), b.hits("/generate")) == (2, 2)
        sent = a.requests[0].json()
        assert sent["prompt"] == PROMPT and sent["seed"] == 0 and len(sent["image_urls"]) == 1
        assert sent["image_urls"][0].startswith("data:image/png;base64,")
        assert "true_cfg_scale" not in sent  # unset settings are left to the server


async def test_client_retries_500_then_succeeds(program):
    route = sequence(lambda h, r: send_json(h, {"detail": "busy"}, status=503), ok_route)
    with LoopbackServer({"/generate": route}) as srv:
        client = HTTPRenderer(srv.url("/"), retries=2, backoff=0.01, true_cfg_scale=4.0, num_inference_steps=40)
        result = await client.arender(program, seed=11)
        assert result.meta["attempts"] == 2 and srv.hits("/generate") == 2
        sent = srv.requests[-1].json()
        assert (sent["seed"], sent["true_cfg_scale"], sent["num_inference_steps"]) == (11, 4.0, 40)


async def test_client_gives_up_after_retries_with_last_code(program):
    with LoopbackServer({"/generate": lambda h, r: send_json(h, {}, status=500)}) as srv:
        with pytest.raises(RenderError) as err:
            await HTTPRenderer(srv.url("/"), retries=2, backoff=0.01).arender(program)
        assert err.value.code == "http_500" and srv.hits("/generate") == 3


@pytest.mark.parametrize(
    ("route", "code", "hits"),
    [
        (lambda h, r: send_bytes(h, b"<html>oops", "text/html"), "bad_response", 2),
        (lambda h, r: send_json(h, {"image": "x"}), "bad_response", 2),
        (lambda h, r: send_json(h, {"success": True, "image": "bm90IGFuIGltYWdl"}), "bad_response", 2),
        (lambda h, r: send_json(h, {"success": False, "error": "CUDA OOM"}), "server_error", 1),
        (lambda h, r: send_json(h, {"success": False, "error": "bad"}, status=422), "http_422", 1),
    ],
)
async def test_client_error_codes_and_what_is_retried(program, route, code, hits):
    with LoopbackServer({"/generate": route}) as srv:
        with pytest.raises(RenderError) as err:
            await HTTPRenderer(srv.url("/"), retries=1, backoff=0).arender(program)
        assert err.value.code == code
        assert srv.hits("/generate") == hits
    if code == "server_error":
        assert "CUDA OOM" in err.value.message


async def test_client_timeout(program):
    with LoopbackServer({"/generate": sleepy(2.0, ok_route)}) as srv:
        start = time.monotonic()
        with pytest.raises(RenderError) as err:
            await HTTPRenderer(srv.url("/"), timeout=0.3, retries=0).arender(program)
        assert err.value.code == "timeout" and time.monotonic() - start < 1.5


async def test_client_reference_errors_never_reach_the_network(tmp_path):
    with LoopbackServer({"/generate": ok_route}) as srv:
        client = HTTPRenderer(srv.url("/"))
        bad = tmp_path / "bad.png"
        bad.write_text("not an image")
        for ref in (Reference(img_id="IMG_001"), Reference(img_id="IMG_001", path=str(bad))):
            with pytest.raises(RenderError) as err:
                await client.arender(Program(gen_prompt="p", references=[ref]))
            assert err.value.code == "bad_reference"
        assert srv.hits("/generate") == 0


def test_client_caps_reference_size(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 1000), "red").save(big)
    payload = HTTPRenderer("http://x", max_image_side=600)._payload(
        Program(gen_prompt="p", references=[Reference(img_id="IMG_001", path=str(big))]), seed=0)
    data = base64.b64decode(payload["image_urls"][0].split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).size == (600, 200)
