"""Experience extractors: a best-worst pair in, one :class:`ExperienceBundle` out.

``Extractor.aextract(best, worst, step=)`` is the whole interface. Two implementations, named in
``EXTRACTORS``:

- ``rules`` (:class:`RuleExtractor`, this module, ours): offline and deterministic. It measures both
  rollouts (tool calls, skills queried, references chosen, program features, judge scores and
  diagnostics) and writes templated bullets for each difference; a slot where the two do not differ
  states the best rollout's behaviour as a standard, as the paper's extractor does.
- ``llm`` (:class:`~genevolve.evolve.llm_extractor.LLMExtractor`): the paper's extractor, any
  OpenAI-compatible model with our prompt and a strict JSON schema.

Every bullet, from either extractor, goes through :mod:`genevolve.evolve.bullets` (length,
imperative form, no named entities).

A minimal extractor::

    class Same(Extractor):
        name = "same"
        async def aextract(self, best, worst, *, step=None):
            lines = ["Repeat what the better attempt did at this stage of the task, step by step."]
            return ExperienceBundle(**{s: lines for s in SLOTS}, key=RetrievalKey(trigger="any", summary="any"),
                                    provenance=Pair(best, worst).provenance(extractor=self.name, step=step))
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from genevolve.evolve.bullets import clean_slot, request_entities, strip_entities, words
from genevolve.evolve.experience import SLOTS, ExperienceBundle, Pair, RetrievalKey
from genevolve.evolve.rollout import Rollout
from genevolve.judge.base import TEXT_NA_VALUE, WEIGHTS
from genevolve.render.scene_words import WORD_NUMBERS
from genevolve.validation import mentioned_ordinals

EXTRACTORS: dict[str, str] = {
    "rules": "genevolve.evolve.extractors:RuleExtractor",
    "llm": "genevolve.evolve.llm_extractor:LLMExtractor",
}


class ExtractionError(RuntimeError):
    """No usable bundle for this pair (server failure, or no valid reply after re-asking). The step
    goes on without it; ``raw`` holds the extractor's last reply, if any."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class Extractor(ABC):
    name: str = "extractor"

    @abstractmethod
    async def aextract(self, best: Rollout, worst: Rollout, *, step: int | None = None) -> ExperienceBundle:
        """One bundle contrasting ``best`` with ``worst`` (same request). ``step`` defaults to
        ``best.step``. Raises ``ExtractionError`` when no valid bundle can be made."""

    def extract(self, best: Rollout, worst: Rollout, *, step: int | None = None) -> ExperienceBundle:
        return asyncio.run(self.aextract(best, worst, step=step))


# -- measuring a rollout -------------------------------------------------------------------------------

_QUOTE = re.compile(r"\"([^\"\n]+)\"|\u201c([^\u201d\n]+)\u201d|(?<![A-Za-z])'([^'\n]+)'(?![A-Za-z])")
_LAYOUT = re.compile(r"\b(?:left|right|top|bottom|above|below|behind|beside|center|centre|middle|foreground|"
                     r"background|corner|between|under|underneath|in front of|next to|on top of)\b", re.I)
_COUNT_WORDS = {w for w, n in WORD_NUMBERS.items() if n >= 2} | {"pair", "dozen", "trio"}
_NUMBER = re.compile(r"\b(?:\d+|" + "|".join(sorted(_COUNT_WORDS)) + r")\b", re.I)
_CONTENT = re.compile(r"[a-z]{4,}")
DIMENSIONS = ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics")


def failed_checks(diagnostics: dict) -> dict[str, int]:
    """``{skill: failed}`` from a judge's ``diagnostics["skills"]`` (the world judge writes
    ``{skill: {"passed": n, "failed": m}}``); empty for judges that do not report checks."""
    report = diagnostics.get("skills")
    if not isinstance(report, dict):
        return {}
    out = {}
    for skill, counts in report.items():
        failed = counts.get("failed") if isinstance(counts, dict) else None
        if isinstance(failed, int) and not isinstance(failed, bool) and failed > 0:
            out[str(skill)] = failed
    return out


def quotes(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in _QUOTE.finditer(text)]


