"""The embedded default renderer: a deterministic collage of reference sprites, shapes and text.

No diffusion model ships in any registry package, so offline genevolve renders a program by parsing
its prompt (``prompt_parse``) and composing what it understood: reference images as sprites, counts
as copies, bound colours as tints, layout words as regions, quoted text in a real font, style and
lighting words as global treatments. Its purpose is to make prompt-writing skill matter the way it
matters to a diffusion model, so it degrades where a vague prompt would. The fidelity model (full
table, with examples, in ``docs/collage_renderer.md``):

| the prompt ...                                   | the collage draws                                    |
|--------------------------------------------------|------------------------------------------------------|
| ties a subject to "the first reference image"    | that image as a sprite (alpha, or border keyed out)   |
| names a subject with no reference                | a labelled placeholder shape (low visual correctness)|
| leaves a reference unnamed                       | it on the first subject without one (a guess), else as an extra element |
| "three apples", "3 apples", "a pair of"          | that many; 5 or more need digits too ("five (5)") or an arrangement ("in a row"), else 50 %: off by one |
| a bare number ("maybe five", "three of them")    | the last uncounted subject, off by one (seeded)      |
| "some", "several", a plural without a number     | a seeded count (2-5, plurals 2-4)                    |
| "a red car", "the car is red"                    | the sprite tinted red                                |
| a colour not next to a noun                      | 50 %: leaks onto a random uncoloured subject, else ignored |
| left/right/top/bottom/center/foreground/..., "A above B" | the named region; conflicting phrases: first wins |
| no layout for a subject                          | a seeded random region                               |
| "lying down", "upside down", "jumping" (bound like layout) | the sprite turned 90 / 180 / 25 degrees; any other pose wording: nothing |
| "quoted text"                                    | drawn exactly (over 40 characters: a seeded typo per 20 more) |
| text not in double quotes                        | nothing drawn (dropped: unquoted_text)               |
| style / lighting words                           | one global treatment per group; none: plain          |
| more than fits                                   | copies shrink to a minimum size, then overlap        |

Every seeded choice uses ``random.Random(f"{seed}|{key}")``, so a fully specified prompt renders
identical bytes under every seed, and a vague one differs only where the table says so. The manifest in
``RenderResult.meta["manifest"]`` lists what was actually drawn and what was dropped, and why.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from genevolve.render import collage_draw as draw
from genevolve.render.base import Renderer, RenderError, RenderResult
from genevolve.render.prompt_parse import Position, Scene, Subject, TextSpec, parse_prompt
from genevolve.render.scene_words import POSE_ANGLE
from genevolve.types import Program

MANIFEST_VERSION = 1
MAX_TEXTS = 4
SIGN_CARRIERS = {"sign", "signboard", "board", "plaque", "placard", "menu", "label", "tag"}


@dataclass
class Element:
    """A subject as the collage realises it, after the fidelity model's choices."""

    subject: Subject
    count: int
    count_source: str  # stated | drifted | bare_number | guessed
    color: str | None
    color_source: str | None  # prompt | leaked
    position: Position
    position_source: str  # prompt | relation | random
    ref: int | None = None
    ref_guessed: bool = False
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    bboxes: list[list[int]] = field(default_factory=list)


def _rng(seed: int, key: str) -> random.Random:
    return random.Random(f"{seed}|{key}")


# ---------------------------------------------------------------- fidelity model (seeded choices)


def realise(scene: Scene, n_refs: int, seed: int) -> list[Element]:
    """Decide what each subject becomes: count, colour, region, reference. Appends to ``scene.dropped``."""
    elements = []
    for i, s in enumerate(scene.subjects):
        count, source = _count(s, _rng(seed, f"count:{i}:{s.label}"))
        pos = Position(s.position.h, s.position.v, s.position.depth)
        elements.append(Element(s, count, source, s.color, "prompt" if s.color else None, pos,
                                s.position_source or "prompt"))
    for el in elements:
        if el.subject.ref is not None and el.subject.ref > n_refs:
            scene.drop(f"reference {el.subject.ref}", "missing_reference", f"the program has {n_refs} reference(s)")
        elif el.subject.ref is not None:
            el.ref = el.subject.ref
    used = {el.ref for el in elements}
    for k in range(1, n_refs + 1):
        if k in used:
            continue
        target = next((el for el in elements if el.ref is None), None)
        if target is None:  # a generator still shows a reference nobody named: as one more element
            target = Element(Subject(label="reference image", head="reference", phrase=""), 1, "stated", None, None,
                             Position(), "random")
            elements.append(target)
        target.ref, target.ref_guessed = k, True  # lands on the first free subject, right or wrong
    for j, d in enumerate(x for x in scene.dropped if x.reason == "unbound_color"):
        rng = _rng(seed, f"leak:{j}:{d.fragment}")
        free = [el for el in elements if el.color is None]
        if free and rng.random() < 0.5:
            victim = rng.choice(free)
            victim.color, victim.color_source = d.fragment, "leaked"
            d.detail = f"leaked onto {victim.subject.label}"
        else:
            d.detail = "ignored"
    for i, el in enumerate(elements):
        if el.position.empty():
            rng = _rng(seed, f"place:{i}:{el.subject.label}")
            el.position = Position(rng.choice(["left", "center", "right", None]),
                                   rng.choice(["top", "middle", "bottom", None]))
            el.position_source = "random"
    return elements


