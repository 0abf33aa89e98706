"""The eight generation skills: prompt-writing guidance the policy pulls in with ``query_knowledge``.

Each skill is a markdown file in this folder with a small front matter block::

    ---
    name: spatial_layout
    summary: one line
    when_to_call: ...
    when_not_to_call: ...
    ---
    guidance body

The system prompt lists every skill's name, ``when_to_call`` and ``when_not_to_call``; the body
reaches the policy only when it calls the tool (METHOD.md section 1). The front matter is parsed
by hand (``key: value`` lines, indented lines continue a value) so no YAML dependency is needed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, get_args

SkillName = Literal[
    "spatial_layout",
    "aesthetic_drawing",
    "text_rendering",
    "creative_drawing",
    "anatomy_body_coherence",
    "attribute_binding",
    "physical_material_consistency",
    "quantity_counting",
]
#: the eight skill names, in the order the paper lists them
SKILL_NAMES: tuple[str, ...] = get_args(SkillName)
_FIELDS = ("name", "summary", "when_to_call", "when_not_to_call")


@dataclass(frozen=True)
class Skill:
    name: str
    summary: str
    when_to_call: str
    when_not_to_call: str
    guidance: str


class SkillFileError(ValueError):
    """A skill file is missing or malformed; the message names the file."""


def parse_skill(text: str, source: str) -> Skill:
    """Parse one skill file's text; ``source`` names the file in errors."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise SkillFileError(f"{source}: must start with a '---' front matter line")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise SkillFileError(f"{source}: front matter is not closed by a '---' line") from None
    meta: dict[str, str] = {}
    key = None
    for number, line in enumerate(lines[1:end], start=2):
        if not line.strip():
            continue
        if line[0] in " \t" and key is not None:
            meta[key] = f"{meta[key]} {line.strip()}".strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip().isidentifier():
            raise SkillFileError(f"{source}:{number}: expected 'key: value', got {line.strip()!r}")
        key = name.strip()
        meta[key] = value.strip()
    missing = [f for f in _FIELDS if not meta.get(f)]
    if missing:
        raise SkillFileError(f"{source}: front matter lacks non-empty {', '.join(missing)}")
    guidance = "\n".join(lines[end + 1 :]).strip()
    if not guidance:
        raise SkillFileError(f"{source}: the guidance body after the front matter is empty")
    return Skill(guidance=guidance, **{f: meta[f] for f in _FIELDS})


@functools.cache
def _load(directory: str | None) -> dict[str, Skill]:
    root = resources.files(__name__) if directory is None else Path(directory)
    skills: dict[str, Skill] = {}
    for name in SKILL_NAMES:
        entry = root / f"{name}.md"
        source = str(entry)
        if not entry.is_file():
            raise SkillFileError(f"{source}: skill file not found")
        skill = parse_skill(entry.read_text(encoding="utf-8"), source)
        if skill.name != name:
            raise SkillFileError(f"{source}: front matter says name {skill.name!r}, file name says {name!r}")
        skills[name] = skill
    return skills


def load_skills(directory: str | Path | None = None) -> dict[str, Skill]:
    """All eight skills by name, from this package or from ``directory`` (same file names); cached."""
    return dict(_load(None if directory is None else str(Path(directory).resolve())))


__all__ = ["SKILL_NAMES", "Skill", "SkillFileError", "SkillName", "load_skills", "parse_skill"]
