"""Turn a parsed answer into a valid Program, naming every rule it broke.

Rules (METHOD.md section 1): references come from this rollout's retrieved images, sorted by id,
no duplicates, at most ``max_references``; the prompt names references only by ordinal phrases that
match the reference count, and contains no image id and no URL.

Repairable violations are fixed and recorded (sorting, dropping unknown or duplicate ids, truncating
to the cap, rewriting ids in the prompt as ordinal phrases, removing URLs). A repair never changes what
the prompt means: an ordinal phrase names a reference by its place in the list *as the policy wrote it*,
so when sorting or dropping moves a reference its phrases are renumbered to follow it. Fatal ones (empty
prompt, no usable reference, an ordinal beyond the written list or naming a dropped reference) leave no
program; the agent shows the policy why, so it can answer again. Violation names are stable: rewards and
reports count them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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
    ORDINAL_MISMATCH = "ordinal_mismatch"  # fatal: the prompt names an ordinal beyond the written references
    DROPPED_REFERENCE_IN_PROMPT = "dropped_reference_in_prompt"  # fatal: an ordinal names a dropped reference
    ORDINALS_REMAPPED = "ordinals_remapped"  # ordinal phrases renumbered to follow their references' new places


# An ordinal that points nowhere (about 3 % of fuzzed rollouts once ended so, accepted) or at a reference the
# repair dropped cannot be repaired without guessing what the policy meant: the policy is asked to fix it.
FATAL = frozenset({Violation.EMPTY_PROMPT, Violation.NO_REFERENCE, Violation.ORDINAL_MISMATCH,
                   Violation.DROPPED_REFERENCE_IN_PROMPT})

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
    return {_ordinal_value(m) for m in _ORDINAL_RE.finditer(prompt)}


def _ordinal_value(m: re.Match[str]) -> int:
    return _ORDINAL_NUM[m.group(1).lower()] if m.group(1) else int(m.group(2))


def _renumbered(m: re.Match[str], n: int) -> str:
    """The phrase ``m`` naming ordinal ``n`` in the same form ('First Reference' -> 'Second Reference',
    '2nd reference' -> '1st reference', 'reference image 2' -> 'reference image 1'), so a remapped prompt
    reads as the policy wrote it."""
    group = 1 if m.group(1) else 2
    old = m.group(group)
    if group == 2:
        new = str(n)
    elif old[0].isdigit() or n > len(ORDINALS):
        new = f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
    else:
        new = ORDINALS[n - 1]
        new = new.upper() if old.isupper() and len(old) > 1 else new.capitalize() if old[0].isupper() else new
    start, end = m.start(group) - m.start(), m.end(group) - m.start()
    return m.group(0)[:start] + new + m.group(0)[end:]


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

    refs, written = _collect_references(answer.get("reference_images", []), retrieved, flag)
    ordered = sorted(refs, key=lambda r: _id_key(r.img_id))
    if [r.img_id for r in ordered] != [r.img_id for r in refs]:
        flag(Violation.UNSORTED_REFERENCES, "references were not in ascending id order; sorted")
    if len(ordered) > max_references:
        dropped = ", ".join(r.img_id for r in ordered[max_references:])
        flag(Violation.TOO_MANY_REFERENCES, f"at most {max_references} references; dropped {dropped}")
        ordered = ordered[:max_references]

    kept_ids = [r.img_id for r in ordered]
    prompt = _repair_prompt(_remap_ordinals(answer["gen_prompt"], written, kept_ids, flag), kept_ids, flag)
    if not prompt:
        flag(Violation.EMPTY_PROMPT, "gen_prompt is empty")
    if len(ordered) < min_references:
        flag(Violation.NO_REFERENCE, f"need at least {min_references} usable reference image(s), got {len(ordered)}")

    if any(i.violation in FATAL for i in issues):
        return ValidationResult(None, issues)
    return ValidationResult(Program(gen_prompt=prompt, references=ordered), issues)


def _collect_references(
    raw_refs: list[dict[str, Any]], retrieved: dict[str, RetrievedImage], flag: Callable[[Violation, str], None]
) -> tuple[list[Reference], list[str | None]]:
    """The usable references in written order, and for each written entry the id of the reference it
    stands for (a duplicate stands for the copy kept; an unknown or unusable id for nothing): the prompt's
    ordinals count written entries, so this is what lets them be followed through the repair."""
    refs: list[Reference] = []
    written: list[str | None] = []
    kept_by_source: dict[str, str] = {}
    for raw in raw_refs:
        img_id = raw["img_id"].strip()
        image = retrieved.get(img_id)
        if image is None:
            flag(Violation.UNKNOWN_IMAGE_ID, f"{img_id!r} was not returned by any tool")
            written.append(None)
            continue
        if image.path is None:
            flag(Violation.UNUSABLE_IMAGE, f"{img_id} could not be downloaded ({image.error or 'no file'})")
            written.append(None)
            continue
        source = image.path or image.url
        kept = img_id if img_id in written else kept_by_source.get(source)
        if kept is not None:
            flag(Violation.DUPLICATE_REFERENCE, f"{img_id} repeats an image already chosen")
            written.append(kept)
            continue
        kept_by_source[source] = img_id
        written.append(img_id)
        refs.append(Reference(img_id=img_id, note=str(raw.get("note", "")).strip(), path=image.path,
                              url=image.url, title=image.title))
    return refs, written


def _remap_ordinals(prompt: str, written: list[str | None], kept_ids: list[str],
                    flag: Callable[[Violation, str], None]) -> str:
    """Renumber each ordinal phrase from its place among the ``written`` entries to the place of the same
    reference among ``kept_ids`` (sorted, capped). One pass, so 'first' -> 'second' and 'second' ->
    'first' cannot chain. A phrase beyond the written list or naming a dropped entry is left as written
    and flagged (fatal): there is no reference it could mean."""
    beyond: set[int] = set()
    dropped: set[int] = set()

    def renumber(m: re.Match[str]) -> str:
        n = _ordinal_value(m)
        if not 1 <= n <= len(written):
            beyond.add(n)
        elif written[n - 1] not in kept_ids:
            dropped.add(n)
        elif (new := kept_ids.index(written[n - 1]) + 1) != n:
            return _renumbered(m, new)
        return m.group(0)

    remapped = _ORDINAL_RE.sub(renumber, prompt)
    if beyond:
        flag(Violation.ORDINAL_MISMATCH,
             f"gen_prompt names reference {sorted(beyond)} but the answer lists {len(written)}")
    if dropped:
        flag(Violation.DROPPED_REFERENCE_IN_PROMPT,
             f"gen_prompt names reference {sorted(dropped)} of the answer, which was dropped; name only kept ones")
    if remapped != prompt:
        flag(Violation.ORDINALS_REMAPPED, "ordinal phrases in gen_prompt were renumbered to follow the sorted, "
                                          "repaired references")
    return remapped


def _repair_prompt(prompt: str, ref_ids: list[str], flag: Callable[[Violation, str], None]) -> str:
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
