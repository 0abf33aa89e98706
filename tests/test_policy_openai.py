"""OpenAIPolicy against a loopback server speaking /v1/chat/completions, plus message conversion."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from genevolve.policy import POLICIES, Constraint, PolicyError, Sampling, UnsupportedConstraint, build_policy
from genevolve.policy.messages import image_url, strip_placeholders, to_openai_messages
from genevolve.policy.openai_compat import OpenAIPolicy
from genevolve.registry import ConfigError
from genevolve.types import Turn

KEY_ENV = "GENEVOLVE_TEST_POLICY_KEY"
SECRET = "sk-test-SECRET-0123456789"


class FakeOpenAI(ThreadingHTTPServer):
    """Records every request; replies from ``script`` (status, payload, delay_s, headers), then 200s."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict | None, float, dict]] = []
        self.reply: str | None = "hello"
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    def handle_error(self, request, client_address) -> None:  # client gave up (timeout test): fine
        pass


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append(
                {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
            )
            status, payload, delay, headers = srv.script.pop(0) if srv.script else (200, None, 0.0, {})
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            time.sleep(delay)
        finally:
            # Out of flight before the reply is sent: once the client has its answer it may send the
            # next request, which must not find this one still counted.
            with srv.lock:
                srv.in_flight -= 1
        if payload is None and status == 200:
            payload = completion(srv.reply, body["model"])
        data = json.dumps(payload or {"error": {"message": f"status {status}"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def completion(content: str | None, model: str) -> dict:
    """The Chat Completions response shape from the public API reference."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


@pytest.fixture
def server():
    srv = FakeOpenAI()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def make(server, **kw) -> OpenAIPolicy:
    kw.setdefault("backoff_base", 0.001)
    return OpenAIPolicy("test-model", base_url=server.url, api_key_env=KEY_ENV, **kw)


TURNS = [
    Turn(role="system", content="You are an agent."),
    Turn(role="user", content="draw a fox"),
]


def png(path, size=(8, 8), mode="RGB", color=(255, 0, 0)):
    Image.new(mode, size, color).save(path)
    return str(path)


def decode_data_url(url: str) -> Image.Image:
    head, _, data = url.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


# -- requests --------------------------------------------------------------------------------


async def test_sends_sampling_model_and_key(server, key):
    policy = make(server)
    out = await policy.achat(TURNS, sampling=Sampling(temperature=0.3, top_p=0.8, max_tokens=77, seed=5))
    assert out == "hello"
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {SECRET}"
    body = req["body"]
    assert body["model"] == "test-model"
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.3, 0.8, 77, 5)
    assert body["messages"] == [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "draw a fox"},
    ]
    await policy.aclose()


async def test_seed_omitted_when_none(server, key):
    await make(server).achat(TURNS, sampling=Sampling())
    assert "seed" not in server.bodies()[0]


async def test_text_only_policy_drops_placeholders(server, key, tmp_path):
    turn = Turn(
        role="user",
        content="IMG_001: fox\n<image>\nIMG_002: den <image>",
        images=[png(tmp_path / "a.png"), "https://x/b.jpg"],
    )
    await make(server).achat([turn], sampling=Sampling())
    assert server.bodies()[0]["messages"] == [{"role": "user", "content": "IMG_001: fox\nIMG_002: den"}]


async def test_vlm_sends_image_parts_in_placeholder_order(server, key, tmp_path):
    big = png(tmp_path / "big.png", size=(2048, 1024))
    rgba = png(tmp_path / "sprite.png", size=(16, 16), mode="RGBA", color=(0, 0, 255, 0))
    turn = Turn(
        role="user", content="A <image> B <image> C<image>", images=[big, "https://example.com/c.jpg", rgba]
    )
    await make(server, accepts_images=True, max_image_side=512).achat([TURNS[0], turn], sampling=Sampling())
    system, user = server.bodies()[0]["messages"]
    assert system == {"role": "system", "content": "You are an agent."}  # no images: plain string
    kinds = [(p["type"], p.get("text")) for p in user["content"]]
    assert kinds == [
        ("text", "A "),
        ("image_url", None),
        ("text", " B "),
        ("image_url", None),
        ("text", " C"),
        ("image_url", None),
    ]
    first, second, third = (user["content"][i]["image_url"]["url"] for i in (1, 3, 5))
    assert second == "https://example.com/c.jpg"
    img = decode_data_url(first)
    assert img.size == (512, 256) and img.format == "JPEG"  # downscaled and re-encoded
    assert third.startswith("data:image/png;base64,")  # small PNG sent as is


def test_openai_messages_skip_empty_text_and_keep_small_png_bytes(tmp_path):
    path = png(tmp_path / "s.png")
    [msg] = to_openai_messages([Turn(role="user", content="<image>", images=[path])], accepts_images=True)
    [part] = msg["content"]
    assert part["type"] == "image_url"
    assert base64.b64decode(part["image_url"]["url"].partition(",")[2]) == (tmp_path / "s.png").read_bytes()


def test_image_url_cache_sees_file_changes(tmp_path):
    path = tmp_path / "x.png"
    png(path, color=(255, 0, 0))
    first = image_url(str(path))
    assert image_url(str(path)) == first
    png(path, size=(9, 9), color=(0, 255, 0))
    assert image_url(str(path)) != first


def test_missing_image_file_names_the_path(tmp_path):
    turn = Turn(role="user", content="<image>", images=[str(tmp_path / "gone.png")])
    with pytest.raises(FileNotFoundError, match="gone.png"):
        to_openai_messages([turn], accepts_images=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a <image> b", "a b"),
        ("<image>\nIMG_001: fox", "IMG_001: fox"),
        ("IMG_001: fox\n  <image> <image>\nnext", "IMG_001: fox\nnext"),
        ("no images", "no images"),
    ],
)
def test_strip_placeholders(text, expected):
    assert strip_placeholders(text) == expected


# -- structured outputs ----------------------------------------------------------------------

SCHEMA = {"title": "program answer", "type": "object", "properties": {"gen_prompt": {"type": "string"}}}


@pytest.mark.parametrize(
    ("kind", "value", "field"),
    [("grammar", 'start: "a"', "grammar"), ("regex", "a+", "regex"), ("json_schema", SCHEMA, "json")],
)
async def test_vllm_structured_outputs(server, key, kind, value, field):
    policy = make(server, extra_body={"top_k": 20, "structured_outputs": {"whitespace_pattern": " "}})
    await policy.achat(TURNS, sampling=Sampling(), constraint=Constraint(kind=kind, value=value))
    body = server.bodies()[0]
    assert body["structured_outputs"] == {"whitespace_pattern": " ", field: value}
    assert body["top_k"] == 20
    assert policy.extra_body == {
        "top_k": 20,
        "structured_outputs": {"whitespace_pattern": " "},
    }  # not mutated


@pytest.mark.parametrize(
    ("kind", "value", "field"),
    [
        ("grammar", 'start: "a"', "guided_grammar"),
        ("regex", "a+", "guided_regex"),
        ("json_schema", SCHEMA, "guided_json"),
    ],
)
async def test_vllm_legacy_fields(server, key, kind, value, field):
    await make(server, structured="vllm-legacy").achat(
        TURNS, sampling=Sampling(), constraint=Constraint(kind=kind, value=value)
    )
    body = server.bodies()[0]
    assert body[field] == value and "structured_outputs" not in body


async def test_openai_json_schema_response_format(server, key):
    policy = make(server, structured="openai")
    await policy.achat(TURNS, sampling=Sampling(), constraint=Constraint(kind="json_schema", value=SCHEMA))
    assert server.bodies()[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "program_answer", "schema": SCHEMA, "strict": True},
    }


@pytest.mark.parametrize(
    ("structured", "kind"), [("openai", "grammar"), ("openai", "regex"), ("none", "json_schema")]
)
async def test_unsupported_constraints_send_nothing(server, key, structured, kind):
    policy = make(server, structured=structured)
    with pytest.raises(UnsupportedConstraint, match=kind):
        await policy.achat(TURNS, sampling=Sampling(), constraint=Constraint(kind=kind, value="x"))
    assert server.requests == []


def test_auto_structured_follows_base_url(key, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert OpenAIPolicy("gpt-4o").structured == "openai"
    assert OpenAIPolicy("m", base_url="http://localhost:8000/v1").structured == "vllm"
    with pytest.raises(ConfigError, match="structured"):
        OpenAIPolicy("m", base_url="http://localhost:8000/v1", structured="xgrammar")


# -- keys ------------------------------------------------------------------------------------


def test_missing_key_for_openai_names_the_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIPolicy("gpt-4o")
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=KEY_ENV):
        OpenAIPolicy("gpt-4o", base_url="https://api.openai.com/v1/", api_key_env=KEY_ENV)


async def test_custom_server_without_key_sends_placeholder(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert await make(server).achat(TURNS, sampling=Sampling()) == "hello"
    assert server.requests[0]["headers"]["authorization"] == "Bearer EMPTY"


def test_repr_hides_key(key, server):
    policy = make(server)
    assert SECRET not in repr(policy) and SECRET not in str(vars(policy).get("name"))


# -- failures and retries --------------------------------------------------------------------


async def test_retries_500_and_429_then_succeeds(server, key):
    server.script = [(500, None, 0, {}), (429, None, 0, {"Retry-After": "0"}), (200, None, 0, {})]
    assert await make(server, max_retries=2).achat(TURNS, sampling=Sampling()) == "hello"
    assert len(server.requests) == 3


async def test_exhausted_retries_raise_policy_error_without_key(server, key):
    echo = {"error": {"message": f"upstream failed for key {SECRET}"}}
    server.script = [(503, echo, 0, {})] * 3
    with pytest.raises(PolicyError) as info:
        await make(server, max_retries=2).achat(TURNS, sampling=Sampling())
    msg = str(info.value)
    assert server.url in msg and "503" in msg and "3 attempt" in msg
    assert SECRET not in msg and info.value.__cause__ is None
    assert len(server.requests) == 3


async def test_max_retries_zero_means_one_attempt(server, key):
    server.script = [(500, None, 0, {})] * 2
    with pytest.raises(PolicyError, match="1 attempt"):
        await make(server, max_retries=0).achat(TURNS, sampling=Sampling())
    assert len(server.requests) == 1


async def test_bad_request_is_not_retried(server, key):
    server.script = [(400, {"error": {"message": "context too long"}}, 0, {})]
    with pytest.raises(PolicyError, match="context too long"):
        await make(server, max_retries=3).achat(TURNS, sampling=Sampling())
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [401, 404])
async def test_auth_and_not_found_are_config_errors(server, key, status):
    server.script = [(status, {"error": {"message": f"bad key {SECRET}"}}, 0, {})]
    with pytest.raises(ConfigError) as info:
        await make(server, max_retries=3).achat(TURNS, sampling=Sampling())
    assert str(status) in str(info.value) and SECRET not in str(info.value)
    assert ("--api-server-count 1" in str(info.value)) == (status == 404)  # a runtime adapter some processes lack
    assert len(server.requests) == 1


async def test_timeout_is_retried_then_policy_error(server, key):
    server.script = [(200, None, 1.0, {})] * 2
    start = time.monotonic()
    with pytest.raises(PolicyError, match="timeout"):
        await make(server, timeout=0.2, max_retries=1).achat(TURNS, sampling=Sampling())
    assert time.monotonic() - start < 0.9
    deadline = time.monotonic() + 2.0  # the server thread may record the second request a little late
    while len(server.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(server.requests) == 2


async def test_connection_refused_is_policy_error(key):
    srv = FakeOpenAI()
    url = srv.url
    srv.server_close()  # nothing listens on this port now
    policy = OpenAIPolicy("m", base_url=url, api_key_env=KEY_ENV, max_retries=1, backoff_base=0.001)
    with pytest.raises(PolicyError, match="connection error") as info:
        await policy.achat(TURNS, sampling=Sampling())
    assert url in str(info.value) and "2 attempt" in str(info.value)


async def test_null_content_is_empty_string(server, key):
    server.reply = None
    assert await make(server).achat(TURNS, sampling=Sampling()) == ""


# -- concurrency -----------------------------------------------------------------------------


async def test_concurrency_is_bounded(server, key):
    server.script = [(200, None, 0.15, {})] * 6
    policy = make(server, max_concurrency=2)
    outs = await asyncio.gather(*(policy.achat(TURNS, sampling=Sampling()) for _ in range(6)))
    assert outs == ["hello"] * 6
    assert server.max_in_flight == 2
    await policy.aclose()


def test_sync_chat_works_across_event_loops(server, key):
    policy = make(server)
    assert policy.chat(TURNS) == "hello"
    assert policy.chat(TURNS) == "hello"  # a fresh loop: a fresh client
    assert len(server.requests) == 2


def test_registry_builds_openai_policy(server, key):
    assert "openai" in POLICIES
    policy = build_policy("openai", model="m", base_url=server.url, api_key_env=KEY_ENV)
    assert isinstance(policy, OpenAIPolicy) and policy.name == "openai:m"


# -- sampled tokens and log-probs (vLLM's logprobs with return_tokens_as_token_ids) -------------------


def with_logprobs(content: str, tokens: list[tuple[str, float]], finish: str = "stop") -> dict:
    """A completion whose choice carries ``logprobs.content`` as the Chat Completions reference shapes it."""
    payload = completion(content, "test-model")
    payload["choices"][0]["finish_reason"] = finish
    payload["choices"][0]["logprobs"] = {"content": [
        {"token": t, "logprob": lp, "bytes": None, "top_logprobs": []} for t, lp in tokens]}
    return payload


async def test_logprobs_are_requested_and_recorded(server, key):
    server.script = [(200, with_logprobs("hi there", [("token_id:17", -0.25), ("token_id:4", -1.5)]), 0.0, {})]
    reply = await make(server, logprobs=True).areply(TURNS, sampling=Sampling())
    body = server.bodies()[0]
    assert body["logprobs"] is True and body["return_tokens_as_token_ids"] is True
    assert reply.text == "hi there" and reply.token_ids == [17, 4] and reply.logprobs == [-0.25, -1.5]
    assert reply.stop_token_id is None and reply.truncated is False


async def test_truncated_reply_and_tokens_without_ids(server, key):
    server.script = [(200, with_logprobs("hi", [("token_id:17", -0.25)], finish="length"), 0.0, {}),
                     (200, with_logprobs("hi", [("hi", -0.25)]), 0.0, {})]
    policy = make(server, logprobs=True)
    assert (await policy.areply(TURNS, sampling=Sampling())).truncated is True
    plain = await policy.areply(TURNS, sampling=Sampling())  # a server that ignored the id option
    assert plain.token_ids == [] and plain.logprobs == []


async def test_logprobs_off_by_default(server, key):
    reply = await make(server).areply(TURNS, sampling=Sampling())
    assert "logprobs" not in server.bodies()[0] and reply.logprobs == []
