"""Experience extractors: the offline rule extractor on hand-built contrasting rollouts."""

from __future__ import annotations

import json
import re
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from genevolve.evolve.bullets import NOT_IMPERATIVE, clean_bullet
from genevolve.evolve.experience import SLOTS, ExperienceBundle
from genevolve.evolve.extractors import (
    EXTRACTORS,
    ExtractionError,
    Measures,
    RuleExtractor,
    _failures,
    _knowledge,
    _prompt,
    _references,
    _search,
    measure,
)
from genevolve.evolve.llm_extractor import LLMExtractor, read_reply
from genevolve.registry import ConfigError, build
from genevolve.skills import SKILL_NAMES
from tests.evolve_fixtures import REQUEST, careful, careless
from tests.test_policy_openai import FakeOpenAI, completion

ENTITY_WORDS = ("eiffel", "bon voyage", "voyage", "paris", "img_00")


def assert_valid_bullets(bundle: ExperienceBundle) -> None:
    for slot in SLOTS:
        bullets = getattr(bundle, slot)
        assert 1 <= len(bullets) <= 4, slot
        for b in bullets:
            assert 10 <= len(b.split()) <= 22, b
            assert b.split()[0].lower() not in NOT_IMPERATIVE and not re.match(r"\w+(ing|ed)\b", b), b
            assert not any(e in b.lower() for e in ENTITY_WORDS), b
    text = bundle.key.summary + bundle.key.trigger
    assert not any(e in text.lower() for e in ENTITY_WORDS)


def test_measures_read_calls_skills_references_and_the_program():
    b, w = measure(careful()), measure(careless())
    assert (b.searches, b.image_searches, b.skills) == (1, 2, ["text_rendering", "quantity_counting"])
    assert (w.searches, w.image_searches, w.repeated, w.format_errors) == (0, 2, 1, 1)
    assert (b.references, b.noted_references, b.on_topic_references, w.noted_references) == (2, 2, 2, 0)
    assert (b.quotes_kept, b.has_count, b.ordinals) == (1, True, 2)
    assert (w.quotes_kept, w.has_count, w.ordinals) == (0, False, 0)
    assert b.layout_terms > w.layout_terms and b.prompt_words > 2 * w.prompt_words
    assert w.dims["text_accuracy"] == 0.0 and w.missing


def test_rule_bundle_names_each_difference_in_the_right_slot():
    bundle = RuleExtractor().extract(careful(), careless())
    assert_valid_bullets(bundle)
    guide = bundle.to_guide()
    assert "text search on the main subject" in bundle.search_strategy[0]
    assert any("Never repeat" in b for b in bundle.search_strategy)
    assert "text_rendering and quantity_counting" in bundle.knowledge_activation[0]
    assert any("note" in b for b in bundle.reference_selection)
    assert any("verbatim" in b for b in bundle.prompt_construction)
    assert any("explicit number" in b for b in bundle.prompt_construction)
    # the heaviest lost dimensions come first (text and identity weigh 0.4 each)
    assert "text" in bundle.failure_avoidance[0] or "identity" in bundle.failure_avoidance[0]
    assert "exact readable text" in bundle.key.trigger and "named real-world subjects" in bundle.key.trigger
    assert "the required text" in bundle.key.summary
    p = bundle.provenance
    assert (p.request_id, p.step, p.extractor, p.request) == ("req-7", 3, "rules", REQUEST)
    assert guide.count("\n- ") == sum(len(getattr(bundle, s)) for s in SLOTS)


def test_without_differences_slots_state_the_best_behaviour_as_a_standard():
    bundle = RuleExtractor().extract(careful(), careful(), step=9)
    assert_valid_bullets(bundle)
    assert bundle.search_strategy == ["Keep this search plan: 1 text search, then 2 image searches, before "
                                      "writing the answer."]
    assert "text_rendering and quantity_counting" in bundle.knowledge_activation[0]
    assert bundle.provenance.step == 9 and bundle.provenance.gap == 0


def test_failed_judge_checks_by_skill_lead_the_failure_slot():
    best, worst = careful(), careless()
    best.image_score.diagnostics["skills"] = {"quantity_counting": {"passed": 2, "failed": 0},
                                              "spatial_layout": {"passed": 1, "failed": 1}}
    worst.image_score.diagnostics["skills"] = {"quantity_counting": {"passed": 0, "failed": 2},
                                               "spatial_layout": {"passed": 0, "failed": 2},
                                               "reference": {"passed": 1, "failed": 0}, "odd": "shape"}
    assert measure(worst).failed_checks == {"quantity_counting": 2, "spatial_layout": 2}
    bundle = RuleExtractor().extract(best, worst)
    assert_valid_bullets(bundle)
    assert bundle.failure_avoidance[0].startswith("Avoid vague quantities")  # the larger difference first
    assert bundle.failure_avoidance[1].startswith("Avoid implicit positions")


