"""Turn a parsed answer into a valid Program, naming every rule it broke.

Rules (METHOD.md section 1): references come from this rollout's retrieved images, sorted by id,
no duplicates, at most ``max_references``; the prompt names references only by ordinal phrases that
match the reference count, and contains no image id and no URL.

Repairable violations are fixed and recorded (sorting, dropping unknown or duplicate ids, truncating
to the cap, rewriting ids in the prompt as ordinal phrases, removing URLs). Fatal ones (empty prompt,
no usable reference) leave no program. Violation names are stable: rewards and reports count them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from genevolve.types import Program, Reference, RetrievedImage


class Violation(StrEnum):
    EMPTY_PROMPT = "empty_prompt"  # fatal
    NO_REFERENCE = "no_reference"  # fatal when fewer than min_references remain
    UNKNOWN_IMAGE_ID = "unknown_image_id"  # dropped
    UNUSABLE_IMAGE = "unusable_image"  # the id exists but its image could not be downloaded; dropped
    DUPLICATE_REFERENCE = "duplicate_reference"  # same id or same image twice; later copy dropped
    UNSORTED_REFERENCES = "unsorted_references"  # sorted by id
    TOO_MANY_REFERENCES = "too_many_references"  # truncated to the cap
    ID_IN_PROMPT = "id_in_prompt"  # replaced by the ordinal phrase (or removed if not a reference)
    URL_IN_PROMPT = "url_in_prompt"  # removed
    ORDINAL_MISMATCH = "ordinal_mismatch"  # the prompt names an ordinal beyond the reference count


FATAL = frozenset({Violation.EMPTY_PROMPT, Violation.NO_REFERENCE})

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
_ORDINAL_NUM = {w: i + 1 for i, w in enumerate(ORDINALS)} | {
    "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5, "6th": 6, "7th": 7, "8th": 8, "9th": 9, "10th": 10,
}
_ORDINAL_RE = re.compile(
    r"\b(" + "|".join(_ORDINAL_NUM) + r")\s+(?:reference|ref\.?)\b|\breference\s+(?:image\s*)?#?(\d{1,2})\b",
    re.IGNORECASE,
)
_ID_RE = re.compile(r"\bIMG_\d{3,}\b")
_URL_RE = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)


@dataclass(frozen=True)
class Issue:
    violation: Violation
    detail: str


@dataclass
class ValidationResult:
    program: Program | None
    issues: list[Issue] = field(default_factory=list)

    @property
    def fatal(self) -> bool:
        return self.program is None

    @property
    def names(self) -> list[str]:
        return [str(i.violation) for i in self.issues]

    def describe(self) -> str:
        return "; ".join(f"{i.violation}: {i.detail}" for i in self.issues)


def ordinal_phrase(index: int) -> str:
    """0 -> 'the first reference image'."""
    word = ORDINALS[index] if index < len(ORDINALS) else f"#{index + 1}"
    return f"the {word} reference image"


def mentioned_ordinals(prompt: str) -> set[int]:
    """1-based ordinals the prompt refers to ('the second reference image' -> 2)."""
    found = set()
    for m in _ORDINAL_RE.finditer(prompt):
        found.add(_ORDINAL_NUM[m.group(1).lower()] if m.group(1) else int(m.group(2)))
    return found


def _id_key(img_id: str) -> tuple[int, str]:
    digits = img_id.rpartition("_")[2]
    return (int(digits), img_id) if digits.isdigit() else (10**9, img_id)


def validate_answer(
    answer: dict[str, Any],
    retrieved: dict[str, RetrievedImage],
    *,
    max_references: int = 2,
    min_references: int = 1,
) -> ValidationResult:
    """Validate a protocol answer (already shape-checked by the parser) against retrieved images."""
    issues: list[Issue] = []

    def flag(v: Violation, detail: str) -> None:
        issues.append(Issue(v, detail))

    refs: list[Reference] = []
    seen_ids: set[str] = set()
    seen_sources: set[str] = set()
    for raw in answer.get("reference_images", []):
        img_id = raw["img_id"].strip()
        image = retrieved.get(img_id)
        if image is None:
            flag(Violation.UNKNOWN_IMAGE_ID, f"{img_id!r} was not returned by any tool")
            continue
        if image.path is None:
            flag(Violation.UNUSABLE_IMAGE, f"{img_id} could not be downloaded ({image.error or 'no file'})")
            continue
        source = image.path or image.url
        if img_id in seen_ids or source in seen_sources:
            flag(Violation.DUPLICATE_REFERENCE, f"{img_id} repeats an image already chosen")
            continue
        seen_ids.add(img_id)
        seen_sources.add(source)
        refs.append(Reference(img_id=img_id, note=str(raw.get("note", "")).strip(), path=image.path,
                              url=image.url, title=image.title))

    ordered = sorted(refs, key=lambda r: _id_key(r.img_id))
    if [r.img_id for r in ordered] != [r.img_id for r in refs]:
        flag(Violation.UNSORTED_REFERENCES, "references were not in ascending id order; sorted")
    if len(ordered) > max_references:
        dropped = ", ".join(r.img_id for r in ordered[max_references:])
        flag(Violation.TOO_MANY_REFERENCES, f"at most {max_references} references; dropped {dropped}")
        ordered = ordered[:max_references]

    prompt = _repair_prompt(answer["gen_prompt"], [r.img_id for r in ordered], flag)
    if not prompt:
        flag(Violation.EMPTY_PROMPT, "gen_prompt is empty")
    if len(ordered) < min_references:
        flag(Violation.NO_REFERENCE, f"need at least {min_references} usable reference image(s), got {len(ordered)}")
    beyond = sorted(n for n in mentioned_ordinals(prompt) if n > len(ordered))
    if beyond:
        flag(Violation.ORDINAL_MISMATCH, f"the prompt mentions reference {beyond} but there are {len(ordered)}")

    if any(i.violation in FATAL for i in issues):
        return ValidationResult(None, issues)
    return ValidationResult(Program(gen_prompt=prompt, references=ordered), issues)


def _repair_prompt(prompt: str, ref_ids: list[str], flag) -> str:
    def replace_id(m: re.Match[str]) -> str:
        img_id = m.group(0)
        return ordinal_phrase(ref_ids.index(img_id)) if img_id in ref_ids else "the reference image"

    if _ID_RE.search(prompt):
        flag(Violation.ID_IN_PROMPT, "image ids in gen_prompt were replaced by ordinal phrases")
        prompt = _ID_RE.sub(replace_id, prompt)
    if _URL_RE.search(prompt):
        flag(Violation.URL_IN_PROMPT, "URLs in gen_prompt were removed")
        prompt = _URL_RE.sub("", prompt)
    return re.sub(r"[ \t]{2,}", " ", prompt).strip()
