"""Visual experience: rollout records, best-worst pair selection, bundles and bullet validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genevolve.evolve.bullets import clean_bullet, clean_slot, request_entities, strip_entities
from genevolve.evolve.experience import SLOTS, ExperienceBundle, Pair, RetrievalKey, select_pairs
from genevolve.evolve.rollout import Rollout
from genevolve.prompts import system_prompt
from tests.evolve_fixtures import careful, careless, rollout


def test_rollout_json_round_trip_keeps_scores_and_trajectory():
    for r in (careful(), careless(), rollout(0.3, failure="no_answer")):
        back = Rollout.from_json(r.to_json())
        assert back == r and back.trajectory.tool_calls == r.trajectory.tool_calls
    assert careless().image_score.text_accuracy == 0.0 and rollout(0, failure="render_error").failed


# -- pair selection ---------------------------------------------------------------------------------


def group(values, g=0, failures=None):
    failures = failures or {}
    return [rollout(v, failure=failures.get(i), group=g, sample=i) for i, v in enumerate(values)]


def test_best_and_worst_by_reward_and_the_gap_threshold_is_inclusive():
    sel = select_pairs([group([0.5, 0.9, 0.7, 0.2]), group([0.7, 0.5], g=1), group([0.6, 0.45], g=2)])
    assert [(p.best.sample, p.worst.sample, p.best.group) for p in sel.pairs] == [(1, 3, 0), (0, 1, 1)]
    assert sel.pairs[1].gap == pytest.approx(0.2)  # 0.7 - 0.5 is 0.19999999999999996 in floats: kept
    assert sel.skipped == {"small_gap": 1}


def test_a_worst_that_failed_the_protocol_drops_the_pair():
    sel = select_pairs([group([0.8, 0.0, 0.3], failures={1: "no_answer"})])
    assert sel.pairs == [] and sel.skipped == {"worst_failed": 1}
    # a render or judge failure says nothing about the strategy either
    assert select_pairs([group([0.8, 0.0], failures={1: "judge_error"})]).pairs == []
    # an explicit set of excluded failures lets other failures through
    sel = select_pairs([group([0.8, 0.0], failures={1: "judge_error"})], excluded_failures={"no_answer"})
    assert len(sel.pairs) == 1
    # the option to pick the worst among valid rollouts (not the paper's rule)
    sel = select_pairs([group([0.8, 0.0, 0.3], failures={1: "no_answer"})], worst_among_valid=True)
    assert [(p.best.sample, p.worst.sample) for p in sel.pairs] == [(0, 2)]
    sel = select_pairs([group([0.8, 0.0], failures={1: "no_answer"})], worst_among_valid=True)
    assert sel.skipped == {"worst_failed": 1}


def test_a_valid_zero_is_preferred_over_a_failed_zero_on_ties():
    sel = select_pairs([group([0.0, 0.0, 0.6], failures={0: "invalid_answer"})])
    assert [(p.best.sample, p.worst.sample) for p in sel.pairs] == [(2, 1)]
    assert not sel.pairs[0].worst.failed


def test_ties_are_broken_by_sample_index_and_equal_gaps_keep_group_order():
    sel = select_pairs([group([0.9, 0.9, 0.4, 0.4], g=0), group([0.5, 0.0], g=1)])
    (a, b) = sel.pairs
    assert (a.best.sample, a.worst.sample, a.best.group) == (0, 2, 0)
    assert b.best.group == 1 and a.gap == pytest.approx(b.gap)


def test_cap_keeps_the_largest_gaps():
    groups = [group([0.3 + 0.05 * g, 0.0], g=g) for g in range(12)]
    sel = select_pairs(groups, max_pairs=8)
    assert [p.best.group for p in sel.pairs] == list(range(11, 3, -1))
    assert sel.skipped == {"over_cap": 4}
    assert select_pairs(groups, max_pairs=0).pairs == []
    assert select_pairs(groups, min_gap=0.6).skipped["small_gap"] == 6


def test_a_group_of_one_and_bad_parameters():
    assert select_pairs([group([0.9])]).skipped == {"too_small": 1}
    with pytest.raises(ValueError, match="min_gap"):
        select_pairs([], min_gap=-0.1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=6),
                max_size=12), st.integers(0, 8))
def test_selection_properties(values, cap):
    groups = [group(v, g=g) for g, v in enumerate(values)]
    sel = select_pairs(groups, max_pairs=cap)
    gaps = [p.gap for p in sel.pairs]
    assert len(sel.pairs) <= cap and gaps == sorted(gaps, reverse=True)
    assert all(g >= 0.2 - 1e-9 for g in gaps) and sum(sel.skipped.values()) + len(sel.pairs) == len(groups)
    for p in sel.pairs:
        members = [r.reward.value for r in groups[p.best.group]]
        assert p.best.reward.value == max(members) and p.worst.reward.value == min(members)


# -- the bundle --------------------------------------------------------------------------------------


def bundle(**over) -> ExperienceBundle:
    pair = Pair(careful(), careless())
    slots = {s: [f"Do the {s.replace('_', ' ')} step carefully before writing the final program answer."]
             for s in SLOTS}
    return ExperienceBundle(**{**slots, **over}, key=RetrievalKey(trigger="posters with text", summary="a poster"),
                            provenance=pair.provenance(extractor="test"))


def test_bundle_round_trip_guide_and_provenance():
    b = bundle()
    assert ExperienceBundle.from_json(b.to_json()) == b
    p = b.provenance
    assert (p.request_id, p.step, p.best_reward, p.worst_reward) == ("req-7", 3, 0.9, 0.2)
    assert p.gap == pytest.approx(0.7) and p.best_id and p.worst_id and p.extractor == "test"
    guide = b.to_guide()
    assert guide.index("Search strategy:") < guide.index("Failure avoidance:")
    assert "Applies to: posters with text" in guide and guide.count("\n- ") == 5
    prompt = system_prompt([], guide=guide)
    assert "Current-task decision guide" in prompt and "Prompt construction:" in prompt


def test_a_bundle_needs_every_slot():
    with pytest.raises(ValueError, match="at least one bullet"):
        bundle(search_strategy=["  "])


# -- bullets ----------------------------------------------------------------------------------------


def test_request_entities_find_names_and_quotes_but_not_request_words():
    found = request_entities(['Draw the Golden Gate Bridge at dusk with a sign reading "OPEN 24H"',
                              "A poster of three cats. Tokyo tower in rain, Japanese woodblock style"])
    assert set(found) == {"Golden Gate Bridge", '"OPEN 24H"', "Tokyo", "Japanese"}


def test_strip_entities_replaces_names_quotes_ids_and_urls():
    text, n = strip_entities("Search the Golden Gate Bridge, quote 'OPEN 24H', pick IMG_004 from https://x.io/a",
                             ["Golden Gate Bridge"])
    assert text == "Search the subject, quote the required text, pick the chosen image from the source page"
    assert n == 4
    text, _ = strip_entities("Prefer photos of the Louvre Museum over drawings", [])
    assert "Louvre" not in text and text.startswith("Prefer photos of the subject")
    assert strip_entities("Keep JSON and OCR acronyms", [])[0] == "Keep JSON and OCR acronyms"


@pytest.mark.parametrize(("raw", "expected"), [
    ("- Searches for the landmark by name before any image search so the reference matches the request.",
     "Search for the landmark by name before any image search so the reference matches the request."),
    ("You should quote every required word exactly and name the surface that carries the text.",
     "Quote every required word exactly and name the surface that carries the text."),
    ("The best rollout searched twice before answering with two references and a long prompt.", None),
    ("Searching twice before answering helps the program find the right reference image.", None),
    ("Count things.", None),
])
def test_clean_bullet(raw, expected):
    assert clean_bullet(raw)[0] == expected


def test_long_bullets_are_cut_at_a_clause_or_at_the_word_limit():
    long = ("Check the count of every repeated object in the request and state it as a number in the prompt; "
            "otherwise the generator tends to add or drop a few instances at random.")
    out, notes = clean_bullet(long)
    assert out == "Check the count of every repeated object in the request and state it as a number in the prompt."
    assert any("shortened" in n for n in notes)
    out, _ = clean_bullet(" ".join(["Place"] + ["object"] * 40))
    assert len(out.split()) == 22


def test_clean_slot_drops_duplicates_and_caps():
    bullets = ["Use a layout phrase for every object so the generator places each one where asked."] * 2
    bullets += [f"Use short query number {i} with the main subject noun and one distinguishing attribute." for i in range(6)]
    kept, notes = clean_slot(bullets, max_bullets=3)
    assert len(kept) == 3 and len({k.lower() for k in kept}) == 3 and "kept the first 3" in notes[-1]


@settings(max_examples=80, deadline=None)
@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300),
       st.lists(st.text(min_size=1, max_size=20), max_size=3))
def test_clean_bullet_never_raises_and_output_is_within_bounds(raw, entities):
    out, notes = clean_bullet(raw, entities)
    assert isinstance(notes, list)
    if out is not None:
        assert 10 <= len(out.split()) <= 22 and out[0] == out[0].upper() and out.endswith((".", "!"))