@dataclass
class Measures:
    """What the rule extractor compares between the two rollouts of a pair."""

    searches: int = 0
    image_searches: int = 0
    query_words: float = 0.0  # mean words per image-search query
    skills: list[str] = field(default_factory=list)
    repeated: int = 0
    tool_errors: int = 0
    format_errors: int = 0
    answered: bool = False
    references: int = 0
    noted_references: int = 0
    on_topic_references: int = 0  # reference titles sharing a content word with the request
    prompt_words: int = 0
    quotes_kept: int = 0  # the request's quoted strings found verbatim in the prompt
    has_count: bool = False
    layout_terms: int = 0
    ordinals: int = 0
    dims: dict[str, float | None] = field(default_factory=dict)
    program_score: float | None = None
    missing: list[str] = field(default_factory=list)
    failed_checks: dict[str, int] = field(default_factory=dict)  # judge checks failed, by skill


def measure(r: Rollout) -> Measures:
    t = r.trajectory
    m = Measures(format_errors=t.n_format_errors, answered=t.program is not None)
    image_queries = []
    for call in t.tool_calls:
        m.repeated += call.repeated
        m.tool_errors += call.error is not None
        if call.name == "search":
            m.searches += 1
        elif call.name == "image_search":
            m.image_searches += 1
            image_queries.append(str(call.arguments.get("query", "")))
        elif call.name == "query_knowledge" and call.error is None:
            skill = str(call.arguments.get("skill_name", ""))
            if skill and skill not in m.skills:
                m.skills.append(skill)
    m.query_words = sum(len(words(q)) for q in image_queries) / len(image_queries) if image_queries else 0.0
    request_words = set(_CONTENT.findall(r.request.lower()))
    if t.program is not None:
        prompt = t.program.gen_prompt
        m.references = len(t.program.references)
        m.noted_references = sum(bool(ref.note.strip()) for ref in t.program.references)
        m.on_topic_references = sum(bool(set(_CONTENT.findall(f"{ref.title} {ref.note}".lower())) & request_words)
                                    for ref in t.program.references)
        m.prompt_words = len(words(prompt))
        m.quotes_kept = sum(q in prompt for q in quotes(r.request))
        m.has_count = bool(_NUMBER.search(prompt))
        m.layout_terms = len(_LAYOUT.findall(prompt))
        m.ordinals = len(mentioned_ordinals(prompt))
    if r.image_score is not None:
        m.dims = {d: getattr(r.image_score, d) for d in DIMENSIONS}
        m.failed_checks = failed_checks(r.image_score.diagnostics)
    m.program_score, m.missing = r.program_score, list(r.program_missing)
    return m


# -- the rule extractor ----------------------------------------------------------------------------------


def _skills(names: list[str]) -> str:
    return " and ".join(names[:2]) if len(names) <= 2 else ", ".join(names[:2]) + " and related skills"


def _search(b: Measures, w: Measures) -> list[str]:
    out = []
    if b.searches and not w.searches:
        out.append("Run a text search on the main subject before looking for images, so every reference "
                   "matches verified facts.")
    if not b.searches and w.searches >= 2:
        out.append("Skip text search when the request names nothing that needs checking, and spend the "
                   "calls on image search instead.")
    if b.query_words >= w.query_words + 1:
        out.append(f"Write image search queries of about {round(b.query_words)} words naming the subject "
                   "and one distinguishing detail, never single generic nouns.")
    if w.repeated > b.repeated:
        out.append("Never repeat an identical search; reword the query or move on once a query has returned "
                   "its results.")
    plural = "es" if b.image_searches != 1 else ""
    if not out and b.searches:
        out.append(f"Keep this search plan: {b.searches} text search{'es' if b.searches != 1 else ''}, then "
                   f"{b.image_searches} image search{plural}, before writing the answer.")
    elif not out:
        out.append(f"Go straight to image search for requests like this one; {b.image_searches} image "
                   f"search{plural} were enough before answering.")
    return out


