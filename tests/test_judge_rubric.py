"""RubricJudge and SufficiencyJudge against a loopback /v1/chat/completions server, their parsers,
the disk cache and the shared rate limiter."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from genevolve.judge import JUDGES
from genevolve.judge.rubric import JudgeError, RubricJudge, parse_rubric
from genevolve.judge.sufficiency import SufficiencyJudge, SufficiencyScore, parse_sufficiency
from genevolve.ratelimit import RateLimiter, shared_limiter
from genevolve.registry import ConfigError, build
from genevolve.types import Program, Reference
from tests.test_policy_openai import FakeOpenAI, completion, decode_data_url

KEY_ENV = "GENEVOLVE_TEST_JUDGE_KEY"
RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def answer(f=1, v=0.5, t=None, a=1, **extra) -> str:
    body = {"constraints": ["a red fox", "the word 'HELLO'"],
            "faithfulness": {"rationale": "fox present", "score": f},
            "visual_correctness": {"rationale": "ears differ", "score": v},
            "text_accuracy": {"rationale": "no text required", "score": t},
            "aesthetics": {"rationale": "clean", "score": a}}
    return json.dumps({**body, **extra})


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("GENEVOLVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(KEY_ENV, raising=False)
    srv = FakeOpenAI()
    srv.reply = answer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def say(*texts: str) -> list[tuple[int, dict, float, dict]]:
    return [(200, completion(t, "judge-model"), 0.0, {}) for t in texts]


def make(server, tmp_path, cls=RubricJudge, **kw):
    kw.setdefault("cache_dir", tmp_path / "judge-cache")
    kw.setdefault("backoff_base", 0.001)
    return cls("judge-model", base_url=server.url, api_key_env=KEY_ENV, **kw)


def img(color, size=(64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


def image_parts(body: dict) -> list[dict]:
    return [p for p in body["messages"][-1]["content"] if p["type"] == "image_url"]


# -- request shape -----------------------------------------------------------------------------


async def test_request_has_rubric_two_images_in_order_and_temperature_zero(server, tmp_path):
    judge = make(server, tmp_path, max_image_side=32)
    score = await judge.ascore("a red fox", img(RED, (128, 64)), gt_image=img(BLUE))
    [body] = server.bodies()
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["top_p"] == 1
    assert body["response_format"]["type"] == "json_schema"
    system, user = body["messages"]
    assert "hard constraints" in system["content"] and "GROUND-TRUTH" in system["content"]
    kinds = [p["type"] for p in user["content"]]
    assert kinds == ["text", "image_url", "text", "image_url"]
    assert "a red fox" in user["content"][0]["text"] and "Image 1 (generated)" in user["content"][0]["text"]
    assert "Image 2 (ground truth)" in user["content"][2]["text"]
    first, second = (decode_data_url(p["image_url"]["url"]) for p in image_parts(body))
    assert first.size == (32, 16)  # capped at max_image_side, re-encoded as JPEG
    assert first.format == "JPEG" and first.getpixel((8, 8))[0] > 150  # red generated image first
    assert second.getpixel((8, 8))[2] > 150  # blue GT second
    assert (score.faithfulness, score.visual_correctness, score.text_accuracy, score.aesthetics) == (1, 0.5, None, 1)
    assert score.overall == pytest.approx(0.1 + 0.2 + 0.2 + 0.1)  # N/A text counts 0.5
    assert score.constraints == ["a red fox", "the word 'HELLO'"]
    assert "visual_correctness: ears differ" in score.rationale and score.judge == "rubric:judge-model"
    assert score.diagnostics["with_gt"] is True and score.diagnostics["cached"] is False


async def test_without_gt_sends_one_image_and_the_no_gt_rubric(server, tmp_path):
    await make(server, tmp_path).ascore("a fox", img(RED))
    [body] = server.bodies()
    system, user = body["messages"]
    assert "No ground-truth image" in system["content"] and "Image 2" not in system["content"]
    assert len(image_parts(body)) == 1 and "Image 2" not in json.dumps(user)


async def test_alpha_image_is_flattened_and_placeholder_text_is_harmless(server, tmp_path):
    sprite = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    await make(server, tmp_path).ascore("draw <image> literally", sprite)
    part = image_parts(server.bodies()[0])[0]
    assert decode_data_url(part["image_url"]["url"]).convert("RGB").getpixel((5, 5)) == (255, 255, 255)


async def test_structured_none_sends_no_response_format(server, tmp_path):
    await make(server, tmp_path, structured="none").ascore("a fox", img(RED))
    assert "response_format" not in server.bodies()[0]


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    (answer(), (1, 0.5, None, 1)),
    ("```json\n" + answer(t=1) + "\n```", (1, 0.5, 1, 1)),
    ("Here is my judgement:\n" + answer(f=0) + "\nThanks.", (0, 0.5, None, 1)),
    (answer(f="0.5", t="N/A"), (0.5, 0.5, None, 1)),
    (answer(t="n/a", a="1"), (1, 0.5, None, 1)),
    (answer(f=0.7, v=0.8, t=0.2), (0.5, 1, 0, 1)),  # snapped to {0, 0.5, 1}
    (answer()[:-1] + ",}", (1, 0.5, None, 1)),  # trailing comma
    (json.dumps({"faithfulness": 1, "visual_correctness": "0", "text_accuracy": None, "aesthetics": 0.5,
                 "faithfulness_rationale": "ok"}), (1, 0, None, 0.5)),  # flat shape
])
def test_parse_and_repair(text, expected):
    s = parse_rubric(text)["scores"]
    assert (s["faithfulness"], s["visual_correctness"], s["text_accuracy"], s["aesthetics"]) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("I cannot judge this image.", "no JSON object"),
    (answer(f=None), "faithfulness"),
    (answer(v=5), "outside"),
    (answer(a="great"), "great"),
    (answer(f=True), "not a number"),
    (json.dumps({"faithfulness": 1}), "visual_correctness"),
    ("[1, 0.5, null, 1]", "no JSON object"),
])
def test_parse_failures_raise_judge_error_with_raw(text, why):
    with pytest.raises(JudgeError, match=why) as info:
        parse_rubric(text)
    assert info.value.raw == text


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["faithfulness", "visual_correctness", "text_accuracy", "aesthetics", "score",
                         "rationale", "constraints", "missing", "x"]), inner, max_size=6),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), json_values.map(json.dumps), json_values.map(lambda v: f"```json\n{json.dumps(v)}\n```")))
def test_parsers_raise_only_judge_error(text):
    for parse in (parse_rubric, parse_sufficiency):
        try:
            parse(text)
        except JudgeError as exc:
            assert exc.raw == text


# -- retries and failures ----------------------------------------------------------------------


async def test_unparsable_reply_is_reasked_then_succeeds(server, tmp_path):
    server.script = say("Sure! The image looks great.", answer(t=1))
    score = await make(server, tmp_path).ascore("a fox", img(RED), gt_image=img(BLUE))
    assert score.text_accuracy == 1 and score.diagnostics["attempts"] == 2
    second = server.bodies()[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == "Sure! The image looks great."
    assert "no JSON object" in second[3]["content"]


async def test_reasks_run_out_with_raw_text_attached(server, tmp_path):
    server.script = say("nope", "still nope", "never")
    with pytest.raises(JudgeError, match="3 attempt") as info:
        await make(server, tmp_path, parse_retries=2).ascore("a fox", img(RED))
    assert info.value.raw == "never" and len(server.requests) == 3


async def test_server_errors_are_retried_then_judge_error(server, tmp_path):
    server.script = [(503, None, 0, {})] * 2 + say(answer())
    assert (await make(server, tmp_path, max_retries=2).ascore("a fox", img(RED))).faithfulness == 1
    server.script = [(500, None, 0, {})] * 2
    with pytest.raises(JudgeError, match="500"):
        await make(server, tmp_path, max_retries=1).ascore("another fox", img(RED))


async def test_bad_key_is_a_config_error(server, tmp_path):
    server.script = [(401, {"error": {"message": "bad key"}}, 0, {})]
    with pytest.raises(ConfigError, match="401"):
        await make(server, tmp_path).ascore("a fox", img(RED))


# -- cache -------------------------------------------------------------------------------------


async def test_cache_hit_makes_no_request(server, tmp_path):
    judge = make(server, tmp_path)
    first = await judge.ascore("a fox", img(RED), gt_image=img(BLUE))
    again = await make(server, tmp_path).ascore("a fox", img(RED), gt_image=img(BLUE))  # a fresh judge
    assert len(server.requests) == 1
    assert again.diagnostics["cached"] is True and again.overall == first.overall
    assert again.rationale == first.rationale
    await judge.ascore("a fox", img(RED), gt_image=img(GREEN))  # another GT: another key
    await judge.ascore("a fox", img(RED))  # no GT: another key
    assert len(server.requests) == 3
    files = list((tmp_path / "judge-cache").rglob("*.json"))
    assert len(files) == 3 and json.loads(files[0].read_text())["raw"]


async def test_cache_key_includes_model_and_can_be_disabled(server, tmp_path):
    await make(server, tmp_path).ascore("a fox", img(RED))
    other = RubricJudge("other-model", base_url=server.url, api_key_env=KEY_ENV, cache_dir=tmp_path / "judge-cache")
    await other.ascore("a fox", img(RED))
    off = make(server, tmp_path, use_cache=False)
    await off.ascore("a fox", img(RED))
    assert len(server.requests) == 3


async def test_corrupt_cache_entry_is_a_miss(server, tmp_path):
    await make(server, tmp_path).ascore("a fox", img(RED))
    [path] = (tmp_path / "judge-cache").rglob("*.json")
    path.write_text("{not json")
    assert (await make(server, tmp_path).ascore("a fox", img(RED))).diagnostics["cached"] is False
    assert len(server.requests) == 2


def test_sync_score_and_registry(server, tmp_path):
    judge = build(JUDGES, "rubric", "judge", model="judge-model", base_url=server.url, api_key_env=KEY_ENV,
                  cache_dir=str(tmp_path / "c"))
    assert isinstance(judge, RubricJudge)
    assert judge.score("a fox", img(RED)).faithfulness == 1
    assert judge.score("a fox", img(RED)).diagnostics["cached"] is True  # a fresh event loop, same cache


# -- limits ------------------------------------------------------------------------------------


async def test_judge_calls_respect_concurrency_and_rate(server, tmp_path):
    server.script = [(200, None, 0.05, {})] * 8
    judge = make(server, tmp_path, max_concurrency=2, requests_per_minute=1200, use_cache=False)  # 20/s
    start = time.monotonic()
    await asyncio.gather(*(judge.ascore(f"fox {i}", img(RED)) for i in range(8)))
    assert server.max_in_flight <= 2
    assert time.monotonic() - start >= (8 - 1) / 20 - 0.02  # burst 1: the 8th waits for 7 refills


async def test_rate_limiter_counts_in_any_window():
    limiter = RateLimiter(requests_per_minute=3000, burst=2)  # 50/s
    starts: list[float] = []

    async def one() -> None:
        async with limiter:
            starts.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(12)))
    starts.sort()
    for i in range(len(starts)):  # any window [t_i, t_j] holds at most burst + rate * width starts
        for j in range(i + 1, len(starts)):
            assert j - i + 1 <= 2 + 50 * (starts[j] - starts[i]) + 1e-6
    assert limiter.started == 12


def test_limiter_bounds_concurrency_across_event_loops_and_threads():
    limiter = RateLimiter(max_concurrency=2)
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    async def one() -> None:
        async with limiter:
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            await asyncio.sleep(0.01)
            with lock:
                state["now"] -= 1

    async def many() -> None:
        await asyncio.gather(*(one() for _ in range(6)))

    threads = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert state["max"] == 2 and limiter.in_flight == 0


async def test_cancelled_waiter_does_not_leak_a_slot():
    limiter = RateLimiter(max_concurrency=1)
    gate = asyncio.Event()

    async def holder() -> None:
        async with limiter:
            await gate.wait()

    async def quick() -> str:
        async with limiter:
            return "ran"

    task = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(quick())
    await asyncio.sleep(0.01)
    waiter.cancel()
    gate.set()
    await task
    assert await asyncio.wait_for(quick(), 1) == "ran"
    assert limiter.in_flight == 0


def test_shared_limiter_groups():
    a = shared_limiter("test-group-x", 60, 4)
    assert shared_limiter("test-group-x", 60, 4) is a
    with pytest.raises(ConfigError, match="test-group-x"):
        shared_limiter("test-group-x", 120, 4)
    with pytest.raises(ConfigError, match="requests_per_minute"):
        RateLimiter(requests_per_minute=0)


async def test_judges_in_one_group_share_the_limiter(server, tmp_path):
    rubric = make(server, tmp_path, limit_group="test-endpoint", max_concurrency=3)
    suff = make(server, tmp_path, cls=SufficiencyJudge, limit_group="test-endpoint", max_concurrency=3)
    assert rubric.limiter is suff.limiter


# -- sufficiency -------------------------------------------------------------------------------


def suff_answer(score, missing=()) -> str:
    return json.dumps({"missing": list(missing), "rationale": "the prompt names the fox", "score": score})


def program_with_refs(tmp_path, n=2) -> Program:
    refs = []
    for i, color in enumerate([RED, GREEN][:n], 1):
        path = tmp_path / f"ref{i}.png"
        img(color).save(path)
        refs.append(Reference(img_id=f"IMG_00{i}", path=str(path), note=f"ref {i}"))
    return Program(gen_prompt="the fox from the first image beside the second image", references=refs)


async def test_sufficiency_shape_bins_and_cache(server, tmp_path):
    server.script = say(suff_answer("0.6", ["the sign's wording"]))
    judge = make(server, tmp_path, cls=SufficiencyJudge)
    program = program_with_refs(tmp_path)
    result = await judge.ascore("a fox next to a bush", program, img(BLUE))
    assert isinstance(result, SufficiencyScore)
    assert result.score == 0.5 and result.missing == ["the sign's wording"]  # 0.6 snapped to a bin
    assert result.judge == "sufficiency:judge-model" and result.rationale
    [body] = server.bodies()
    assert body["temperature"] == 0 and "PERFECT generator" in body["messages"][0]["content"]
    texts = [p.get("text", "") for p in body["messages"][1]["content"]]
    assert "the fox from the first image" in texts[0]
    colors = [decode_data_url(p["image_url"]["url"]).convert("RGB").getpixel((4, 4)) for p in image_parts(body)]
    assert [max(range(3), key=c.__getitem__) for c in colors] == [0, 1, 2]  # red ref, green ref, blue GT
    again = await make(server, tmp_path, cls=SufficiencyJudge).ascore("a fox next to a bush", program, img(BLUE))
    assert again.score == 0.5 and again.diagnostics["cached"] is True and len(server.requests) == 1


async def test_sufficiency_without_references_and_with_a_missing_one(server, tmp_path):
    server.script = say(suff_answer(1))
    judge = make(server, tmp_path, cls=SufficiencyJudge)
    result = await judge.ascore("a fox", Program(gen_prompt="a red fox"), img(BLUE))
    assert result.score == 1 and len(image_parts(server.bodies()[0])) == 1
    broken = Program(gen_prompt="x", references=[Reference(img_id="IMG_009", path=str(tmp_path / "gone.png"))])
    with pytest.raises(JudgeError, match="IMG_009"):
        await judge.ascore("a fox", broken, img(BLUE))


@pytest.mark.parametrize(("text", "score"), [
    (suff_answer(0.75), 0.75), (suff_answer("1"), 1.0), (suff_answer(0.1), 0.0), (suff_answer(0.4), 0.5),
    ('{"score": {"score": 0.25, "rationale": "vague"}}', 0.25),
])
def test_parse_sufficiency(text, score):
    assert parse_sufficiency(text)["score"] == score


def test_parse_sufficiency_rejects_na():
    with pytest.raises(JudgeError):
        parse_sufficiency(suff_answer("N/A"))