def _count(s: Subject, rng: random.Random) -> tuple[int, str]:
    n = s.count if s.count is not None else 1
    if s.count_kind == "stated":
        if n <= 4 or s.count_confirmed or rng.random() < 0.5:
            return n, "stated"
        return max(1, n + rng.choice([-1, 1])), "drifted"
    if s.count_kind == "bare":
        return max(1, n + rng.choice([-1, 1])), "bare_number"
    if s.count_kind == "vague":
        return rng.randint(2, 5), "guessed"
    if s.count_kind == "plural":
        return rng.randint(2, 4), "guessed"
    return n, "stated"


def realise_texts(scene: Scene, seed: int, max_exact: int) -> list[tuple[TextSpec, str]]:
    """Quoted texts and what is actually written: long strings pick up seeded typos."""
    out = []
    for k, spec in enumerate(scene.texts):
        if k >= MAX_TEXTS:
            scene.drop(spec.text, "too_many_texts", f"at most {MAX_TEXTS} texts are drawn")
            continue
        text = spec.text
        if len(text) > max_exact:
            rng, chars = _rng(seed, f"typo:{k}"), list(text)
            letters = [i for i, c in enumerate(chars) if c.isalpha()]
            for i in rng.sample(letters, min(len(letters), math.ceil((len(text) - max_exact) / 20))):
                new = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != chars[i].lower()])
                chars[i] = new.upper() if chars[i].isupper() else new
            text = "".join(chars)
        out.append((spec, text))
    return out


# ---------------------------------------------------------------- geometry


def _spans(used: set[str | None], order: tuple[str, str, str]) -> dict[str | None, tuple[float, float]]:
    lo, mid, hi = order
    if mid in used and (lo in used or hi in used):
        return {lo: (0, 1 / 3), mid: (1 / 3, 2 / 3), hi: (2 / 3, 1), None: (0, 1)}
    return {lo: (0, 0.5), mid: (0.15, 0.85), hi: (0.5, 1), None: (0, 1)}


def assign_boxes(elements: list[Element], stage: tuple[int, int, int, int]) -> None:
    """Each element's region on the stage; elements sharing a region split it along its long side."""
    x0, y0, x1, y1 = stage
    hs = _spans({el.position.h for el in elements}, ("left", "center", "right"))
    vs = _spans({el.position.v for el in elements}, ("top", "middle", "bottom"))
    groups: dict[tuple, list[Element]] = {}
    for el in elements:
        ha, hb = hs[el.position.h]
        va, vb = vs[el.position.v]
        if el.position.v is None and el.position.depth == "foreground":
            va, vb = 0.4, 1.0
        elif el.position.v is None and el.position.depth == "background":
            va, vb = 0.0, 0.6
        box = (x0 + ha * (x1 - x0), y0 + va * (y1 - y0), x0 + hb * (x1 - x0), y0 + vb * (y1 - y0))
        groups.setdefault(box, []).append(el)
    for (bx0, by0, bx1, by1), members in groups.items():
        n, wide = len(members), (bx1 - bx0) >= (by1 - by0)
        for k, el in enumerate(members):
            if wide:
                a, b = bx0 + (bx1 - bx0) * k / n, bx0 + (bx1 - bx0) * (k + 1) / n
                el.box = (round(a), round(by0), round(b), round(by1))
            else:
                a, b = by0 + (by1 - by0) * k / n, by0 + (by1 - by0) * (k + 1) / n
                el.box = (round(bx0), round(a), round(bx1), round(b))


