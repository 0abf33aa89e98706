"""LLMExtractor: the paper's experience extractor over any OpenAI-compatible chat endpoint.

The model reads both rollouts of a pair as text (request; per rollout: reward and its parts, tool
calls with their arguments and errors, skills queried, retrieved images' titles, the program, the
judges' scores, rationales and the needs they found missing; optionally each rollout's reasoning and
rendered image) and answers one JSON object with an ``analysis``, the five slots and the
``retrieval_key``. Our prompt is ``prompts/experience.md``; the schema is sent as ``response_format``
(``structured="none"`` for servers that reject it).

Transport, rate limits, caching and re-asking are the judges' (:class:`~genevolve.judge.rubric.
EndpointJudge`): temperature 0, retries on 408/429/5xx and timeouts, 401/403/404 as ``ConfigError``.
Parsing repairs what it can (code fences, text around the object, trailing commas, a slot given as
one string, the key's fields at the top level) and every bullet goes through
:func:`genevolve.evolve.bullets.clean_slot` (entities of the source request stripped, imperative
form, length). A reply whose slot has no valid bullet left, or that lacks a field, is answered with
the error and asked again; after ``parse_retries`` re-asks, or when the server fails, the call
raises ``ExtractionError`` with the last reply.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, ClassVar

from genevolve.evolve.bullets import clean_slot, request_entities, strip_entities, words
from genevolve.evolve.experience import SLOTS, ExperienceBundle, Pair, RetrievalKey
from genevolve.evolve.extractors import ExtractionError, Extractor
from genevolve.evolve.rollout import Rollout
from genevolve.judge.rubric import (
    EndpointJudge,
    JudgeError,
    data_url,
    digest,
    jpeg_bytes,
    parse_with,
    safe_text,
)
from genevolve.policy.messages import load_image
from genevolve.types import IMAGE_PLACEHOLDER, Turn

PROMPT = Path(__file__).parent / "prompts" / "experience.md"
_BULLETS = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4}
EXPERIENCE_SCHEMA: dict[str, Any] = {
    "title": "experience_bundle",
    "type": "object",
    "properties": {
        "analysis": {"type": "string"},
        **{slot: _BULLETS for slot in SLOTS},
        "retrieval_key": {"type": "object",
                          "properties": {"trigger": {"type": "string"}, "summary": {"type": "string"}},
                          "required": ["trigger", "summary"], "additionalProperties": False},
    },
    "required": ["analysis", *SLOTS, "retrieval_key"],
    "additionalProperties": False,
}


@cache
def _prompt() -> str:
    return PROMPT.read_text(encoding="utf-8")


def system_prompt() -> str:
    return Template(_prompt()).substitute(schema=json.dumps(EXPERIENCE_SCHEMA, indent=1)).strip()


# -- what the model reads ---------------------------------------------------------------------------


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 3] + "..."


def describe_rollout(r: Rollout, *, thoughts: bool = True) -> str:
    """One rollout as the extractor reads it (plain text, no images)."""
    t, rw = r.trajectory, r.reward
    parts = f"reward {rw.value:.2f}"
    if rw.image is not None or rw.program is not None:
        parts += f" (image {rw.image if rw.image is not None else '-'}, program {rw.program if rw.program is not None else '-'})"
    lines = [parts + (f"; failure: {rw.failure}" if rw.failure else "") + f"; ended by: {t.stop_reason}",
             f"format errors: {t.n_format_errors}", "Tool calls:"]
    for c in t.tool_calls:
        note = " [repeated, not executed]" if c.repeated else f" [error: {c.error}]" if c.error else ""
        lines.append(f"  {c.round}. {c.name} {json.dumps(c.arguments, ensure_ascii=False)}{note}")
    if not t.tool_calls:
        lines.append("  (none)")
    if t.retrieved:
        lines.append("Retrieved images:")
        lines += [f"  {im.img_id}: {_clip(im.title, 100)} (query: {_clip(im.query, 60)})"
                  + (" [unusable]" if im.path is None and not im.url else "") for im in t.retrieved[:20]]
    if thoughts:
        says = [turn.content.split("</think>")[0].replace("<think>", "") for turn in t.turns
                if turn.role == "assistant" and "<think>" in turn.content]
        if says:
            lines.append("Reasoning per turn:")
            lines += [f"  {i}. {_clip(s, 240)}" for i, s in enumerate(says, 1)]
    if t.program is not None:
        lines.append(f"Program prompt: {t.program.gen_prompt}")
        lines += [f"Reference {i}: {ref.img_id}: {_clip(ref.title, 100)}" + (f" (note: {ref.note})" if ref.note else "")
                  for i, ref in enumerate(t.program.references, 1)]
    else:
        lines.append(f"No program: {t.failure or t.stop_reason}")
    if r.image_score is not None:
        s = r.image_score
        lines.append(f"Image judge: faithfulness {s.faithfulness}, visual_correctness {s.visual_correctness}, "
                     f"text_accuracy {'N/A' if s.text_accuracy is None else s.text_accuracy}, "
                     f"aesthetics {s.aesthetics}")
        if s.rationale:
            lines.append(f"Image judge rationale: {_clip(s.rationale, 600)}")
    if r.program_score is not None:
        lines.append(f"Program judge: {r.program_score}" + (f"; rationale: {_clip(r.program_rationale, 400)}"
                                                            if r.program_rationale else ""))
    if r.program_missing:
        lines.append("Program judge found missing: " + "; ".join(_clip(m, 80) for m in r.program_missing[:8]))
    return "\n".join(safe_text(line) for line in lines)


# -- reading the reply ------------------------------------------------------------------------------


def read_reply(obj: dict[str, Any], entities: list[str], *, min_words: int = 10, max_words: int = 22,
               max_bullets: int = 4) -> dict[str, Any]:
    """Validated slots, key and repair notes from the reply's JSON object; ``ValueError`` names
    what is missing or unusable (the message the model is re-asked with)."""
    slots: dict[str, list[str]] = {}
    notes: list[str] = []
    for slot in SLOTS:
        if slot not in obj:
            raise ValueError(f"missing {slot!r}")
        value = obj[slot]
        if isinstance(value, str):
            notes.append(f"{slot}: a string taken as one bullet")
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{slot!r} must be a list of strings")
        slots[slot], why = clean_slot([str(v) for v in value if isinstance(v, str | int | float)], entities,
                                      min_words=min_words, max_words=max_words, max_bullets=max_bullets)
        notes += [f"{slot}: {n}" for n in why]
        if not slots[slot]:
            raise ValueError(f"{slot!r} has no valid bullet ({'; '.join(why) or 'empty'}); write one to three "
                             f"imperative sentences of {min_words} to {max_words} words, without names")
    key = obj.get("retrieval_key")
    if key is None and "trigger" in obj:
        notes.append("retrieval key fields read from the top level")
        key = {"trigger": obj["trigger"], "summary": obj.get("summary", "")}
    if not isinstance(key, dict):
        raise ValueError("missing 'retrieval_key' (an object with 'trigger' and 'summary')")
    fields = {}
    for name, cap in (("trigger", 20), ("summary", 30)):
        text, n = strip_entities(" ".join(str(key.get(name) or "").split()), entities)
        if not text:
            raise ValueError(f"retrieval_key needs a non-empty {name!r}")
        if n:
            notes.append(f"{name}: replaced {n} named entit{'y' if n == 1 else 'ies'}")
        fields[name] = " ".join(words(text)[:cap])
    return {"slots": slots, "key": fields, "notes": notes}


class LLMExtractor(EndpointJudge, Extractor):
    """The paper's extractor over an OpenAI-compatible LLM (or VLM with ``send_images``).

    Options as :class:`~genevolve.judge.rubric.EndpointJudge` (model, base_url, api_key_env, limits,
    cache, ``parse_retries``, ``structured``, ...), plus:

    Args:
        send_images: attach each rollout's rendered image (``Rollout.image_path``); needs a VLM.
        thoughts: include each rollout's per-turn reasoning (clipped) in what the model reads.
        min_words, max_words, max_bullets: bullet validation bounds.
    """

    kind: ClassVar[str] = "experience"
    schema: ClassVar[dict[str, Any]] = EXPERIENCE_SCHEMA

    def __init__(self, model: str, *args: Any, send_images: bool = False, thoughts: bool = True,
                 min_words: int = 10, max_words: int = 22, max_bullets: int = 4, **kw: Any) -> None:
        super().__init__(model, *args, **kw)
        self.send_images, self.thoughts = send_images, thoughts
        self.bounds = {"min_words": min_words, "max_words": max_words, "max_bullets": max_bullets}

    @classmethod
    def version(cls) -> str:
        h = hashlib.sha256(_prompt().encode())
        h.update(json.dumps(cls.schema, sort_keys=True).encode())
        return f"{cls.kind}/1+{h.hexdigest()[:10]}"

    def turns(self, best: Rollout, worst: Rollout, images: list[bytes]) -> list[Turn]:
        text = (f"Request:\n<request>\n{safe_text(best.request)}\n</request>\n\n"
                f"== Attempt A (higher reward) ==\n{describe_rollout(best, thoughts=self.thoughts)}\n\n"
                f"== Attempt B (lower reward) ==\n{describe_rollout(worst, thoughts=self.thoughts)}")
        if images:
            text += "\n\n" + "\n".join(f"Rendered image of attempt {label}: {IMAGE_PLACEHOLDER}"
                                       for label in ("A", "B")[:len(images)])
        return [Turn(role="system", content=system_prompt()),
                Turn(role="user", content=text, images=[data_url(b) for b in images])]

    def _images(self, best: Rollout, worst: Rollout) -> list[bytes]:
        paths = [best.image_path, worst.image_path]
        if not self.send_images or not all(paths):
            return []
        return [jpeg_bytes(load_image(str(p), self.max_image_side), self.max_image_side) for p in paths]

    async def aextract(self, best: Rollout, worst: Rollout, *, step: int | None = None) -> ExperienceBundle:
        entities = request_entities([best.request, worst.request])
        images: list[bytes] = []

        def describe() -> dict[str, Any]:  # runs in the judge's worker thread
            images.extend(self._images(best, worst))
            text = "\n".join(t.content for t in self.turns(best, worst, []))
            return {"pair": digest(text.encode()), "images": [digest(b) for b in images]}

        def parse(raw: str) -> dict[str, Any]:
            return parse_with(raw, lambda obj: read_reply(obj, entities, **self.bounds))

        try:
            answer, info = await self._judge(describe, lambda: self.turns(best, worst, images), parse)
        except JudgeError as exc:
            raise ExtractionError(f"{self.name}: {exc}", raw=exc.raw) from None
        notes = [*answer["notes"], f"attempts: {info['attempts']}" + (" (cached)" if info["cached"] else "")]
        return ExperienceBundle(**answer["slots"], key=RetrievalKey(**answer["key"]),
                                provenance=Pair(best, worst).provenance(extractor=self.name, step=step, repairs=notes))
