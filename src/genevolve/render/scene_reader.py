"""The word pass that builds a Scene, one sentence at a time.

Masking (``prompt_parse.mask``) has already turned quoted texts, reference ordinals, layout phrases,
styles and background colours into marker tokens (``§Q0§``, ``§R1§``, ``§P:left§``, ``§L:above§``,
``§A:row§``, ``§O:lying§``, ``§S§``, ``§B§``); this pass binds them, and numbers and colours, to noun phrases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genevolve.render.scene import Position, Scene, Subject, TextSpec
from genevolve.render.scene_words import (
    ARRANGEMENT,
    COLLECTIVE,
    DETERMINERS,
    ED_NOUNS,
    GENERIC,
    ING_NOUNS,
    MAX_COUNT,
    PARTS,
    SCENES,
    SHADES,
    SIZES,
    STOP,
    TEXT_CARRIERS,
    TEXT_STYLE,
    VAGUE,
    VERB_FORMS,
    VERBS,
    WORD_NUMBERS,
    is_color,
    is_plural,
    norm_color,
    singular,
)

_NOT_ADVERB = {"lily", "jelly", "belly", "family", "holly"}


@dataclass
class _NP:
    words: list[str]
    start: int
    end: int = 0
    count: int | None = None
    count_kind: str = "single"
    definite: bool = False
    confirmed: bool = False
    color: str | None = None
    size: str | None = None
    negated: bool = False
    arrangement: str | None = None


def _ends_np(t: str, np: _NP, nxt: str) -> bool:
    """Whether ``t`` closes a noun phrase that already has content words."""
    plural = (np.count or 1) > 1 or is_plural(np.words[-1])
    colour_ends = np.color is not None or not nxt or nxt.startswith("§") or nxt in STOP or nxt in "(),"
    return (t.startswith("§") or t in STOP or t in DETERMINERS or t in "()," or t.isdigit()
            or t in WORD_NUMBERS or (is_color(t) and colour_ends) or (t in SHADES and is_color(nxt))
            or len(np.words) >= 4
            or (t in VERB_FORMS and (t not in VERBS or plural))
            or (len(t) > 4 and t.endswith("ing") and t not in ING_NOUNS)
            or (len(t) > 3 and t.endswith("ed") and t not in ED_NOUNS)
            or (len(t) > 4 and t.endswith("ly") and not t.endswith("fly") and t not in _NOT_ADVERB))


def read_np(toks: list[str], i: int, *, loose: bool) -> _NP | None:
    """Read a noun phrase at ``toks[i]``: [exactly] [det|number|vague|collective of] [colour|size]* noun+.
    ``loose``: a bare noun may open it (sentence or list-item start); else it needs a det/number/colour."""
    np, j, started = _NP(words=[], start=i), i, False
    while j < len(toks):
        t, nxt = toks[j], toks[j + 1] if j + 1 < len(toks) else ""
        if np.words:
            if _ends_np(t, np, nxt):
                break
            if is_color(t):  # "a round blue plate": a colour among the modifiers
                np.color = norm_color(t)
            else:
                np.words.append(t)
        elif t in ("exactly", "precisely", "only", "just"):
            pass
        elif t == "no" and not started:
            np.negated = started = True
        elif t in DETERMINERS and not started:
            np.count, np.count_kind = (1, "single") if t in ("a", "an", "another", "each", "every") else (None, "single")
            np.definite = t in ("the", "this", "these", "those")
            started = True
        elif t.isdigit() or t in WORD_NUMBERS:
            num = int(t) if t.isdigit() else WORD_NUMBERS[t]
            np.count, np.count_kind, started = num, "stated", True
            if toks[j + 1: j + 4] == ["(", str(num), ")"]:
                np.confirmed, j = True, j + 3
        elif t in VAGUE:
            np.count, np.count_kind, started = None, "vague", True
            j += nxt == "of"
        elif t in COLLECTIVE and nxt == "of" and started:
            kind = COLLECTIVE[t]
            np.confirmed = np.confirmed or kind == "arrangement"
            np.arrangement = ARRANGEMENT.get(t) or np.arrangement
            if kind is None:
                np.count, np.count_kind = None, "vague"
            elif isinstance(kind, int):
                np.count, np.count_kind = kind, "stated"
            j += 1
        elif (t in SHADES and is_color(nxt)) or is_color(t):
            shade = t in SHADES
            np.color, started = np.color or norm_color(f"{t} {nxt}" if shade else t), True
            j += shade
        elif t in SIZES:
            np.size, started = SIZES[t], True
        elif (t.startswith("§") or t in STOP or t in "(),"
              or not (started or loose) or (not started and (t in VERB_FORMS or t.endswith("ly")))):
            break
        else:
            np.words.append(t)
            started = True
        j += 1
    np.end = j
    if not started or np.negated:
        return np if np.negated else None
    if not np.words and np.color == "orange":  # "an orange" is the fruit
        np.words, np.color = ["orange"], None
    if not np.words:
        return np if np.count_kind == "stated" else None  # a bare number
    if np.count is None and np.count_kind == "single":
        np.count, np.count_kind = (None, "plural") if is_plural(np.words[-1]) else (1, "single")
    return np


@dataclass
class _Carrier:
    """A named text surface ("a wooden sign"): its layout passes to the quoted text it carries."""

    name: str
    position: Position = field(default_factory=Position)


_POSSESSIVE = ("with", "has", "have", "its", "his", "her", "their")
_SCENE_PREPS = ("in", "on", "at", "under", "over", "across", "into", "near", "by", "from", "through")
_COPULA = ("is", "are", "painted", "coloured", "colored", "in", "all", "entirely", "completely")


class SentenceReader:
    """Walk one sentence's tokens, binding references, layout, counts and colours to subjects.

    A "group" is a coordinated list ("a cat, a dog and a bird"): a layout phrase after it applies to
    every member. A layout phrase that opens a sentence ("On the left, a red mug") binds forwards.
    """

    def __init__(self, toks: list[str], scene: Scene):
        self.toks, self.scene = toks, scene
        self.group: list[Subject | TextSpec | _Carrier] = []
        self.joined = False  # only ',', 'and', 'or' since the last group member
        self.seen_word = False
        self.subjects: list[Subject] = []
        self.texts: list[TextSpec] = []
        self.carrier: _Carrier | None = None
        self.carriers: list[_Carrier] = []
        self.pending_pos: Position | None = None
        self.pending_pose: str | None = None
        self.pending_rel: tuple[list, str] | None = None
        self.pending_refs: list[int] = []
        self.text_color: str | None = None
        self.banner_color: str | None = None
        self.arrangement: str | None = None  # "spaced": counts confirmed, layout left to the grid
        self.last: Subject | _Carrier | str | None = None  # what a following "is red" describes

    def run(self) -> None:
        i = 0
        while i < len(self.toks):
            i = self._step(i)
        self._finish()

    def _step(self, i: int) -> int:
        t = self.toks[i]
        if t.startswith("§"):
            self._marker(t, i)
            return i + 1
        if t in (",", "and", "or", "&"):
            return i + 1
        if t in _COPULA and (k := self._copula(i)) != i:
            return k
        loose = (not self.seen_word or (self.joined and self.toks[i - 1] in (",", "and", "or"))
                 or (t in SCENES and self.toks[i - 1] in _SCENE_PREPS))  # "in space", "on grass"
        np = read_np(self.toks, i, loose=loose)
        self.seen_word = True
        if np is None:
            if is_color(t):
                self._leftover(norm_color(t) or t)
            self.joined = False
            return i + 1
        self._noun_phrase(np)
        return self._copula(np.end)

    def _marker(self, t: str, i: int) -> None:
        kind = t[1]
        if kind == "Q":
            spec = self.scene.texts[int(t[2:-1])]
            if self.carrier:
                spec.carrier = self.carrier.name
                spec.position.merge(self.carrier.position)
            self._attach_pending(spec)
            self.texts.append(spec)
            self._join(spec)
            return
        if kind == "R":
            n = int(t[2:-1])
            if self.toks[max(0, i - 2): i] == ["style", "of"]:
                self.scene.drop(f"style of reference {n}", "style_reference", "a collage cannot transfer a style")
            elif self.subjects and self.subjects[-1].ref is None:
                self.subjects[-1].ref = n
            else:
                self.pending_refs.append(n)
            return
        if kind == "O":
            self._pose(t[3:-1])
        elif kind == "P":
            self._place(_position_of(t[3:-1]), t[3:-1])
        elif kind == "L":
            self.pending_rel = (list(self.group), t[3:-1]) if self.group else None
        elif kind == "A":
            self.arrangement = t[3:-1] if self.arrangement in (None, "spaced") else self.arrangement
        self.joined = False

    def _place(self, pos: Position, name: str) -> None:
        if not self.group and self.seen_word:
            self.scene.drop(name, "unbound_layout", "layout phrase with no subject before it")
            return
        if not self.group:  # "On the left, a red mug": binds forwards
            self.pending_pos = pos if self.pending_pos is None else self.pending_pos
            if pos is not self.pending_pos:
                self.pending_pos.merge(pos)
            return
        for m in self.group:
            if m.position.merge(pos):
                self.scene.drop(name, "conflicting_layout", f"{_describe(m)} already placed; first wins")
            if isinstance(m, Subject):
                m.position_source = m.position_source or "prompt"

    def _pose(self, pose: str) -> None:
        """A pose binds like a layout phrase: to the group before it, or forwards at a sentence start."""
        subjects = [m for m in self.group if isinstance(m, Subject)]
        if not subjects and not self.seen_word:
            self.pending_pose = self.pending_pose or pose
        elif not subjects:
            self.scene.drop(pose, "unbound_pose", "pose with no subject before it")
        for m in subjects:
            if m.pose is not None and m.pose != pose:
                self.scene.drop(pose, "conflicting_pose", f"{m.label} is already {m.pose}; first wins")
            m.pose = m.pose or pose

    def _noun_phrase(self, np: _NP) -> None:
        if np.negated:  # "no other birds": nothing to draw
            return
        if not np.words:
            self._bare_count(np.count or 0)
            return
        head = singular(np.words[-1])
        before = self.toks[np.start - 1] if np.start else ""
        if head in TEXT_STYLE:
            self.text_color = self.text_color or np.color
        elif head in TEXT_CARRIERS:
            self.carrier = _Carrier(head)
            self.carriers.append(self.carrier)
            self.banner_color = self.banner_color or np.color
            self._attach_pending(self.carrier)
            self._join(self.carrier)
            self.last = self.carrier
        elif head in SCENES:
            self._set_scene(SCENES[head], np.color, " ".join(np.words))
            self.last = "scene"
        elif head in ARRANGEMENT:
            self.arrangement = ARRANGEMENT[head] if self.arrangement in (None, "spaced") else self.arrangement
        elif head in GENERIC:
            if np.color:
                self._leftover(np.color)
        elif head in PARTS and (before in _POSSESSIVE or self.toks[np.start] in _POSSESSIVE):
            if np.color:
                self.scene.drop(f"{np.color} {head}", "part_color", "colours of parts are not drawn")
        else:
            self._subject(np, head)

    def _subject(self, np: _NP, head: str) -> None:
        words = np.words[:-1] + [head]
        inherit = head in ("one", "ones") and self.subjects  # "two red apples and four green ones"
        if inherit:
            words, head = self.subjects[-1].label.split(), self.subjects[-1].head
        same = next((s for s in self.scene.subjects if s.head == head), None)
        if np.definite and same is not None:  # "the mug" again: the same subject, more attributes
            subject = same
            if np.color and subject.color and np.color != subject.color:
                self.scene.drop(np.color, "conflicting_color", f"{head} is already {subject.color}; first wins")
            subject.color = subject.color or np.color
        else:
            count = min(np.count, MAX_COUNT) if np.count is not None else None
            subject = Subject(label=" ".join(words), head=head, phrase=" ".join(self.toks[np.start:np.end]),
                              count=count, count_kind=np.count_kind, count_confirmed=np.confirmed,
                              color=np.color, size=np.size, arrangement=np.arrangement)
            subject.ref = self.subjects[-1].ref if inherit else None
            self.scene.subjects.append(subject)
        self._attach_pending(subject)
        if self.pending_rel:
            before, rel = self.pending_rel
            for m, pos in [(m, _RELATION[rel][0]) for m in before] + [(subject, _RELATION[rel][1])]:
                if isinstance(m, Subject) and m.position.empty():
                    m.position.merge(Position(pos.h, pos.v, pos.depth))
                    m.position_source = "relation"
            self.pending_rel = None
        self.subjects.append(subject)
        self.last = subject
        self._join(subject)

    def _attach_pending(self, member: Subject | TextSpec | _Carrier) -> None:
        if self.pending_pos is not None:
            member.position.merge(self.pending_pos)
            if isinstance(member, Subject):
                member.position_source = "prompt"
            self.pending_pos = None
        if self.pending_pose is not None and isinstance(member, Subject):
            member.pose, self.pending_pose = self.pending_pose, None
        if self.pending_refs and isinstance(member, Subject) and member.ref is None:
            member.ref = self.pending_refs.pop(0)

    def _join(self, member: Subject | TextSpec | _Carrier) -> None:
        self.group = self.group + [member] if self.joined and self.group else [member]
        self.joined = True

    def _copula(self, i: int) -> int:
        """"The car is red", "a car painted blue", "a dress in red": bind the colour to what was named
        last (subject, text carrier or scene). Returns where reading resumes (``i`` when nothing bound)."""
        j = i
        while j < len(self.toks) and self.toks[j] in _COPULA:
            j += 1
        if j == i or j >= len(self.toks):
            return i
        t, nxt = self.toks[j], self.toks[j + 1] if j + 1 < len(self.toks) else ""
        shade = t in SHADES and is_color(nxt)
        np = read_np(self.toks, j, loose=False)
        if not (shade or is_color(t)) or (np is not None and np.words and np.color):  # "in red boots"
            return i
        color = norm_color(f"{t} {nxt}" if shade else t) or t
        last = self.last
        if isinstance(last, Subject):
            if last.color and last.color != color:
                self.scene.drop(color, "conflicting_color", f"{last.label} is already {last.color}; first wins")
            last.color = last.color or color
        elif isinstance(last, _Carrier):
            self.banner_color = self.banner_color or color
        elif last == "scene":
            self.scene.scene_color = self.scene.scene_color or color
        else:
            self._leftover(color)
        return j + 1 + shade

    def _bare_count(self, n: int) -> None:
        if n == 1:  # "one on the left": a pronoun far more often than a count
            return
        target = next((s for s in reversed(self.subjects) if s.count_kind != "stated"), None)
        if target is None:
            self.scene.drop(str(n), "count_without_noun", "a number with no noun to count")
        else:
            target.count, target.count_kind = min(n, MAX_COUNT), "bare"

    def _set_scene(self, key: str, color: str | None, phrase: str) -> None:
        sc = self.scene
        if sc.scene is None:
            sc.scene, sc.scene_color = key, color
        elif key == "sky":  # every outdoor scene already has a sky; keep its colour
            sc.sky_color = sc.sky_color or color
        elif key == sc.scene:
            sc.scene_color = sc.scene_color or color
        else:
            sc.drop(phrase, "conflicting_background", f"scene is already {sc.scene}; first wins")

    def _leftover(self, color: str) -> None:
        self.scene.unbound_colors.append(color)
        self.scene.drop(color, "unbound_color", "colour word not attached to a noun")

    def _finish(self) -> None:
        for spec in self.texts:
            for carrier in self.carriers:  # "... on a red banner at the bottom": the banner's place
                spec.position.merge(carrier.position)
            spec.color = spec.color or self.text_color
            spec.banner_color = spec.banner_color or self.banner_color
        for s in self.subjects if self.arrangement else []:
            s.count_confirmed = True
            s.arrangement = s.arrangement or (self.arrangement if self.arrangement != "spaced" else None)
        for n in self.pending_refs:
            self.scene.drop(f"reference {n}", "unbound_reference", "no subject named near the reference phrase")
        if self.pending_pos is not None:
            self.scene.drop(self.pending_pos.name, "unbound_layout", "layout phrase with no subject")
        if self.pending_pose is not None:
            self.scene.drop(self.pending_pose, "unbound_pose", "pose with no subject")


def _position_of(name: str) -> Position:
    if name in ("foreground", "background"):
        return Position(depth=name)
    if name == "center":
        return Position(h="center")
    if "-" in name:
        v, h = name.split("-")
        return Position(h=h, v=v)
    return Position(h=name) if name in ("left", "right") else Position(v=name)


_RELATION = {  # relation -> (position of the subjects before it, position of the subject after it)
    "left": (Position(h="left"), Position(h="right")), "right": (Position(h="right"), Position(h="left")),
    "above": (Position(v="top"), Position(v="bottom")), "below": (Position(v="bottom"), Position(v="top")),
    "beside": (Position(h="left"), Position(h="right")),
    "front": (Position(depth="foreground"), Position(depth="background")),
    "behind": (Position(depth="background"), Position(depth="foreground")),
}


def _describe(m: Subject | TextSpec | _Carrier) -> str:
    return m.label if isinstance(m, Subject) else m.name if isinstance(m, _Carrier) else f'"{m.text}"'
