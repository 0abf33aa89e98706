"""Pixels for the collage renderer: sprites, tints, placeholders, backgrounds, treatments, text.

Everything here is a pure function of its arguments (no randomness): the fidelity model's seeded
choices are made in ``collage.py`` before anything is drawn, so a fully specified prompt renders the
same bytes under every seed.
"""

from __future__ import annotations

import functools
import os
import random
import zlib

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from genevolve.render.scene_words import COLORS

RGB = tuple[int, int, int]
PLACEHOLDER_RGB: RGB = (150, 160, 178)
MAX_SPRITE_SIDE = 512


def color_rgb(name: str) -> RGB:
    """'light blue' -> RGB; shades mix the base colour with white or black."""
    parts = name.split()
    base = COLORS[parts[-1]]
    if len(parts) == 1:
        return base
    if parts[0] in ("light", "pale"):
        return mix(base, (255, 255, 255), 0.45)
    if parts[0] in ("dark", "deep"):
        return mix(base, (0, 0, 0), 0.4)
    return base  # bright


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def luminance(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


# ---------------------------------------------------------------- sprites


@functools.lru_cache(maxsize=64)
def _load_sprite(path: str, mtime_ns: int) -> Image.Image:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.thumbnail((MAX_SPRITE_SIDE, MAX_SPRITE_SIDE))
        rgba = im.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if (alpha < 250).mean() > 0.01:  # real transparency (emoji, cut-outs): trust it
        box = Image.fromarray(((alpha > 16) * 255).astype(np.uint8)).getbbox()
        return rgba.crop(box) if box else rgba
    keyed = _key_uniform_border(rgba)
    return keyed if keyed is not None else _photo_card(rgba)


def load_sprite(path: str) -> Image.Image:
    """A reference image as an RGBA sprite: its own alpha, or a uniform border keyed out (a product
    shot on white), or else the whole photo as a framed card. Cached by path and mtime."""
    return _load_sprite(path, os.stat(path).st_mtime_ns)


def _key_uniform_border(rgba: Image.Image) -> Image.Image | None:
    """Make a near-uniform border colour transparent where it touches the edge (flood fill), so
    white-background product shots become cut-outs without punching holes in white subjects."""
    arr = np.asarray(rgba.convert("RGB")).astype(np.int16)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg = np.median(border, axis=0)
    if np.abs(border - bg).max(axis=1).mean() > 12:
        return None
    near = (np.abs(arr - bg).max(axis=2) < 40).astype(np.uint8) * 255
    mask = Image.fromarray(near, "L").copy()  # fromarray shares the (read-only) numpy buffer
    w, h = mask.size
    for xy in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 2, 0), (w // 2, h - 1), (0, h // 2),
               (w - 1, h // 2)]:
        if mask.getpixel(xy) == 255:
            ImageDraw.floodfill(mask, xy, 128)
    outside = np.asarray(mask) == 128
    if outside.mean() < 0.05 or outside.mean() > 0.97:
        return None
    alpha = Image.fromarray(np.where(outside, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    out = rgba.copy()
    out.putalpha(alpha)
    box = alpha.point(lambda a: 255 if a > 16 else 0).getbbox()
    return out.crop(box) if box else out


def _photo_card(rgba: Image.Image) -> Image.Image:
    pad = max(4, round(max(rgba.size) * 0.03))
    card = Image.new("RGBA", (rgba.width + 2 * pad, rgba.height + 2 * pad), (255, 255, 255, 255))
    card.paste(rgba, (pad, pad))
    return card


def tint(sprite: Image.Image, rgb: RGB) -> Image.Image:
    """Recolour keeping the sprite's shading: luminance mapped dark -> colour -> light, with the
    sprite's median luminance landing exactly on the colour (so flat fills come out as asked)."""
    gray = ImageOps.grayscale(sprite.convert("RGB"))
    lum = np.asarray(gray)[np.asarray(sprite.getchannel("A")) > 128]
    midpoint = int(np.clip(np.median(lum) if lum.size else 128, 40, 215))
    dark = mix(rgb, (0, 0, 0), 0.6 if luminance(rgb) > 60 else 0.3)
    light = mix(rgb, (255, 255, 255), 0.6 if luminance(rgb) < 200 else 0.3)
    colored = ImageOps.colorize(gray, black=dark, white=light, mid=rgb, midpoint=midpoint)
    out = Image.blend(sprite.convert("RGB"), colored, 0.85)
    out.putalpha(sprite.getchannel("A"))
    return out


def placeholder(label: str, rgb: RGB | None, size: int, font: FontSource) -> Image.Image:
    """A generic stand-in for a subject that has no reference image: a flat shape with its name."""
    fill = rgb or PLACEHOLDER_RGB
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    box = (2, 2, size - 3, size - 3)
    outline = mix(fill, (0, 0, 0), 0.35)
    if zlib.crc32(label.encode()) % 2:
        d.ellipse(box, fill=fill, outline=outline, width=max(2, size // 40))
    else:
        d.rounded_rectangle(box, radius=size // 6, fill=fill, outline=outline, width=max(2, size // 40))
    ink = (20, 20, 20) if luminance(fill) > 140 else (250, 250, 250)
    fsize = max(10, min(size // 6, int(size * 1.5 / max(4, len(label)))))
    d.text((size / 2, size / 2), label, font=font.get(fsize), fill=ink, anchor="mm")
    return im


def fit(sprite: Image.Image, height: int) -> Image.Image:
    """Resize to ``height`` keeping the aspect ratio (sprites are never stretched)."""
    w = max(1, round(sprite.width * height / sprite.height))
    return sprite.resize((w, max(1, height)), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------- backgrounds

_SKY = ((120, 170, 230), (205, 228, 250))
_BANDS: dict[str, list[tuple[float, float, RGB, RGB]]] = {  # scene -> (y0, y1, top colour, bottom colour)
    "plain": [(0, 1, (247, 245, 240), (231, 229, 223))],
    "sky": [(0, 1, *_SKY)],
    "sea": [(0, 0.45, *_SKY), (0.45, 1, (45, 115, 175), (20, 70, 130))],
    "water": [(0, 0.4, *_SKY), (0.4, 1, (70, 140, 170), (35, 95, 125))],
    "grass": [(0, 0.5, *_SKY), (0.5, 1, (115, 185, 85), (60, 130, 50))],
    "snow": [(0, 0.5, (195, 212, 235), (232, 238, 248)), (0.5, 1, (246, 248, 252), (222, 228, 240))],
    "desert": [(0, 0.5, (150, 190, 230), (235, 222, 200)), (0.5, 1, (236, 206, 150), (205, 165, 105))],
    "beach": [(0, 0.4, *_SKY), (0.4, 0.58, (45, 125, 185), (70, 160, 200)), (0.58, 1, (240, 220, 170),
                                                                              (220, 195, 140))],
    "forest": [(0, 1, (70, 120, 80), (25, 60, 35))],
    "city": [(0, 0.6, (165, 185, 210), (210, 215, 222)), (0.6, 0.82, (120, 122, 128), (105, 107, 112)),
             (0.82, 1, (70, 72, 78), (55, 57, 62))],
    "space": [(0, 1, (8, 8, 26), (22, 18, 52))],
    "room": [(0, 0.65, (236, 226, 206), (222, 210, 187)), (0.65, 1, (160, 120, 85), (120, 85, 60))],
    "table": [(0, 0.55, (238, 232, 222), (222, 214, 202)), (0.55, 1, (172, 127, 86), (140, 96, 60))],
}
_MAIN_BAND = {"sky": 0, "space": 0, "forest": 0, "plain": 0}  # which band a scene colour recolours (else the last)


def background(size: tuple[int, int], scene: str | None, scene_rgb: RGB | None, sky_rgb: RGB | None,
               solid_rgb: RGB | None) -> Image.Image:
    w, h = size
    if solid_rgb is not None and scene is None:
        bands = [(0.0, 1.0, solid_rgb, mix(solid_rgb, (0, 0, 0), 0.06))]
    else:
        bands = list(_BANDS[scene or "plain"])
        if scene_rgb is not None:
            k = _MAIN_BAND.get(scene or "plain", len(bands) - 1)
            y0, y1, _, _ = bands[k]
            bands[k] = (y0, y1, mix(scene_rgb, (255, 255, 255), 0.15), mix(scene_rgb, (0, 0, 0), 0.2))
        if sky_rgb is not None and len(bands) > 1:
            bands[0] = (bands[0][0], bands[0][1], mix(sky_rgb, (0, 0, 0), 0.1), mix(sky_rgb, (255, 255, 255), 0.4))
    arr = np.zeros((h, w, 3), np.float32)
    for y0, y1, top, bottom in bands:
        a, b = round(y0 * h), round(y1 * h)
        t = np.linspace(0, 1, max(1, b - a), dtype=np.float32)[:, None]
        arr[a:b] = (np.array(top) * (1 - t) + np.array(bottom) * t)[:, None, :]
    im = Image.fromarray(arr.astype(np.uint8)).copy()  # a writable image, not a view of the array
    _decorate(im, scene)
    return im


def _decorate(im: Image.Image, scene: str | None) -> None:
    """Fixed silhouettes that make a scene recognisable; seeded by the scene name, never by the render seed."""
    d, (w, h) = ImageDraw.Draw(im), im.size
    rng = random.Random(f"decor|{scene}")
    if scene == "space":
        for _ in range(90):
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.choice([0.6, 0.9, 1.3])
            d.ellipse((x - r, y - r, x + r, y + r), fill=(235, 235, 255))
    elif scene == "city":
        x = 0.0
        while x < w:
            bw, bh = rng.uniform(0.07, 0.14) * w, rng.uniform(0.12, 0.32) * h
            d.rectangle((x, 0.6 * h - bh, x + bw - 2, 0.6 * h), fill=(128, 136, 150))
            x += bw
    elif scene == "forest":
        for i in range(9):
            cx, base = (i + 0.5) * w / 9 + rng.uniform(-8, 8), h * rng.uniform(0.35, 0.5)
            d.polygon([(cx, base - 0.3 * h), (cx - 0.07 * w, base), (cx + 0.07 * w, base)], fill=(30, 75, 40))


# ---------------------------------------------------------------- global treatments

_ORDER = ["warm", "night", "monochrome", "sepia", "pastel", "neon", "soft", "high_contrast"]


def treat(im: Image.Image, treatments: list[str]) -> Image.Image:
    """Apply style and lighting treatments, lighting first, then palette, then finish."""
    for t in sorted(treatments, key=_ORDER.index):
        if t == "warm":
            im = ImageEnhance.Brightness(Image.blend(im, Image.new("RGB", im.size, (255, 140, 50)), 0.22)).enhance(1.04)
        elif t == "night":
            im = Image.blend(ImageEnhance.Brightness(im).enhance(0.5), Image.new("RGB", im.size, (18, 28, 80)), 0.3)
        elif t == "monochrome":
            im = ImageOps.grayscale(im).convert("RGB")
        elif t == "sepia":
            im = ImageOps.colorize(ImageOps.grayscale(im), (45, 30, 15), (250, 235, 200))
        elif t == "pastel":
            im = Image.blend(ImageEnhance.Color(im).enhance(0.55), Image.new("RGB", im.size, (255, 255, 255)), 0.3)
        elif t == "neon":
            im = ImageEnhance.Contrast(ImageEnhance.Color(im).enhance(1.9)).enhance(1.25)
            im = ImageChops.screen(im, im.filter(ImageFilter.GaussianBlur(6)))
        elif t == "soft":
            im = Image.blend(im.filter(ImageFilter.GaussianBlur(1.4)), Image.new("RGB", im.size, (255, 255, 255)), 0.12)
        elif t == "high_contrast":
            im = ImageEnhance.Contrast(im).enhance(1.6)
    return im


# ---------------------------------------------------------------- text


class FontSource:
    """Scalable font by size. Default: the font inside Pillow (>= 10.1, FreeType), so text looks the
    same on every machine; ``path`` may name any TTF/OTF instead."""

    def __init__(self, path: str | None = None):
        self.path = path
        probe = self.get(20)
        self.name = " ".join(probe.getname()) if isinstance(probe, ImageFont.FreeTypeFont) else "bitmap"

    @functools.lru_cache(maxsize=32)  # noqa: B019 - a handful of sizes per renderer, kept for its life
    def get(self, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        if self.path:
            return ImageFont.truetype(self.path, size)
        return ImageFont.load_default(size=size)


def layout_lines(text: str, font_source: FontSource, max_w: int, start: int, min_size: int = 14,
                 max_lines: int = 3) -> tuple[int, list[str]]:
    """Largest font size (<= start) at which ``text`` fits ``max_w``, wrapping at spaces if needed."""
    for size in range(start, min_size - 1, -2):
        font = font_source.get(size)
        lines = _wrap(text, font, max_w)
        if len(lines) <= max_lines and all(font.getlength(line) <= max_w for line in lines):
            return size, lines
    return min_size, _wrap(text, font_source.get(min_size), max_w)


def _wrap(text: str, font, max_w: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_w:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [text]
