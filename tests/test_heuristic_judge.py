"""The offline heuristic judge: OCR text checks, manifest checks, GT similarity, rubric arithmetic."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image, ImageDraw

from genevolve.judge.base import overall
from genevolve.judge.heuristic import HeuristicJudge, image_similarity, substring_similarity, text_grades
from genevolve.render.collage import CollageRenderer
from genevolve.types import Program, Reference

REQUEST = 'Three red apples on the left and a cat on the right, under a sign at the top that reads "OPEN 24 HOURS".'
GOOD = ('Three red apples from the first reference image on the left. A cat on the right. '
        'A sign at the top reads "OPEN 24 HOURS".')
RUBRIC = {0.0, 0.5, 1.0}


@pytest.fixture(scope="module")
def apple(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("refs") / "apple.png"
    im = Image.new("RGB", (200, 220), "white")
    ImageDraw.Draw(im).ellipse((20, 50, 180, 210), fill=(60, 170, 60), outline=(30, 90, 30), width=4)
    im.save(path)
    return str(path)


@pytest.fixture(scope="module")
def judge() -> HeuristicJudge:
    """One judge for the module: OCR and MiniLM load once (a few seconds together)."""
    return HeuristicJudge()


@pytest.fixture(scope="module")
def render(apple):
    renderer = CollageRenderer()

    def _render(prompt: str, seed: int = 0):
        return renderer.render(Program(gen_prompt=prompt, references=[Reference(img_id="IMG_001", path=apple)]),
                               seed=seed)
    return _render


@pytest.fixture(scope="module")
def good(render):
    return render(GOOD)


def in_rubric(score) -> bool:
    dims = [score.faithfulness, score.visual_correctness, score.aesthetics]
    return all(v in RUBRIC for v in dims) and score.text_accuracy in RUBRIC | {None}


def test_text_check_passes_for_the_right_text(judge, good):
    s = judge.score(REQUEST, good.image, gt_image=good.image, meta=good.meta)
    assert s.text_accuracy == 1.0 and in_rubric(s) and s.heuristic and s.judge == "heuristic"
    assert 'text "OPEN 24 HOURS"' in s.constraints and "3 red apple (left)" in s.constraints
    assert s.overall == pytest.approx(overall(s.faithfulness, s.visual_correctness, s.text_accuracy, s.aesthetics))
    assert s.faithfulness == 1.0 and s.visual_correctness == 1.0
    assert '"OPEN 24 HOURS" ok' in s.rationale


def test_text_check_fails_for_a_wrong_text(judge, good):
    s = judge.score('A sign that reads "CLOSED FOR LUNCH".', good.image, meta=good.meta)
    assert s.text_accuracy == 0.0
    assert s.diagnostics["text"][0]["similarity"] < 0.8


def test_text_is_na_when_the_request_quotes_nothing(judge, good):
    s = judge.score("Three red apples on the left and a cat on the right.", good.image, meta=good.meta)
    assert s.text_accuracy is None and "ocr" not in s.diagnostics
    assert s.overall == pytest.approx(overall(s.faithfulness, s.visual_correctness, 0.5, s.aesthetics))


def test_identical_image_scores_higher_visual_correctness_than_a_different_one(judge, render, good):
    other = render("A blue car in the bottom right corner on a beach at night.")
    same = judge.score(REQUEST, good.image, gt_image=good.image, meta=good.meta)
    diff = judge.score(REQUEST, other.image, gt_image=good.image, meta=other.meta)
    assert same.visual_correctness == 1.0 and diff.visual_correctness < same.visual_correctness
    assert diff.faithfulness < same.faithfulness and in_rubric(diff)


def test_vague_program_scores_lower_than_a_skilled_one(judge, render, good):
    vague = render('apples, a cat and a sign with open 24 hours, red', seed=2)
    s_vague = judge.score(REQUEST, vague.image, gt_image=good.image, meta=vague.meta)
    s_good = judge.score(REQUEST, good.image, gt_image=good.image, meta=good.meta)
    assert s_vague.overall < s_good.overall
    assert any(c["value"] < 1 for c in s_vague.diagnostics["checks"])


def test_without_manifest_layout_is_unverifiable(judge, good):
    s = judge.score(REQUEST, good.image)
    assert s.text_accuracy == 1.0 and s.faithfulness == 0.5 and s.visual_correctness == 0.5
    assert "could not be verified" in s.rationale


def test_token_overlap_fallback_without_embeddings(good):
    s = HeuristicJudge(embeddings=False).score("Three red apples on the left and a cat on the right.",
                                               good.image, meta=good.meta)
    assert s.diagnostics["semantic_method"].startswith("token_overlap") and in_rubric(s)


def test_blank_image_gets_no_aesthetics_and_async_path(judge):
    blank = Image.new("RGB", (256, 256), (128, 128, 128))
    s = asyncio.run(judge.ascore("A cat.", blank, gt_image=blank))
    assert s.aesthetics == 0.0 and s.text_accuracy is None


def test_string_similarity_helpers():
    assert substring_similarity("open 24 hours", "we are open 24 hours daily") == 1.0
    assert substring_similarity("open 24 hours", "opem 24 hours") == pytest.approx(1 - 1 / 13)
    assert [g for _, _, g in text_grades(["Rosie's Bakery", "SUMMER SALE", "OPEN"],
                                               ["ROSIE’S", "BAKERY", "SUMMER SAIE"])] == [1.0, 0.5, 0.0]


def test_image_similarity_is_one_for_identical_images(good, render):
    assert image_similarity(good.image, good.image)["combined"] == pytest.approx(1.0)
    assert image_similarity(good.image, render("A blue car at night.").image)["combined"] < 0.6