def test_reversed_pair_still_yields_valid_bullets():
    assert_valid_bullets(RuleExtractor().extract(careless(), careful()))


def test_the_extractor_is_deterministic_and_registered():
    a, b = RuleExtractor().extract(careful(), careless()), RuleExtractor().extract(careful(), careless())
    assert a.slots() == b.slots() and a.key == b.key
    assert isinstance(build(EXTRACTORS, "rules", "extractor"), RuleExtractor)


measures = st.builds(
    Measures, searches=st.integers(0, 4), image_searches=st.integers(0, 6), query_words=st.floats(0, 12),
    skills=st.lists(st.sampled_from(SKILL_NAMES), unique=True, max_size=4), repeated=st.integers(0, 3),
    tool_errors=st.integers(0, 2), format_errors=st.integers(0, 2), references=st.integers(0, 5),
    noted_references=st.integers(0, 2), on_topic_references=st.integers(0, 2), prompt_words=st.integers(0, 400),
    quotes_kept=st.integers(0, 2), has_count=st.booleans(), layout_terms=st.integers(0, 4),
    ordinals=st.integers(0, 2),
    dims=st.fixed_dictionaries({d: st.sampled_from([0.0, 0.5, 1.0]) for d in
                                ("faithfulness", "visual_correctness", "aesthetics")}
                               | {"text_accuracy": st.sampled_from([None, 0.0, 0.5, 1.0])}),
    program_score=st.sampled_from([None, 0.0, 0.5, 1.0]), missing=st.lists(st.just("text"), max_size=1),
    failed_checks=st.dictionaries(st.sampled_from([*SKILL_NAMES, "search", "reference", "other"]),
                                  st.integers(1, 3), max_size=4))


@settings(max_examples=150, deadline=None)
@given(measures, measures)
def test_every_template_is_a_valid_bullet_as_written(b, w):
    for bullets in (_search(b, w), _knowledge(b, w), _references(b, w), _prompt(b, w), _failures(b, w)):
        assert bullets
        for raw in bullets:
            assert clean_bullet(raw) == (raw, []), raw


# -- the LLM extractor against a loopback OpenAI-compatible server ------------------------------------


KEY_ENV = "GENEVOLVE_TEST_EXTRACTOR_KEY"
GOOD = {
    "analysis": "A searched the landmark and quoted the text; B did neither.",
    "search_strategy": ["Search the Eiffel Tower by name before any image search so the reference shows the real landmark."],
    "knowledge_activation": ["Query text_rendering guidance whenever the request asks for readable words on a surface."],
    "reference_selection": ["Choose IMG_001 style references whose titles name the landmark itself rather than a similar tower."],
    "prompt_construction": ['Quote "BON VOYAGE" exactly in the prompt and say where the words sit in the poster layout.',
                            "Uses explicit numbers for every repeated object, such as exactly three balloons on one side."],
    "failure_avoidance": ["Avoid vague prompts that leave out the required text, the count and the layout of the scene."],
    "retrieval_key": {"trigger": "posters with exact text and a landmark",
                      "summary": "A night poster of the Eiffel Tower with a slogan and balloons"},
}


