"""The Scene a prompt describes: what the parser read, and what it could not bind.

Plain dataclasses, filled by ``scene_reader`` and read by the collage renderer and the heuristic judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Position:
    """A named place on the canvas, one value per axis; None: the prompt left that axis open."""

    h: str | None = None  # left | center | right
    v: str | None = None  # top | middle | bottom
    depth: str | None = None  # foreground | background

    @property
    def name(self) -> str:
        if self.h == "center" and self.v in (None, "middle"):
            return "center"
        return "-".join(p for p in (self.v, self.h) if p) or (self.depth or "anywhere")

    def merge(self, other: Position) -> list[str]:
        """Fill open axes from ``other``; return the axes where both disagree (the first value stays)."""
        clashes = []
        for axis in ("h", "v", "depth"):
            mine, theirs = getattr(self, axis), getattr(other, axis)
            if theirs is not None and mine is None:
                setattr(self, axis, theirs)
            elif theirs is not None and mine != theirs:
                clashes.append(axis)
        return clashes

    def empty(self) -> bool:
        return self.h is None and self.v is None and self.depth is None


@dataclass
class Subject:
    """One requested element. ``count_kind`` records how the count was stated, which decides how
    faithfully the renderer keeps it: single | stated | bare | vague | plural."""

    label: str  # content words with a singular head, e.g. "fire truck"
    head: str
    phrase: str
    count: int | None = 1
    count_kind: str = "single"
    count_confirmed: bool = False  # given in words and digits, or with an arrangement (row, grid)
    arrangement: str | None = None  # row | column | grid | circle
    color: str | None = None
    position: Position = field(default_factory=Position)
    position_source: str | None = None  # prompt | relation
    ref: int | None = None  # 1-based reference ordinal
    size: str | None = None  # small | large
    pose: str | None = None  # lying | upside_down | jumping (see scene_words.POSES)


@dataclass
class TextSpec:
    text: str
    position: Position = field(default_factory=Position)
    color: str | None = None
    banner_color: str | None = None
    carrier: str | None = None  # sign, banner, poster, ... when the prompt names one


@dataclass
class Dropped:
    fragment: str
    reason: str
    detail: str = ""


@dataclass
class Scene:
    subjects: list[Subject] = field(default_factory=list)
    texts: list[TextSpec] = field(default_factory=list)
    scene: str | None = None  # background scene key: sky, sea, grass, ...
    scene_color: str | None = None
    sky_color: str | None = None
    background_color: str | None = None
    treatments: list[str] = field(default_factory=list)
    unbound_colors: list[str] = field(default_factory=list)
    references_named: list[int] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)

    def drop(self, fragment: str, reason: str, detail: str = "") -> None:
        self.dropped.append(Dropped(fragment, reason, detail))