def arrange(n: int, aspect: float, box: tuple[int, int, int, int], fill: float, min_h: int,
            layout: str | None = None) -> list[list[int]]:
    """Bboxes for ``n`` copies inside ``box``, as large as fits (never below ``min_h``): a row, a
    column, a circle, or else the grid that gives the largest copies."""
    if n <= 0:
        return []
    bx0, by0, bx1, by1 = box
    bw, bh = max(1, bx1 - bx0), max(1, by1 - by0)
    if layout == "circle" and n > 2:
        h = max(min_h, round(min(bw, bh) * fill * math.sin(math.pi / n) / (1 + math.sin(math.pi / n))))
        w, rx, ry = max(1, round(h * aspect)), (bw - h * aspect) / 2, (bh - h) / 2
        centres = [(bx0 + bw / 2 + rx * math.sin(2 * math.pi * k / n), by0 + bh / 2 - ry * math.cos(2 * math.pi * k / n))
                   for k in range(n)]
        return [[round(cx - w / 2), round(cy - h / 2), round(cx - w / 2) + w, round(cy - h / 2) + h] for cx, cy in centres]
    cols = {"row": n, "column": 1}.get(layout or "") or max(
        range(1, n + 1), key=lambda c: min(bh / math.ceil(n / c), bw / c / aspect))
    rows = math.ceil(n / cols)
    h = max(min_h, round(min(bh / rows, bw / cols / aspect) * fill))
    w = max(1, round(h * aspect))
    out = []
    for k in range(n):
        r, c = divmod(k, cols)
        in_row = min(cols, n - r * cols)
        cx = bx0 + bw * (c + 0.5 + (cols - in_row) / 2) / cols
        cy = by0 + bh * (r + 0.5) / rows
        out.append([round(cx - w / 2), round(cy - h / 2), round(cx - w / 2) + w, round(cy - h / 2) + h])
    return out


def any_overlap(boxes: list[list[int]]) -> bool:
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
            small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if iw > 0 and ih > 0 and iw * ih > 0.08 * small:
                return True
    return False


# ---------------------------------------------------------------- the renderer


