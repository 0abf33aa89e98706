"""SufficiencyJudge: would a perfect generator, given only the program (g, R), produce the GT?
(METHOD.md section 2, training only.)

It judges the program, not a rendering: the judge model sees the request, the program's prompt, its
reference images (labelled in order) and the ground-truth image, and answers on five bins
{0, 0.25, 0.5, 0.75, 1} with a rationale and the list of needs the program leaves unsupplied. The
rubric text is ``prompts/sufficiency.md``. Endpoint, limits, caching, parsing and re-asking are the
rubric judge's (:class:`~genevolve.judge.rubric.EndpointJudge`).

Why a separate record rather than a :class:`~genevolve.judge.base.Score`: the answer has one
dimension, and the reward (``genevolve.reward.mix_reward``) takes it as a plain float.
"""

from __future__ import annotations

import asyncio
import json
from string import Template
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from genevolve.judge.rubric import (
    EndpointJudge,
    JudgeError,
    data_url,
    digest,
    entry,
    jpeg_bytes,
    parse_with,
    prompt_text,
    safe_text,
    to_unit,
)
from genevolve.policy.messages import load_image
from genevolve.types import IMAGE_PLACEHOLDER, Program, Turn

BINS = (0.0, 0.25, 0.5, 0.75, 1.0)

SUFFICIENCY_SCHEMA: dict[str, Any] = {
    "title": "program_sufficiency",
    "type": "object",
    "properties": {
        "missing": {"type": "array", "items": {"type": "string"}},
        "rationale": {"type": "string"},
        "score": {"type": "number", "enum": list(BINS)},
    },
    "required": ["missing", "rationale", "score"],
    "additionalProperties": False,
}


class SufficiencyScore(BaseModel):
    """One judged program: ``score`` in {0, 0.25, 0.5, 0.75, 1}."""

    model_config = ConfigDict(extra="forbid")

    score: float
    rationale: str = ""
    judge: str = ""
    missing: list[str] = Field(default_factory=list)  # needs the program fails to supply, as the judge listed them
    diagnostics: dict[str, Any] = Field(default_factory=dict)


def snap_quarter(x: float) -> float:
    """The nearest of the five bins."""
    return min(BINS, key=lambda b: abs(b - x))


def _read(obj: dict[str, Any]) -> dict[str, Any]:
    value, rationale = entry(obj, "score")
    x = to_unit(value)
    if x is None:
        raise ValueError("'score' must be a number in {0, 0.25, 0.5, 0.75, 1}")
    missing = obj.get("missing") or []
    if not isinstance(missing, list):
        missing = [missing]
    return {"score": snap_quarter(x), "rationale": rationale or str(obj.get("rationale") or ""),
            "missing": [str(m) for m in missing]}


def parse_sufficiency(text: str) -> dict[str, Any]:
    """``{"score": bin, "rationale": str, "missing": [str]}``; raises JudgeError."""
    return parse_with(text, _read)


class SufficiencyJudge(EndpointJudge):
    """Program-sufficiency judge over an OpenAI-compatible VLM; options as :class:`EndpointJudge`."""

    kind = "sufficiency"
    prompt_files = ("sufficiency.md",)
    schema = SUFFICIENCY_SCHEMA

    def _references(self, program: Program) -> list[Image.Image]:
        images = []
        for i, ref in enumerate(program.references, 1):
            where = ref.path or ref.url
            try:
                if not where:
                    raise FileNotFoundError("it has neither a path nor a URL")
                images.append(load_image(where, self.max_image_side))
            except Exception as exc:  # unreadable file, failed download, not an image
                raise JudgeError(f"{self.name}: reference {i} ({ref.img_id}) is unusable: {exc}") from None
        return images

    def turns(self, request: str, program: Program, references: list[bytes], gt_image: bytes) -> list[Turn]:
        """The conversation sent to the judge, from the images' JPEG bytes (references, then the GT)."""
        system = Template(prompt_text("sufficiency.md")).substitute(schema=json.dumps(SUFFICIENCY_SCHEMA, indent=1))
        lines = [f"Request:\n<request>\n{safe_text(request)}\n</request>\n",
                 f"Program prompt:\n<prompt>\n{safe_text(program.gen_prompt)}\n</prompt>\n"]
        if not references:
            lines.append("The program has no reference images.")
        for i, ref in enumerate(program.references, 1):
            note = f" (note: {safe_text(ref.note)})" if ref.note else ""
            lines.append(f"Reference image {i}{note}: {IMAGE_PLACEHOLDER}")
        lines.append(f"Ground-truth image: {IMAGE_PLACEHOLDER}")
        return [Turn(role="system", content=system.strip()),
                Turn(role="user", content="\n".join(lines), images=[data_url(b) for b in [*references, gt_image]])]

    async def ascore(self, request: str, program: Program, gt_image: Image.Image) -> SufficiencyScore:
        jpegs: list[bytes] = []  # the references, then the GT

        def describe() -> dict[str, Any]:  # runs first, in the judge's worker thread
            jpegs.extend(jpeg_bytes(img, self.max_image_side) for img in [*self._references(program), gt_image])
            return {"request": request, "program": program.answer_json(),
                    "references": [digest(b) for b in jpegs[:-1]], "gt": digest(jpegs[-1])}

        answer, info = await self._judge(describe, lambda: self.turns(request, program, jpegs[:-1], jpegs[-1]),
                                         parse_sufficiency)
        return SufficiencyScore(score=answer["score"], rationale=answer["rationale"], judge=self.name,
                                missing=answer["missing"],
                                diagnostics={"cached": info["cached"], "attempts": info["attempts"],
                                             "version": self.version()})

    def score(self, request: str, program: Program, gt_image: Image.Image) -> SufficiencyScore:
        return asyncio.run(self.ascore(request, program, gt_image))
