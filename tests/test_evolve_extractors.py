"""Experience extractors: the offline rule extractor on hand-built contrasting rollouts."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from genevolve.evolve.bullets import NOT_IMPERATIVE, clean_bullet
from genevolve.evolve.experience import SLOTS, ExperienceBundle
from genevolve.evolve.extractors import (
    EXTRACTORS,
    Measures,
    RuleExtractor,
    _failures,
    _knowledge,
    _prompt,
    _references,
    _search,
    measure,
)
from genevolve.registry import build
from genevolve.skills import SKILL_NAMES
from tests.evolve_fixtures import REQUEST, careful, careless

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
    program_score=st.sampled_from([None, 0.0, 0.5, 1.0]), missing=st.lists(st.just("text"), max_size=1))


@settings(max_examples=150, deadline=None)
@given(measures, measures)
def test_every_template_is_a_valid_bullet_as_written(b, w):
    for bullets in (_search(b, w), _knowledge(b, w), _references(b, w), _prompt(b, w), _failures(b, w)):
        assert bullets
        for raw in bullets:
            assert clean_bullet(raw) == (raw, []), raw
