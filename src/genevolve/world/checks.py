"""Check what was drawn (a collage manifest) against a request's hidden constraints.

Each hidden constraint becomes one or more ``Check``s, each feeding rubric dimensions:

| constraint | faithfulness (present, as asked) | visual correctness (agrees with the GT) | skill |
|---|---|---|---|
| entity | some element shows it (its picture, or a subject with its noun) | drawn from the one right picture | reference (search, when a fact hides it) |
| count / colour / region / pose of an entity | the matched element has it | the same, but only if the element is the right picture | quantity_counting / attribute_binding or physical_material_consistency / spatial_layout / anatomy_body_coherence |
| text | readable, similarity >= 0.8 | (text_accuracy: exact 1, >= 0.8 0.5, else 0) | text_rendering |
| scene, treatment | the backdrop / treatment is there | the same | creative_drawing / aesthetic_drawing |

Identity gates visual correctness on purpose: a placeholder labelled "cat", or a mirrored look-alike,
in the right place and colour is still not the GT's cat.

A reference's picture is recognised by its file name inside the world library (``<key>.png``), so a
world folder can move between machines without changing any score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genevolve.world.records import EntitySlot, WorldRequest

POSITION_SKILL = "spatial_layout"
SCENE_SKILL = "creative_drawing"
TREATMENT_SKILL = "aesthetic_drawing"


@dataclass
class Check:
    name: str  # e.g. "a.identity", "a.count", "text", "scene"
    faithful: bool  # counts for faithfulness
    visual: bool | None  # counts for visual correctness (None: not a visual check)
    skill: str
    detail: str


def picture_key(path: str | None) -> str:
    return Path(path).stem if path else ""


def _region_ok(drawn: str, wanted: str) -> bool:
    """``wanted`` region axes all present in the drawn region's name (``top-left`` satisfies ``left``)."""
    if wanted == "center":
        return drawn == "center"
    parts = set(drawn.split("-"))
    return all(p in parts for p in wanted.split("-"))


def _match(slots: list[EntitySlot], elements: list[dict[str, Any]], keys: dict[int, str]) -> dict[str, tuple]:
    """slot -> (element or None, identity ok). Right picture first, then the same noun, each element once."""
    used: set[int] = set()
    out: dict[str, tuple] = {}
    for s in slots:
        found = next((i for i, el in enumerate(elements) if i not in used and keys.get(i) == s.image), None)
        if found is not None:
            used.add(found)
            out[s.slot] = (elements[found], True)
    for s in slots:
        if s.slot in out:
            continue
        found = next((i for i, el in enumerate(elements) if i not in used and
                      (el.get("head") == s.head or s.head in str(el.get("label", "")).split())), None)
        if found is not None:
            used.add(found)
        out[s.slot] = (elements[found] if found is not None else None, False)
    return out


def element_keys(manifest: dict[str, Any]) -> dict[int, str]:
    """Element index -> picture key of the reference it was drawn from."""
    refs = {r["index"]: picture_key(r.get("path")) for r in manifest.get("references", [])}
    out = {}
    for i, el in enumerate(manifest.get("elements", [])):
        src = str(el.get("source", ""))
        if src.startswith("reference "):
            out[i] = refs.get(int(src.split()[1]), "")
    return out


def check_manifest(req: WorldRequest, manifest: dict[str, Any], text_grades: list[tuple[str, float, float]]
                   ) -> list[Check]:
    """All checks of ``req`` against ``manifest``; ``text_grades`` (text, similarity, grade) per required text."""
    elements = manifest.get("elements", [])
    matched = _match(req.entities, elements, element_keys(manifest))
    checks: list[Check] = []
    for s in req.entities:
        el, ident = matched[s.slot]
        fact_skill = "search" if req.facts else "reference"
        if el is None:
            checks.append(Check(f"{s.slot}.identity", False, False, fact_skill, f"{s.name}: not drawn"))
        else:
            src = el.get("source", "")
            checks.append(Check(f"{s.slot}.identity", True, ident, fact_skill,
                                f"{s.name}: drawn from {src}" + ("" if ident else " (not its picture)")))
        attrs = []  # only what the request asks for: a single subject's count of one is not a requirement
        if s.count != 1:
            attrs.append(("count", s.count, "count", "quantity_counting", lambda v, w: v == w))
        if s.color:
            attrs.append(("color", s.color, "color", s.color_skill or "attribute_binding", lambda v, w: v == w))
        if s.position:
            attrs.append(("position", s.position, "position", POSITION_SKILL, lambda v, w: _region_ok(str(v), w)))
        if s.pose:
            attrs.append(("pose", s.pose, "pose", "anatomy_body_coherence", lambda v, w: v == w))
        for name, wanted, field, skill, ok in attrs:
            got = el.get(field) if el is not None else None
            passed = el is not None and got is not None and ok(got, wanted)
            checks.append(Check(f"{s.slot}.{name}", passed, passed and ident, skill,
                                f"{s.name} {name}: wanted {wanted}, drawn {got}"))
    for text, sim, grade in text_grades:
        checks.append(Check("text", sim >= 0.8, None, "text_rendering",
                            f'text "{text}": similarity {sim:.2f}, grade {grade}'))
    if req.scene:
        got = (manifest.get("background") or {}).get("scene")
        checks.append(Check("scene", got == req.scene, got == req.scene, SCENE_SKILL,
                            f"scene: wanted {req.scene}, drawn {got}"))
    drawn = manifest.get("treatments") or []
    for t in req.treatments:
        skill = SCENE_SKILL if req.category == "creative" else TREATMENT_SKILL
        checks.append(Check(f"treatment.{t}", t in drawn, t in drawn, skill, f"treatment {t}: drawn {drawn}"))
    return checks


def drawn_text(manifest: dict[str, Any]) -> list[str]:
    """The texts as drawn, in drawing order (top banner, bottom banner, middle sign)."""
    return [str(t.get("text", "")) for t in manifest.get("texts", [])]
