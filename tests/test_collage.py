"""The collage renderer: determinism, the fidelity model, the manifest, text that OCR reads back."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from genevolve.render.base import RenderError
from genevolve.render.collage import CollageRenderer
from genevolve.render.prompt_parse import parse_prompt
from genevolve.types import Program, Reference


def make_apple(path: Path) -> Path:
    """A green apple on a white background (the border gets keyed out)."""
    im = Image.new("RGB", (200, 220), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((20, 50, 180, 210), fill=(60, 170, 60), outline=(30, 90, 30), width=4)
    d.rectangle((95, 15, 105, 60), fill=(100, 60, 20))
    im.save(path)
    return path


def make_bar(path: Path) -> Path:
    """A 2:1 transparent sprite, to check that sprites keep their aspect ratio."""
    im = Image.new("RGBA", (240, 160), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle((20, 30, 219, 129), fill=(40, 90, 200, 255))
    im.save(path)
    return path


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("refs")
    return {"apple": str(make_apple(d / "apple.png")), "bar": str(make_bar(d / "bar.png"))}


@pytest.fixture(scope="module")
def renderer() -> CollageRenderer:
    return CollageRenderer()


@pytest.fixture(scope="module")
def ocr():
    """The OCR reader, loaded once for the module (about 1 s)."""
    from genevolve.judge.heuristic import ocr_engine, read_text

    ocr_engine()
    return read_text


def prog(prompt: str, *paths: str | None) -> Program:
    return Program(gen_prompt=prompt, references=[Reference(img_id=f"IMG_{i:03d}", path=p)
                                                  for i, p in enumerate(paths, start=1)])


def elements(result) -> list[dict]:
    return result.meta["manifest"]["elements"]


def centre(bboxes: list[list[int]]) -> tuple[float, float]:
    return (float(np.mean([(b[0] + b[2]) / 2 for b in bboxes])), float(np.mean([(b[1] + b[3]) / 2 for b in bboxes])))


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(renderer, refs):
    p = prog("Some apples and a cat, red, somewhere.", refs["apple"])
    a, b = renderer.render(p, seed=5), renderer.render(p, seed=5)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.meta == b.meta


def test_fully_specified_prompt_renders_the_same_under_every_seed(renderer, refs):
    p = prog('Three red apples from the first reference image on the left. A cat on the right. '
             'A banner at the bottom reads "HELLO".', refs["apple"])
    images = {renderer.render(p, seed=s).image.tobytes() for s in range(4)}
    assert len(images) == 1


def test_vague_prompt_varies_only_where_the_fidelity_model_allows(renderer, refs):
    p = prog("Some apples from the first reference image.", refs["apple"])
    runs = [elements(renderer.render(p, seed=s))[0] for s in range(10)]
    assert {r["count_source"] for r in runs} == {"guessed"}
    assert all(2 <= r["count"] <= 5 for r in runs) and len({r["count"] for r in runs}) > 1
    assert {r["position_source"] for r in runs} == {"random"}
    assert {(r["label"], r["source"], r["color"]) for r in runs} == {("apple", "reference 1", None)}


# ---------------------------------------------------------------- counts, colours, references


def test_three_red_apples_are_three_red_sprites(renderer, refs):
    res = renderer.render(prog("Three red apples from the first reference image.", refs["apple"]))
    (apple,) = elements(res)
    assert (apple["count"], apple["color"], apple["source"], len(apple["bboxes"])) == (3, "red", "reference 1", 3)
    x0, y0, x1, y1 = apple["bboxes"][0]
    r, g, b = np.asarray(res.image)[(y0 + y1) // 2 - 5:(y0 + y1) // 2 + 5, (x0 + x1) // 2 - 5:(x0 + x1) // 2 + 5] \
        .reshape(-1, 3).mean(0)
    assert r > g + 60 and r > b + 60  # tinted red, not the reference's green


@pytest.mark.parametrize("prompt,expected", [
    ("a cat, a dog and a bird", {"cat": 1, "dog": 1, "bird": 1}),
    ("4 stars and two moons", {"star": 4, "moon": 2}),
    ("a pair of shoes", {"shoe": 2}),
    ("two red apples and four green ones", {"apple": 6}),
])
def test_counts_from_words_digits_and_enumerations(renderer, prompt, expected):
    got: dict[str, int] = {}
    for e in elements(renderer.render(prog(prompt))):
        got[e["label"]] = got.get(e["label"], 0) + e["count"]
    assert got == expected


def test_large_counts_need_digits_or_an_arrangement(renderer):
    exact = {elements(renderer.render(prog("Seven (7) stars in a row."), seed=s))[0]["count"] for s in range(8)}
    loose = [elements(renderer.render(prog("Seven stars."), seed=s))[0] for s in range(12)]
    assert exact == {7}
    assert {e["count"] for e in loose} <= {6, 7, 8} and any(e["count_source"] == "drifted" for e in loose)


def test_a_bare_number_is_off_by_one(renderer):
    runs = [elements(renderer.render(prog("Some ducks, maybe five, on a pond."), seed=s))[0] for s in range(6)]
    assert {e["count"] for e in runs} <= {4, 6} and {e["count_source"] for e in runs} == {"bare_number"}


def test_colour_binding_by_copula_and_unbound_colour(renderer):
    res = renderer.render(prog("A car on the left. The car is blue. A dog on the right, green."))
    by_label = {e["label"]: e for e in elements(res)}
    assert by_label["car"]["color"] == "blue"
    dropped = [d for d in res.meta["manifest"]["dropped"] if d["reason"] == "unbound_color"]
    assert [d["fragment"] for d in dropped] == ["green"]
    assert dropped[0]["detail"] in ("ignored", "leaked onto dog")


def test_subject_without_reference_is_a_placeholder(renderer, refs):
    res = renderer.render(prog("An apple from the first reference image on the left and a cat on the right.",
                               refs["apple"]))
    assert {e["label"]: e["source"] for e in elements(res)} == {"apple": "reference 1", "cat": "placeholder"}


def test_unnamed_reference_is_guessed_onto_the_first_subject(renderer, refs):
    (e,) = elements(renderer.render(prog("An apple in the center.", refs["apple"])))
    assert e["source"] == "reference 1" and e["reference_guessed"]


def test_sprites_keep_their_aspect_ratio(renderer, refs):
    (e,) = elements(renderer.render(prog("A bar from the first reference image in the center.", refs["bar"])))
    x0, y0, x1, y1 = e["bboxes"][0]
    assert (x1 - x0) / (y1 - y0) == pytest.approx(2.0, rel=0.03)


# ---------------------------------------------------------------- layout


def test_left_and_right_placement(renderer, refs):
    res = renderer.render(prog("A red apple from the first reference image on the left and a blue bar from the "
                               "second reference image on the right.", refs["apple"], refs["bar"]))
    by_label = {e["label"]: e for e in elements(res)}
    w = res.image.width
    assert centre(by_label["apple"]["bboxes"])[0] < w / 2 < centre(by_label["bar"]["bboxes"])[0]


def test_relations_and_first_layout_wins(renderer):
    res = renderer.render(prog("A cat above a dog. A bird on the left, on the right."))
    by_label = {e["label"]: e for e in elements(res)}
    assert centre(by_label["cat"]["bboxes"])[1] < centre(by_label["dog"]["bboxes"])[1]
    assert by_label["bird"]["position"] == "left"
    assert any(d["reason"] == "conflicting_layout" for d in res.meta["manifest"]["dropped"])


def test_crowded_scene_overlaps_and_says_so(renderer):
    res = renderer.render(prog("Twenty (20) cats and twenty (20) dogs in the top left corner."))
    assert res.meta["manifest"]["overlap"] is True


# ---------------------------------------------------------------- text


def test_quoted_text_is_drawn_and_read_back_exactly(renderer, ocr):
    res = renderer.render(prog('A shop front. A sign at the top reads "OPEN 24 HOURS".'))
    (text,) = res.meta["manifest"]["texts"]
    assert text["text"] == "OPEN 24 HOURS" and text["bbox"][3] < res.image.height / 2
    assert "OPEN 24 HOURS" in ocr(res.image)


def test_unquoted_text_is_dropped_with_a_reason(renderer):
    res = renderer.render(prog("A shop with a sign that says open late."))
    assert res.meta["manifest"]["texts"] == []
    assert [d["reason"] for d in res.meta["manifest"]["dropped"]] == ["unquoted_text"]


def test_long_text_picks_up_seeded_typos(renderer):
    long = "Every single day of the week we bake bread before sunrise for you"
    text = renderer.render(prog(f'A banner reads "{long}".'), seed=1).meta["manifest"]["texts"][0]
    assert text["garbled"] and text["requested"] == long and len(text["text"]) == len(long)


# ---------------------------------------------------------------- styles, errors, interface


def test_black_and_white_treatment(renderer, refs):
    res = renderer.render(prog("A red apple from the first reference image, in black and white.", refs["apple"]))
    assert res.meta["manifest"]["treatments"] == ["monochrome"]
    arr = np.asarray(res.image).astype(int)
    assert np.abs(arr[..., 0] - arr[..., 1]).max() <= 1


@pytest.mark.parametrize("path", [None, "/nonexistent/ref.png", "NOT_AN_IMAGE"])
def test_bad_reference_is_a_render_error(renderer, tmp_path, path):
    if path == "NOT_AN_IMAGE":
        path = str(tmp_path / "x.png")
        Path(path).write_text("not an image")
    with pytest.raises(RenderError) as err:
        renderer.render(prog("A cat from the first reference image.", path))
    assert err.value.code == "bad_reference"


def test_empty_prompt_is_a_render_error(renderer):
    with pytest.raises(RenderError) as err:
        renderer.render(prog("   "))
    assert err.value.code == "empty_prompt"


def test_manifest_is_json_and_async_matches_sync(renderer, refs):
    p = prog('Two red apples from the first reference image on a beach at sunset, "SALE" at the top.', refs["apple"])
    sync, async_ = renderer.render(p, seed=3), asyncio.run(renderer.arender(p, seed=3))
    assert json.loads(json.dumps(sync.meta)) == sync.meta
    assert sync.image.tobytes() == async_.image.tobytes()
    assert sync.meta["renderer"] == "collage" and sync.meta["seed"] == 3
    m = sync.meta["manifest"]
    assert m["canvas"] == [512, 512] and m["background"]["scene"] == "beach" and m["treatments"] == ["warm"]


def test_canvas_size_is_configurable():
    res = CollageRenderer(width=320, height=240).render(prog("A cat."))
    assert res.image.size == (320, 240) and res.meta["manifest"]["canvas"] == [320, 240]


def test_render_is_fast(renderer, refs):
    p = prog('Three red apples from the first reference image on the left, a cat on the right, '
             'a sign at the top reads "OPEN", on a beach at sunset.', refs["apple"])
    renderer.render(p)
    t = time.perf_counter()
    for s in range(5):
        renderer.render(p, seed=s)
    assert (time.perf_counter() - t) / 5 < 0.5


_WORDS = ['a', 'the', 'red', 'light', 'apple', 'apples', 'three', '5', '(5)', 'on', 'left', 'of', 'is', ',', '.',
          '"HI"', '"', 'first', 'reference', 'image', 'and', 'above', 'sky', 'night', 'no', 'some', 'in', 'row',
          'lying', 'down', 'upside', 'jumping']


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_WORDS) | st.text(max_size=6), min_size=1, max_size=25).map(" ".join))
def test_any_prompt_parses_and_renders(renderer, prompt):
    parse_prompt(prompt)
    if prompt.strip():
        res = renderer.render(prog(prompt))
        json.dumps(res.meta)
        assert all(math.isfinite(v) for e in res.meta["manifest"]["elements"] for b in e["bboxes"] for v in b)


def test_pose_turns_the_reference_sprite_and_is_in_the_manifest(tmp_path):
    from PIL import Image as _Image

    from genevolve.render.collage import CollageRenderer
    from genevolve.types import Program, Reference

    tall = tmp_path / "tall.png"
    _Image.new("RGBA", (40, 120), (200, 30, 30, 255)).save(tall)
    refs = [Reference(img_id="IMG_001", path=str(tall))]
    lying = CollageRenderer().render(Program(gen_prompt="A dog from the first reference image lying down.",
                                             references=refs))
    el = lying.meta["manifest"]["elements"][0]
    assert el["pose"] == "lying"
    x0, y0, x1, y1 = el["bboxes"][0]
    assert x1 - x0 > y1 - y0  # the tall sprite now lies on its side
    vague = CollageRenderer().render(Program(gen_prompt="A dog from the first reference image sprawled out napping.",
                                             references=refs))
    assert vague.meta["manifest"]["elements"][0]["pose"] is None