class CollageRenderer(Renderer):
    """Deterministic given (program, seed); a 512x512 render takes a few tens of milliseconds on CPU.

    ``font_path``: a TTF/OTF for texts and labels (default: the font built into Pillow, identical on
    every machine). ``max_exact_text``: quoted strings longer than this pick up seeded typos.
    """

    name = "collage"

    def __init__(self, width: int = 512, height: int = 512, font_path: str | None = None,
                 max_exact_text: int = 40):
        if width < 128 or height < 128:
            raise ValueError(f"collage canvas must be at least 128x128, got {width}x{height}")
        self.size = (width, height)
        self.font = draw.FontSource(font_path)
        self.max_exact_text = max_exact_text

    async def arender(self, program: Program, *, seed: int = 0) -> RenderResult:
        return await asyncio.to_thread(self.render, program, seed=seed)

    def render(self, program: Program, *, seed: int = 0) -> RenderResult:
        """The synchronous path (safe inside a running event loop, unlike ``Renderer.render``)."""
        if not program.gen_prompt.strip():
            raise RenderError("empty_prompt", "the program's gen_prompt is empty")
        sprites = self._references(program)
        scene = parse_prompt(program.gen_prompt)
        elements = realise(scene, len(sprites), seed)
        texts = realise_texts(scene, seed, self.max_exact_text)
        w, h = self.size
        margin = round(0.03 * w)
        banners = self._plan_banners(texts, margin)
        stage = (margin, banners["top"][1] + margin if banners["top"][0] else margin, w - margin,
                 banners["bottom"][1] - margin if banners["bottom"][0] else h - margin)
        image = draw.background(self.size, scene.scene, _rgb(scene.scene_color), _rgb(scene.sky_color),
                                _rgb(scene.background_color))
        assign_boxes(elements, stage)
        self._draw_elements(image, elements, sprites)
        image = draw.treat(image, scene.treatments)
        text_records = self._draw_texts(image, banners, stage, margin)
        all_boxes = [b for el in elements for b in el.bboxes] + [t["bbox"] for t in text_records if t["overlay"]]
        manifest = self._manifest(program, scene, elements, text_records, stage, any_overlap(all_boxes))
        return RenderResult(image=image, meta={"renderer": self.name, "seed": seed, "size": list(self.size),
                                               "manifest": manifest})

    def _references(self, program: Program) -> list[Image.Image]:
        sprites = []
        for i, ref in enumerate(program.references, start=1):
            if not ref.path:
                raise RenderError("bad_reference", f"reference {i} ({ref.img_id}) has no local file")
            try:
                sprites.append(draw.load_sprite(ref.path))
            except (OSError, ValueError) as exc:  # missing, unreadable or not an image
                raise RenderError("bad_reference", f"reference {i} ({ref.img_id}, {ref.path}): {exc}") from exc
        return sprites

    # ------------------------------------------------------------ subjects

    def _draw_elements(self, image: Image.Image, elements: list[Element], sprites: list[Image.Image]) -> None:
        min_h = max(24, self.size[1] // 10)  # below this, copies overlap rather than shrink
        shadows = Image.new("L", self.size, 0)
        sd = ImageDraw.Draw(shadows)
        drawn: list[tuple[Element, Image.Image]] = []
        order = sorted(elements, key=lambda e: ({"background": 0, None: 1, "foreground": 2}[e.position.depth],
                                                e.box[3]))
        for el in order:
            fill = {"small": 0.5, "large": 0.95}.get(el.subject.size or "", 0.8)
            fill *= 0.7 if el.position.depth == "background" else 1.0
            base = sprites[el.ref - 1] if el.ref else None
            if base is not None and el.subject.pose:  # a collage shows a pose only as a turned sprite
                base = base.rotate(POSE_ANGLE[el.subject.pose], expand=True, resample=Image.Resampling.BICUBIC)
            aspect = base.width / base.height if base is not None else 1.0
            el.bboxes = arrange(el.count, aspect, el.box, fill, min_h, el.subject.arrangement)
            if not el.bboxes:
                continue
            bh = el.bboxes[0][3] - el.bboxes[0][1]
            if base is None:
                sprite = draw.placeholder(el.subject.label, _rgb(el.color), bh, self.font)
            else:
                sprite = draw.fit(base, bh)
                if el.color:
                    sprite = draw.tint(sprite, draw.color_rgb(el.color))
            for x0, _, x1, y1 in el.bboxes:
                sd.ellipse((x0 + 0.1 * (x1 - x0), y1 - 0.06 * bh, x1 - 0.1 * (x1 - x0), y1 + 0.04 * bh), fill=90)
            drawn.append((el, sprite))
        shadow = shadows.filter(ImageFilter.GaussianBlur(5))
        image.paste((30, 30, 30), (0, 0), shadow)
        for el, sprite in drawn:
            for x0, y0, _, _ in el.bboxes:
                image.paste(sprite, (x0, y0), sprite)

    # ------------------------------------------------------------ texts

    def _plan_banners(self, texts: list[tuple[TextSpec, str]], margin: int) -> dict[str, Any]:
        """Group texts into a top banner, a bottom banner (the default) and a middle sign; size fonts."""
        w, h = self.size
        plan: dict[str, Any] = {"top": [[], 0], "bottom": [[], h], "middle": [[], 0]}
        pad = round(0.025 * w)
        for spec, text in texts:
            pos = spec.position
            slot = (pos.v if pos.v in ("top", "bottom") else "middle" if pos.v == "middle" or pos.h == "center"
                    else "bottom")
            size, lines = draw.layout_lines(text, self.font, w - 2 * margin - 2 * pad, start=round(0.085 * h))
            plan[slot][0].append({"spec": spec, "text": text, "size": size, "lines": lines})
        for slot in ("top", "bottom"):
            items = plan[slot][0]
            height = sum(len(it["lines"]) * round(it["size"] * 1.25) for it in items) + 2 * pad
            plan[slot][1] = margin + height if slot == "top" else h - margin - height
        plan["pad"] = pad
        return plan

    def _draw_texts(self, image: Image.Image, plan: dict[str, Any], stage: tuple[int, int, int, int],
                    margin: int) -> list[dict[str, Any]]:
        w, h = self.size
        d, pad, records = ImageDraw.Draw(image), plan["pad"], []
        for slot in ("top", "bottom", "middle"):
            items = plan[slot][0]
            if not items:
                continue
            block_h = sum(len(it["lines"]) * round(it["size"] * 1.25) for it in items) + 2 * pad
            if slot == "top":
                y = margin
            elif slot == "bottom":
                y = h - margin - block_h
            else:
                y = (stage[1] + stage[3] - block_h) // 2
            fill = self._banner_fill(items[0]["spec"])
            if slot == "middle":
                widest = max(self.font.get(it["size"]).getlength(line) for it in items for line in it["lines"])
                x0, x1 = round((w - widest) / 2 - pad), round((w + widest) / 2 + pad)
            else:
                x0, x1 = margin, w - margin
            d.rounded_rectangle((x0, y, x1, y + block_h), radius=pad, fill=fill,
                                outline=draw.mix(fill, (0, 0, 0), 0.35), width=2)
            y += pad
            for it in items:
                records.append(self._draw_block(d, it, fill, (x0 + pad, x1 - pad), y, slot == "middle"))
                y += len(it["lines"]) * round(it["size"] * 1.25)
        return records

    @staticmethod
    def _banner_fill(spec: TextSpec) -> draw.RGB:
        """The banner colour asked for; else a sign-like cream or a dark slate, whichever lets a
        requested text colour stand out."""
        if spec.banner_color:
            return draw.color_rgb(spec.banner_color)
        light, dark = (246, 236, 212), (32, 36, 44)
        if spec.color:
            return light if draw.luminance(draw.color_rgb(spec.color)) < 128 else dark
        return light if spec.carrier in SIGN_CARRIERS else dark

    def _draw_block(self, d: ImageDraw.ImageDraw, it: dict[str, Any], fill: draw.RGB, span: tuple[int, int],
                    y: int, overlay: bool) -> dict[str, Any]:
        spec, font, line_h = it["spec"], self.font.get(it["size"]), round(it["size"] * 1.25)
        ink = _rgb(spec.color) or ((20, 20, 24) if draw.luminance(fill) > 140 else (250, 250, 250))
        stroke = abs(draw.luminance(ink) - draw.luminance(fill)) < 90  # keep a requested colour legible
        outline = (0, 0, 0) if draw.luminance(ink) > 128 else (255, 255, 255)
        align = spec.position.h if spec.position.h in ("left", "right") else "center"
        boxes = []
        for k, line in enumerate(it["lines"]):
            x, anchor = {"left": (span[0], "la"), "right": (span[1], "ra")}.get(align, ((span[0] + span[1]) / 2, "ma"))
            yy = y + k * line_h + (line_h - it["size"]) // 2
            d.text((x, yy), line, font=font, fill=ink, anchor=anchor, stroke_width=2 if stroke else 0,
                   stroke_fill=outline)
            boxes.append(d.textbbox((x, yy), line, font=font, anchor=anchor))
        bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
        return {"text": it["text"], "requested": spec.text, "garbled": it["text"] != spec.text, "bbox": bbox,
                "font_size": it["size"], "lines": it["lines"], "position": spec.position.name,
                "carrier": spec.carrier, "overlay": overlay}

    # ------------------------------------------------------------ manifest

    def _manifest(self, program: Program, scene: Scene, elements: list[Element], texts: list[dict[str, Any]],
                  stage: tuple[int, int, int, int], overlap: bool) -> dict[str, Any]:
        refs = [{"index": i, "img_id": r.img_id, "path": r.path,
                 "used_by": [el.subject.label for el in elements if el.ref == i]}
                for i, r in enumerate(program.references, start=1)]
        return {
            "version": MANIFEST_VERSION, "canvas": list(self.size), "font": self.font.name, "stage": list(stage),
            "background": {"scene": scene.scene, "color": scene.scene_color or scene.background_color,
                           "sky_color": scene.sky_color},
            "treatments": list(scene.treatments),
            "elements": [{
                "label": el.subject.label, "head": el.subject.head, "phrase": el.subject.phrase,
                "source": f"reference {el.ref}" if el.ref else "placeholder", "reference_guessed": el.ref_guessed,
                "count": len(el.bboxes), "count_requested": el.subject.count, "count_source": el.count_source,
                "color": el.color, "color_source": el.color_source, "position": el.position.name,
                "position_source": el.position_source, "size": el.subject.size,
                "arrangement": el.subject.arrangement, "pose": el.subject.pose, "box": list(el.box),
                "bboxes": el.bboxes} for el in elements],
            "texts": [{k: v for k, v in t.items() if k != "overlay"} for t in texts],
            "references": refs, "overlap": overlap,
            "dropped": [{"fragment": d.fragment, "reason": d.reason, "detail": d.detail} for d in scene.dropped],
        }


def _rgb(name: str | None) -> draw.RGB | None:
    return draw.color_rgb(name) if name else None
