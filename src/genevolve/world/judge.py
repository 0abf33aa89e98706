"""The world judge: the four rubric dimensions, exactly, from what was drawn against the hidden constraints.

``WorldJudge(world=DIR)`` keeps the :class:`~genevolve.judge.base.Judge` interface: it finds the
request's hidden record by its exact text (requests are unique in a world) and reads the renderer's
manifest from ``meta``. No thresholds are tuned per category: the same rules score every request.

- faithfulness: share of faithfulness checks passed (see ``checks``), snapped to {0, 0.5, 1};
- visual_correctness: share of visual checks passed (identity gates its entity's attributes), snapped;
- text_accuracy: each required text against the drawn text (manifest, else OCR of the image):
  exact 1, similarity >= 0.8 0.5, else 0; the mean snapped; None when the request needs no text;
- aesthetics: 1, minus 0.5 when elements overlap (and the GT's did not), minus 0.5 when the image
  has far less contrast than the GT (a blank or washed-out image); snapped.

Without a manifest (an image from another renderer) only the texts can be read (OCR); every other
check is unverifiable and scores 0.5, and ``diagnostics["manifest"]`` is False.
``WorldSufficiencyJudge`` scores a program instead of an image: what its prompt *states* and which
pictures it references, as a perfect generator would draw them (five bins, METHOD.md section 2).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from genevolve.judge.base import Judge, Score, snap
from genevolve.judge.sufficiency import SufficiencyScore, snap_quarter
from genevolve.types import Program
from genevolve.world.checks import Check, check_manifest, drawn_text
from genevolve.world.records import WorldRequest


class UnknownRequest(KeyError):
    """The request text is not one of this world's requests."""


def load_requests(world: str | Path) -> dict[str, WorldRequest]:
    """question -> record, from ``DIR/requests.jsonl``."""
    path = Path(world) / "requests.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: build the world first (genevolve world build --out {world})")
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            req = WorldRequest.model_validate_json(line)
            out[req.question] = req
    return out


def text_grades(required: list[str], lines: list[str]) -> list[tuple[str, float, float]]:
    from genevolve.judge.heuristic import text_grades as grades

    return grades(required, lines)


def aesthetics(image: Image.Image, gt_image: Image.Image | None, manifest: dict[str, Any] | None,
               gt_overlap: bool = False) -> tuple[float, str]:
    from genevolve.judge.heuristic import image_stats

    value, why = 1.0, []
    if manifest and manifest.get("overlap") and not gt_overlap:
        value -= 0.5
        why.append("overlapping elements")
    if gt_image is not None:
        mine, theirs = image_stats(image)["contrast"], image_stats(gt_image)["contrast"]
        if mine < 0.5 * theirs:
            value -= 0.5
            why.append(f"contrast {mine:.2f} far below the GT's {theirs:.2f}")
    return snap(max(0.0, value)), ", ".join(why) or "no defect"


def _share(checks: list[Check], attr: str) -> float:
    values = [getattr(c, attr) for c in checks if getattr(c, attr) is not None]
    return sum(map(bool, values)) / len(values) if values else 1.0


def skill_report(checks: list[Check]) -> dict[str, dict[str, int]]:
    passed, failed = Counter(), Counter()
    for c in checks:
        (passed if (c.visual if c.visual is not None else c.faithful) else failed)[c.skill] += 1
    return {k: {"passed": passed[k], "failed": failed[k]} for k in sorted(set(passed) | set(failed))}


