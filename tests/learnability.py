"""A synthetic tool environment that a tiny model can learn with RL in minutes, for
tests/test_evolve_learnability.py (the analogue of the digit-completion end-to-end tests RL frameworks keep).

The request names a colour among other words. ``image_search`` returns the swatch of a colour that its
query names first, then the other swatches in a fixed order. The judge gives 1 when the program's reference
is the swatch of the request's colour (its GT image) and 0 otherwise. So a rollout earns 1 when it searches
with a phrase that holds the colour word and answers with the first image, and otherwise only by luck. The
first action is the query: under the protocol grammar, with one tool call, it is one of the request's
phrases (``genevolve.structured.request_phrases``), most of which do not name the colour.

Everything else is the real loop: agent, grammar, image_search tool, collage renderer, reward, GroupSampler,
learner. Only the image backend and the judge are synthetic.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from genevolve.judge.base import Judge, Score
from genevolve.tools.base_search import ImageSearchBackend
from genevolve.types import RetrievedImage

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
#: training wordings
TRAIN_WORDINGS = ["paint a large {c} square on plain white paper", "show me one flat {c} tile beside a wooden table",
                  "a small {c} card lying on a dark kitchen floor", "fill the whole empty frame with bright {c}",
                  "draw a single {c} circle under a cloudy evening sky", "a plastic cup painted {c} near the window"]
#: held out: new sentences made of the training words (a word never seen in training has untrained weights,
#: and would test the tokenizer's luck rather than what the policy learned)
EVAL_WORDINGS = ["a flat {c} circle near a dark wooden window", "fill a small plastic frame with {c} paint"]


class Swatches(ImageSearchBackend):
    """The four swatches: those whose colour the query names first, then the others in ``COLOURS`` order
    (written once into ``folder``)."""

    name = "swatches"

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    async def search(self, query: str, top_k: int) -> list[RetrievedImage]:
        words = set(query.lower().split())
        order = sorted(COLOURS, key=lambda colour: colour not in words)  # stable: named colours first
        out = []
        for colour in order[:top_k]:
            path = self.folder / f"{colour}.png"
            if not path.is_file():  # written beside, then renamed: concurrent rollouts never see half a file
                tmp = self.folder / f"{colour}.{uuid.uuid4().hex}.png"
                Image.new("RGB", (16, 16), COLOURS[colour]).save(tmp)
                os.replace(tmp, path)
            out.append(RetrievedImage(title=f"swatch {len(out) + 1}", path=str(path)))
        return out


class SwatchJudge(Judge):
    """1 when the program's reference is the swatch of the GT image's colour, else 0."""

    name = "swatch"

    async def ascore(self, request: str, image: Image.Image, *, gt_image: Image.Image | None = None,
                     program: Any = None, meta: dict[str, Any] | None = None) -> Score:
        refs = program.references if program is not None else []
        got = _colour(Image.open(refs[0].path)) if refs and refs[0].path else None
        want = _colour(gt_image) if gt_image is not None else None
        value = 1.0 if want is not None and got == want else 0.0
        return Score.from_dimensions(value, value, value, value, judge=self.name, rationale=f"wanted {want}, got {got}")


def _colour(image: Image.Image) -> str | None:
    """The name of the swatch colour ``image`` is filled with (None: not a swatch)."""
    rgb = image.convert("RGB").getpixel((0, 0))
    return next((name for name, value in COLOURS.items() if tuple(rgb) == value), None)


def write_rows(folder: Path, wordings: list[str], name: str) -> Path:
    """One row per (wording, colour), with a GT image (a swatch) and ``meta.colour``."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for w, wording in enumerate(wordings):
        for colour, rgb in COLOURS.items():
            Image.new("RGB", (16, 16), rgb).save(images / f"{colour}.png")
            rows.append({"id": f"{name}-{w}-{colour}", "question": wording.format(c=colour),
                         "gt_image": f"images/{colour}.png", "meta": {"colour": colour}})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def all_texts() -> list[str]:
    """Every request wording, for a toy tokenizer's vocabulary."""
    return [w.format(c=c) for w in TRAIN_WORDINGS + EVAL_WORDINGS for c in COLOURS]


def env_config(library: Path) -> dict[str, Any]:
    """The env: one forced image search, then an answer with one reference; short free text."""
    return {"policy": {"kind": "scripted", "responses": []}, "search": None, "knowledge": False,
            "image_search": {"kind": "tests.learnability:Swatches", "folder": str(library)},
            "renderer": {"kind": "collage", "width": 128, "height": 128},
            "judge": {"kind": "tests.learnability:SwatchJudge"},
            "agent": {"max_policy_calls": 2, "max_tool_calls": 1, "min_references": 1, "max_references": 1,
                      "structured_decoding": True, "prompt": "compact", "sampling": {"max_tokens": 96}}}