def good(**over) -> str:
    return json.dumps({**GOOD, **over})


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("GENEVOLVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(KEY_ENV, raising=False)
    srv = FakeOpenAI()
    srv.reply = good()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def llm(server, tmp_path, **kw) -> LLMExtractor:
    kw.setdefault("cache_dir", tmp_path / "extract-cache")
    kw.setdefault("backoff_base", 0.001)
    return LLMExtractor("extract-model", base_url=server.url, api_key_env=KEY_ENV, **kw)


def say(*texts: str) -> list:
    return [(200, completion(t, "extract-model"), 0.0, {}) for t in texts]


async def test_llm_good_reply_becomes_a_clean_bundle(server, tmp_path):
    bundle = await llm(server, tmp_path).aextract(careful(), careless())
    [body] = server.bodies()
    system, user = body["messages"]
    assert body["temperature"] == 0 and body["response_format"]["type"] == "json_schema"
    assert "imperative" in system["content"] and '"retrieval_key"' in system["content"]
    text = user["content"] if isinstance(user["content"], str) else user["content"][0]["text"]
    assert "Attempt A (higher reward)" in text and "query_knowledge" in text and "text_rendering" in text
    assert "the landmark reference is a different tower" in text and "BON VOYAGE" in text  # what it reads
    assert_valid_bullets(bundle)
    assert bundle.search_strategy[0].startswith("Search the subject by name")
    assert bundle.prompt_construction[1].startswith("Use explicit numbers")  # "Uses" made imperative
    assert "the required text" in bundle.prompt_construction[0]
    assert bundle.key.summary == "A night poster of the subject with a slogan and balloons"
    assert any("replaced" in n for n in bundle.provenance.repairs)
    assert bundle.provenance.extractor == "experience:extract-model"


async def test_llm_malformed_json_is_repaired_without_asking_again(server, tmp_path):
    server.script = say("Sure! Here it is:\n```json\n" + good()[:-1] + ",}\n```")
    bundle = await llm(server, tmp_path).aextract(careful(), careless())
    assert len(server.requests) == 1 and bundle.failure_avoidance


async def test_llm_schema_violation_is_reasked_with_the_error(server, tmp_path):
    bad = good(search_strategy=["The better attempt searched first."], retrieval_key={"trigger": "x", "summary": "y"})
    server.script = say(bad, good())
    bundle = await llm(server, tmp_path).aextract(careful(), careless())
    assert len(server.requests) == 2 and bundle.search_strategy
    reask = server.bodies()[1]["messages"][-1]["content"]
    assert "'search_strategy' has no valid bullet" in reask and "not imperative" in reask


async def test_llm_missing_field_after_retries_is_a_clear_error(server, tmp_path):
    reply = json.dumps({k: v for k, v in GOOD.items() if k != "retrieval_key"})
    server.reply = reply
    with pytest.raises(ExtractionError, match="retrieval_key") as err:
        await llm(server, tmp_path, parse_retries=1).aextract(careful(), careless())
    assert err.value.raw == reply and len(server.requests) == 2


async def test_llm_server_errors_and_timeouts(server, tmp_path):
    server.script = [(500, None, 0, {}), (503, None, 0, {})] + say(good())
    assert (await llm(server, tmp_path, max_retries=2).aextract(careful(), careless())).key.trigger
    server.script = [(500, None, 0, {})] * 3
    with pytest.raises(ExtractionError, match="500"):
        await llm(server, tmp_path, max_retries=1, use_cache=False).aextract(careless(), careful())
    server.script = [(200, None, 1.0, {})] * 2
    with pytest.raises(ExtractionError):
        await llm(server, tmp_path, max_retries=1, timeout=0.2, use_cache=False).aextract(careless(), careful())


async def test_llm_refused_key_and_missing_key(server, tmp_path, monkeypatch):
    server.script = [(401, None, 0, {})]
    with pytest.raises(ConfigError, match=KEY_ENV):
        await llm(server, tmp_path).aextract(careful(), careless())
    with pytest.raises(ConfigError, match=KEY_ENV):  # the public API needs a key: said before any call
        LLMExtractor("gpt-x", api_key_env=KEY_ENV)


async def test_llm_cache_and_images(server, tmp_path):
    a, b = careful(), careless()
    for r, color in ((a, (200, 30, 30)), (b, (30, 30, 200))):
        r.image_path = str(tmp_path / f"{r.sample}.png")
        Image.new("RGB", (40, 30), color).save(r.image_path)
    ex = llm(server, tmp_path, send_images=True)
    first = await ex.aextract(a, b)
    again = await ex.aextract(a, b)
    assert len(server.requests) == 1 and again.slots() == first.slots()
    assert "(cached)" in again.provenance.repairs[-1]
    parts = server.bodies()[0]["messages"][1]["content"]
    assert [p["type"] for p in parts].count("image_url") == 2


def test_llm_extractor_is_registered_and_sync_extract_works(server, tmp_path):
    ex = build(EXTRACTORS, "llm", "extractor", model="extract-model", base_url=server.url, api_key_env=KEY_ENV,
               cache_dir=tmp_path / "c")
    assert isinstance(ex, LLMExtractor) and ex.extract(careful(), careless()).knowledge_activation


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
                        [*SLOTS, "retrieval_key", "trigger", "summary"]), inner, max_size=6), max_leaves=20))
def test_reading_any_reply_raises_only_value_errors(obj):
    try:
        read_reply(obj if isinstance(obj, dict) else {"x": obj}, ["Paris"])
    except ValueError:
        pass