class WorldJudge(Judge):
    """Exact judge for one world folder. Same (request, image, meta) in, same score out."""

    name = "world"

    def __init__(self, world: str | Path, ocr: bool = False):
        """``ocr``: also read the image with OCR when a manifest is present (slower; the manifest is exact)."""
        self.world = Path(world)
        self.requests = load_requests(self.world)
        self.ocr = ocr

    def record(self, request: str) -> WorldRequest:
        req = self.requests.get(request.strip())
        if req is None:
            raise UnknownRequest(f"request not in world {self.world}: {request[:80]!r}")
        return req

    async def ascore(self, request: str, image: Image.Image, *, gt_image: Image.Image | None = None,
                     program: Program | None = None, meta: dict[str, Any] | None = None) -> Score:
        return await asyncio.to_thread(self.score_sync, request, image, gt_image=gt_image, meta=meta)

    def score_sync(self, request: str, image: Image.Image, *, gt_image: Image.Image | None = None,
                   meta: dict[str, Any] | None = None) -> Score:
        req = self.record(request)
        manifest = (meta or {}).get("manifest")
        lines = drawn_text(manifest) if manifest else []
        if req.texts and (manifest is None or self.ocr):
            from genevolve.judge.heuristic import read_text

            lines = read_text(image) if manifest is None else lines + read_text(image)
        grades = text_grades(req.texts, lines)
        text = snap(sum(g for _, _, g in grades) / len(grades)) if grades else None
        if manifest is None:
            faith = visual = 0.5
            checks: list[Check] = []
            aesth, why = aesthetics(image, gt_image, None)
        else:
            checks = check_manifest(req, manifest, grades)
            faith, visual = snap(_share(checks, "faithful")), snap(_share(checks, "visual"))
            aesth, why = aesthetics(image, gt_image, manifest)
        rationale = "\n".join([f"constraint: {c}" for c in req.constraints()] +
                              [f"{'PASS' if (c.visual if c.visual is not None else c.faithful) else 'FAIL'} "
                               f"[{c.skill}] {c.detail}" for c in checks] + [f"aesthetics: {why}"])
        return Score.from_dimensions(
            faith, visual, text, aesth, constraints=req.constraints(), rationale=rationale, judge=self.name,
            heuristic=False,
            diagnostics={"manifest": manifest is not None, "skills": skill_report(checks),
                         "faithful_share": _share(checks, "faithful"), "visual_share": _share(checks, "visual"),
                         "texts": [{"text": t, "similarity": round(s, 4), "grade": g} for t, s, g in grades],
                         "world_version": req.version, "category": req.category})


def stated_manifest(program: Program) -> dict[str, Any]:
    """What ``program`` states, as a manifest a perfect generator would produce: counts as stated, every
    bound colour, region and pose, quoted texts exactly, named references on their subjects."""
    from genevolve.render.prompt_parse import parse_prompt

    scene = parse_prompt(program.gen_prompt)
    n_refs = len(program.references)
    elements = []
    for s in scene.subjects:
        exact = s.count_kind in ("single", "stated", "bare")
        elements.append({"label": s.label, "head": s.head,
                         "source": f"reference {s.ref}" if s.ref and s.ref <= n_refs else "placeholder",
                         "count": s.count if exact else None, "color": s.color,
                         "position": s.position.name if not s.position.empty() else None, "pose": s.pose})
    return {"elements": elements, "texts": [{"text": t.text} for t in scene.texts],
            "treatments": list(scene.treatments), "background": {"scene": scene.scene},
            "references": [{"index": i, "path": r.path} for i, r in enumerate(program.references, 1)]}


class WorldSufficiencyJudge:
    """Would a perfect generator, given only (g, R), produce the GT? Share of the hidden constraints the
    program supplies (right pictures referenced and tied to their subjects, counts, colours, regions,
    poses, exact quoted texts, scene, treatments), snapped to {0, 0.25, 0.5, 0.75, 1}."""

    name = "world-sufficiency"

    def __init__(self, world: str | Path):
        self.world = Path(world)
        self.requests = load_requests(self.world)

    async def ascore(self, request: str, program: Program, gt_image: Image.Image | None = None) -> SufficiencyScore:
        return self.score(request, program, gt_image)

    def score(self, request: str, program: Program, gt_image: Image.Image | None = None) -> SufficiencyScore:
        req = self.requests.get(request.strip())
        if req is None:
            raise UnknownRequest(f"request not in world {self.world}: {request[:80]!r}")
        manifest = stated_manifest(program)
        checks = check_manifest(req, manifest, text_grades(req.texts, drawn_text(manifest)))
        ok = [c.visual if c.visual is not None else c.faithful for c in checks]
        share = sum(ok) / len(ok) if ok else 1.0
        missing = [c.detail for c, good in zip(checks, ok, strict=True) if not good]
        return SufficiencyScore(score=snap_quarter(share), rationale=json.dumps({"share": round(share, 4)}),
                                judge=self.name, missing=missing, diagnostics={"skills": skill_report(checks)})