def _knowledge(b: Measures, w: Measures) -> list[str]:
    out = []
    gained = [s for s in b.skills if s not in w.skills]
    extra = [s for s in w.skills if s not in b.skills]
    if gained:
        out.append(f"Call query_knowledge for {_skills(gained)} before drafting the prompt, and apply that "
                   "guidance to the matching constraints.")
    if extra and not gained:
        out.append(f"Skip {_skills(extra)} guidance unless the request really needs it; unneeded skills cost "
                   "calls without improving the result.")
    if not out:
        out.append(f"Consult {_skills(b.skills)} guidance for requests like this one before writing the "
                   "generation prompt." if b.skills else
                   "Write the prompt directly when no constraint needs special guidance, saving calls for "
                   "searching references.")
    return out


def _references(b: Measures, w: Measures) -> list[str]:
    out = []
    if b.on_topic_references > w.on_topic_references or (
            b.dims.get("visual_correctness", 0) or 0) > (w.dims.get("visual_correctness", 0) or 0):
        out.append("Choose references whose titles name the requested subject itself, not a lookalike or "
                   "a generic stand-in.")
    if b.noted_references > w.noted_references:
        out.append("Give every chosen reference a note saying which attribute it supplies, such as identity, "
                   "colour or shape.")
    if b.references != w.references and b.references:
        n = "one reference image" if b.references == 1 else f"{b.references} reference images"
        out.append(f"Use {n} here, one for each distinct subject that must look right, and never pad with "
                   "spares.")
    if not out:
        out.append("Select references retrieved by a query naming the subject, and check each title before "
                   "adding it.")
    return out


def _prompt(b: Measures, w: Measures) -> list[str]:
    out = []
    if b.quotes_kept > w.quotes_kept:
        out.append("Copy every required text string verbatim inside quotes, and say where in the image it "
                   "must appear.")
    if b.has_count and not w.has_count:
        out.append("State every requested quantity as an explicit number next to its object, for example "
                   "exactly three of them.")
    if b.layout_terms > w.layout_terms:
        out.append("Give each object an explicit position, such as left, right, top or background, matching "
                   "the requested layout.")
    if b.ordinals > w.ordinals:
        out.append("Refer to each reference by its ordinal phrase, such as the first reference image, and say "
                   "what to take from it.")
    if b.prompt_words >= 1.5 * w.prompt_words and b.prompt_words >= 20:
        out.append(f"Write a prompt of at least {5 * (b.prompt_words // 10)} words covering subject, setting, "
                   "layout, text and style, not a short caption.")
    if not out:
        out.append("Keep the prompt order of the stronger attempt: subject first, then setting, layout, text "
                   "and style.")
    return out


_DIM_LESSONS = {
    "text_accuracy": "Avoid leaving required text out of the prompt; the weaker attempt lost text accuracy by "
                     "omitting or paraphrasing it.",
    "faithfulness": "Avoid dropping requested elements; list every element of the request in the prompt "
                    "before adding style details.",
    "visual_correctness": "Avoid references that only resemble the subject; a wrong identity cost the weaker "
                          "attempt its visual correctness.",
    "aesthetics": "Avoid flat or cluttered compositions; describe lighting, palette and framing so quality "
                  "matches the target.",
}


_CHECK_LESSONS = {
    "search": "Avoid guessing facts the request implies; search for them first, since identity checks failed "
              "on guessed subjects.",
    "reference": "Avoid placeholder or look-alike pictures; reference the exact subject, since identity checks "
                 "failed without it.",
    "quantity_counting": "Avoid vague quantities; state each count as a number, since count checks failed "
                         "where it was missing.",
    "attribute_binding": "Avoid loose attributes; attach each colour directly to its own object so no "
                         "attribute drifts to another.",
    "physical_material_consistency": "Avoid unstated materials; name the material of each object next to it "
                                     "so surfaces render as requested.",
    "spatial_layout": "Avoid implicit positions; state where each object sits, such as left or top, since "
                      "layout checks failed.",
    "anatomy_body_coherence": "Avoid unspecified poses; state each figure's pose and body position plainly "
                              "next to the figure itself.",
    "text_rendering": "Avoid paraphrased text; copy each required string exactly inside quotes, since text "
                      "checks failed on changed wording.",
    "creative_drawing": "Avoid dropping the requested setting; state the scene or backdrop explicitly, "
                        "since scene checks failed without it.",
    "aesthetic_drawing": "Avoid dropping the requested treatment; name the style or finish explicitly, since "
                         "treatment checks failed without it.",
}


