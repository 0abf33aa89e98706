"""The world's picture library and search corpus, written into the world folder.

``DIR/library/``: one PNG per entity (its OpenMoji picture, rasterised once into the shared cache)
and one look-alike per entity, each with a ``.json`` caption sidecar that ``LocalImageLibrary``
reads. The look-alike is the same picture altered the way a careless web result is (mirrored,
faded, or recoloured) and captioned with nearly the same words, so picking a reference by a loose
title match loses identity. Real near-namesakes (Austria and Australia, cat and poodle) are
already there as other entities.

``DIR/corpus/*.jsonl``: documents generated from the facts (one per country, capital, currency,
region ranking and thing) that ``LocalTextSearch`` indexes beside the Wikipedia summaries.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from genevolve.world.facts import Country, Thing
from genevolve.world.records import WORLD_VERSION

IMAGE_SIZE = 256  # sprites are drawn at most ~460 px tall; 256 keeps the build fast and looks fine
LOOKALIKES = ("mirrored", "faded", "recoloured")


@dataclass(frozen=True)
class Picture:
    key: str  # file stem, e.g. "flag-au" or "flag-au-faded"
    title: str
    entity: str
    canonical: bool


def slug(entity: str) -> str:
    kind, _, code = entity.partition(":")
    return ("flag-" if kind == "country" else "thing-") + code


def pictures_for(entity: str, name: str) -> list[Picture]:
    """The right picture and its look-alike (the kind of alteration is fixed per entity)."""
    base = slug(entity)
    kind = LOOKALIKES[int(hashlib.sha256(entity.encode()).hexdigest(), 16) % len(LOOKALIKES)]
    title = {"mirrored": f"{name}, mirrored print", "faded": f"faded {name} souvenir",
             "recoloured": f"{name} toy, recoloured"}[kind]
    return [Picture(base, name, entity, True), Picture(f"{base}-{kind}", title, entity, False)]


def write_library(out: Path, countries: list[Country], things: list[Thing], cache_dir: Path | None = None) -> dict[str, Picture]:
    """Write every picture (idempotent: existing files are kept) and return ``key -> Picture``."""
    from PIL import Image, ImageOps, PngImagePlugin

    from genevolve import cache
    from genevolve.tools.openmoji import rasterise

    png_cache = cache.cache_dir("openmoji-png", cache_dir)
    folder = out / "library"
    folder.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("world_version", WORLD_VERSION)
    pictures: dict[str, Picture] = {}
    entries = [(c.key, f"flag of {c.name}", c.flag_hex, ["flag", c.name, c.code]) for c in countries]
    entries += [(t.key, t.name, t.hexcode, [t.kind, *t.aliases]) for t in things]
    for entity, name, hexcode, tags in entries:
        right, alike = pictures_for(entity, name)
        src = None
        for pic in (right, alike):
            pictures[pic.key] = pic
            png = folder / f"{pic.key}.png"
            if not png.is_file():
                if src is None:
                    with Image.open(rasterise(hexcode, IMAGE_SIZE, png_cache)) as im:
                        src = im.convert("RGBA")
                img = src if pic.canonical else _alter(src, pic.key.rsplit("-", 1)[-1], ImageOps)
                img.save(png, pnginfo=info, compress_level=1)
            caption = {"title": pic.title, "tags": tags, "world_version": WORLD_VERSION}
            (folder / f"{pic.key}.json").write_text(json.dumps(caption, ensure_ascii=False), encoding="utf-8")
    return pictures


def _alter(img, kind: str, ImageOps):  # noqa: N803 - the PIL module, passed in to keep imports lazy
    from PIL import Image

    if kind == "mirrored":
        return ImageOps.mirror(img)
    r, g, b, a = img.split()
    if kind == "faded":
        rgb = Image.merge("RGB", (r, g, b))
        faded = Image.blend(rgb, Image.new("RGB", rgb.size, (235, 230, 220)), 0.55)
        return Image.merge("RGBA", (*faded.split(), a))
    return Image.merge("RGBA", (b, r, g, a))  # recoloured: channels rotated


def write_corpus(out: Path, countries: list[Country], things: list[Thing]) -> int:
    """Write the fact documents; returns how many. Each row: ``{"title", "text", "url", "world_version"}``."""
    folder = out / "corpus"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows = []
    for c in countries:
        borders = ", ".join(c.borders) if c.borders else "none (no land borders with other countries)"
        rows.append(("country", c.name, f"{c.name} is a country in {c.subregion or c.region} ({c.region}). "
                     f"The capital of {c.name} is {c.capital}. The currency of {c.name} is the {c.currency} "
                     f"({c.currency_code}). Area: {c.area:,.0f} square kilometres. Population: {c.population:,}. "
                     f"Internet country domain: {c.tld}. International calling code: +{c.calling}. "
                     f"Land borders: {borders}."))
        rows.append(("capital", c.capital, f"{c.capital} is the capital city of {c.name}."))
    users: dict[str, list[str]] = defaultdict(list)
    for c in countries:
        users[c.currency].append(c.name)
    for currency, names in sorted(users.items()):
        rows.append(("currency", currency, f"The {currency} is the official currency of {_join(names)}."))
    regions: dict[str, list[Country]] = defaultdict(list)
    for c in countries:
        regions[c.subregion].append(c)
    for sub, members in sorted(regions.items()):
        if len(members) < 3 or not sub:
            continue
        big = max(members, key=lambda c: c.area)
        crowded = max(members, key=lambda c: c.population)
        rows.append(("region", f"Countries of {sub}",
                     f"{sub} has {len(members)} countries: {_join(sorted(m.name for m in members))}. "
                     f"The largest country of {sub} by area is {big.name}. "
                     f"The most populous country of {sub} is {crowded.name}."))
    for t in things:
        if t.description:
            rows.append(("thing", t.name.capitalize(), f"{t.name.capitalize()}: {t.description}."))
    with (folder / "facts.jsonl").open("w", encoding="utf-8") as f:
        for kind, title, text in rows:
            url = f"world://{kind}/{title.lower().replace(' ', '_')}"
            f.write(json.dumps({"title": title, "text": text, "url": url, "world_version": WORLD_VERSION},
                               ensure_ascii=False) + "\n")
    return len(rows)


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