def _failures(b: Measures, w: Measures) -> list[str]:
    def value(m: Measures, dim: str) -> float:
        x = m.dims.get(dim)
        return TEXT_NA_VALUE if x is None else x

    # the dimensions the worst lost, heaviest loss in the reward first
    lost = [(WEIGHTS[d] * (value(b, d) - value(w, d)), d) for d in DIMENSIONS if d in b.dims and d in w.dims]
    worse = sorted((b.failed_checks.get(k, 0) - n, k) for k, n in w.failed_checks.items())
    out = [_CHECK_LESSONS[k] for diff, k in worse if diff < 0 and k in _CHECK_LESSONS][:2]
    out += [_DIM_LESSONS[d] for loss, d in sorted(lost, key=lambda x: -x[0]) if loss > 0]
    if w.missing and (b.program_score or 0) > (w.program_score or 0):
        out.append("Check that the program supplies every need the judge expects: all text, counts, layout "
                   "and the subject's identity.")
    if w.format_errors + w.tool_errors > b.format_errors + b.tool_errors:
        out.append("Avoid malformed turns and failed tool calls; each wasted round leaves fewer chances to "
                   "search and answer.")
    if not out:
        out.append("Avoid answering before every constraint of the request is covered by the prompt or by a "
                   "reference image.")
    return out


def _trigger(request: str) -> str:
    traits = []
    if request_entities([_QUOTE.sub(" ", request)]):
        traits.append("named real-world subjects")
    if quotes(request):
        traits.append("exact readable text")
    if _NUMBER.search(request):
        traits.append("exact object counts")
    if _LAYOUT.search(request):
        traits.append("a spatial layout")
    if not traits:
        return "Requests for a described scene without names, text, counts or layout constraints"
    return "Requests that need " + (", ".join(traits[:-1]) + " and " + traits[-1] if len(traits) > 1 else traits[0])


def summarise(request: str, entities: list[str], max_words: int = 24) -> str:
    """The request without its entities, cut to ``max_words`` words."""
    text, _ = strip_entities(" ".join(request.split()), entities)
    kept = words(text)
    return " ".join(kept[:max_words]) + (" ..." if len(kept) > max_words else "")


class RuleExtractor(Extractor):
    """Offline extractor: templated bullets from measured differences (see the module docstring).

    Args:
        min_words, max_words: bullet length bounds passed to the validator.
        max_bullets: bullets kept per slot.
    """

    name = "rules"

    def __init__(self, min_words: int = 10, max_words: int = 22, max_bullets: int = 4) -> None:
        self.min_words, self.max_words, self.max_bullets = min_words, max_words, max_bullets

    async def aextract(self, best: Rollout, worst: Rollout, *, step: int | None = None) -> ExperienceBundle:
        return self.contrast(best, worst, step=step)

    def contrast(self, best: Rollout, worst: Rollout, *, step: int | None = None) -> ExperienceBundle:
        b, w = measure(best), measure(worst)
        raw = {"search_strategy": _search(b, w), "knowledge_activation": _knowledge(b, w),
               "reference_selection": _references(b, w), "prompt_construction": _prompt(b, w),
               "failure_avoidance": _failures(b, w)}
        entities = request_entities([best.request, worst.request])
        slots, repairs = {}, []
        for slot in SLOTS:
            slots[slot], notes = clean_slot(raw[slot], entities, min_words=self.min_words,
                                            max_words=self.max_words, max_bullets=self.max_bullets)
            repairs += [f"{slot}: {n}" for n in notes]
            if not slots[slot]:  # a template broke the bounds: a bug worth seeing, not a lost bundle
                raise ExtractionError(f"rule extractor produced no valid bullet for {slot}: {notes}")
        key = RetrievalKey(trigger=_trigger(best.request), summary=summarise(best.request, entities))
        return ExperienceBundle(**slots, key=key,
                                provenance=Pair(best, worst).provenance(extractor=self.name, step=step,
                                                                        repairs=repairs))
