"""Read a generation prompt (or a request) into a Scene: what it asks for, stated explicitly.

Shared by the collage renderer (which draws the Scene under a fidelity model, see
``docs/collage_renderer.md``) and the heuristic judge (which reads a request's hard constraints
with the same rules, so "what the renderer understood" and "what the judge checks" cannot drift).

The parser is rule-based and lexicon-light on purpose: a subject is recognised only when the prompt
introduces it the way the prompt-writing skills recommend (an article, a number or a colour before
the noun), a colour only when it sits next to its noun or in "the X is red", a text only when it is
quoted. It records what it could not bind in ``Scene.dropped`` instead of guessing; the renderer
decides (seeded) what a real generator would do with those leftovers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from genevolve.render import _lexicon as lx

WORD_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
MAX_COUNT = 24  # more instances than this are never drawn (they would be specks on a 512 canvas)


@dataclass
class Position:
    """A named place on the canvas, one value per axis (None: the prompt left that axis open)."""

    h: str | None = None  # left | center | right
    v: str | None = None  # top | middle | bottom
    depth: str | None = None  # foreground | background

    @property
    def name(self) -> str:
        if self.h == "center" and self.v in (None, "middle"):
            return "center"
        parts = [p for p in (self.v if self.v != "middle" else "middle", self.h) if p]
        return "-".join(parts) or (self.depth or "anywhere")

    def merge(self, other: Position) -> list[str]:
        """Fill open axes from ``other``; return the axes where the two disagree (first wins)."""
        clashes = []
        for axis in ("h", "v", "depth"):
            mine, theirs = getattr(self, axis), getattr(other, axis)
            if theirs is None:
                continue
            if mine is None:
                setattr(self, axis, theirs)
            elif mine != theirs:
                clashes.append(axis)
        return clashes

    def empty(self) -> bool:
        return self.h is None and self.v is None and self.depth is None


@dataclass
class Subject:
    """One requested element. ``count_kind`` says how the count was stated, which decides how
    faithfully the renderer keeps it: single | stated | bare | vague | plural."""

    label: str  # content words with the head singular, e.g. "fire truck"
    head: str  # the head noun, singular
    phrase: str
    count: int | None = 1
    count_kind: str = "single"
    count_confirmed: bool = False  # given in words and digits, or with an arrangement (row, grid)
    color: str | None = None
    position: Position = field(default_factory=Position)
    position_source: str | None = None  # prompt | relation
    ref: int | None = None  # 1-based reference ordinal
    size: str | None = None  # small | large
    sentence: int = 0


@dataclass
class TextSpec:
    text: str
    position: Position = field(default_factory=Position)
    color: str | None = None
    banner_color: str | None = None
    carrier: str | None = None  # sign, banner, poster, ... when the prompt names one
    sentence: int = 0


@dataclass
class Dropped:
    fragment: str
    reason: str
    detail: str = ""


@dataclass
class Scene:
    subjects: list[Subject] = field(default_factory=list)
    texts: list[TextSpec] = field(default_factory=list)
    scene: str | None = None  # background scene key (sky, sea, grass, ...)
    scene_color: str | None = None
    background_color: str | None = None
    treatments: list[str] = field(default_factory=list)
    unbound_colors: list[str] = field(default_factory=list)
    references_named: list[int] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)

    def drop(self, fragment: str, reason: str, detail: str = "") -> None:
        self.dropped.append(Dropped(fragment, reason, detail))


# ---------------------------------------------------------------- masking (regex, whole prompt)

_QUOTE_RE = re.compile(r'"([^"\n]{1,200})"|“([^”\n]{1,200})”')
_ORD = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "1st": 1, "2nd": 2, "3rd": 3,
        "4th": 4, "5th": 5}
_REF_RE = re.compile(r"\b(?:the\s+)?(first|second|third|fourth|fifth|1st|2nd|3rd|4th|5th)\s+"
                     r"(?:reference|ref\.?)(?:\s+(?:image|photo|picture|img))?s?\b"
                     r"|\breference\s+(?:image\s+)?#?([1-5])\b")
_COLOR_ALT = "|".join(sorted(lx.COLORS, key=len, reverse=True))
_SHADE = r"(?:(?:light|pale|dark|deep|bright)[\s-]+)?"
_BG_COLOR_RE = re.compile(
    rf"\b(?:on|against|with|over|in front of)?\s*(?:a|an|the)?\s*(?:plain|solid|simple|clean)?\s*"
    rf"({_SHADE}(?:{_COLOR_ALT}))\s+(?:background|backdrop)\b"
    rf"|\b(?:the\s+)?(?:background|backdrop)\s+is\s+({_SHADE}(?:{_COLOR_ALT}))\b")
_SCENE_BG_RE = re.compile(r"\b(" + "|".join(lx.SCENES) + r")\s+(?:background|backdrop|setting)\b")
_REL_PATTERNS = [
    (r"\bto the (left|right) of\b", None), (r"\b(?:on top of|above)\b", "above"),
    (r"\b(?:below|beneath|underneath|under)\b", "below"), (r"\b(?:beside|next to|alongside)\b", "beside"),
    (r"\bin front of\b", "front"), (r"\bbehind\b", "behind")]
_OF_FRAME = r"(?:\s+of\s+the\s+(?:image|frame|picture|scene|canvas|composition|poster|photo))?"
_POS_PATTERNS = [
    (r"\bfrom left to right\b|\bevenly spaced\b|\bin an? (?:neat |single |straight )?(?:row|line|grid|circle)\b",
     "§A§"),
    (r"\b(?:in|at|on|to)?\s*(?:the\s+)?(top|upper|bottom|lower)[\s-]+(left|right)"
     r"(?:[\s-]+(?:hand\s+)?(?:corner|side|quadrant|third))?" + _OF_FRAME + r"\b", "vh"),
    (r"\b(?:on|at|in|to|along)?\s*(?:the\s+)?(left|right)(?:[\s-]+hand)?(?:\s+(?:side|half|edge|third))?"
     + _OF_FRAME + r"\b", "h"),
    (r"\b(?:at|on|in|along|across)?\s*(?:the\s+)?(top|bottom|upper|lower)(?:\s+(?:half|edge|part|third))?"
     + _OF_FRAME + r"\b", "v"),
    (r"\b(?:in|at)?\s*(?:the\s+)?(?:very\s+)?(?:center|centre|middle)" + _OF_FRAME + r"\b|\bcent(?:er|re)d\b",
     "c"),
    (r"\b(?:in|at)?\s*(?:the\s+)?(foreground|background)\b", "d"),
]
_UNQUOTED_RE = re.compile(
    r"\b(?:that says|which says|says|saying|that reads|which reads|reads|titled|entitled|captioned|"
    r"labell?ed|inscribed(?: with)?|with the words?|the words?|with the text|the text|lettering|spelling)"
    r"\b[:,]?\s+([^.;§]{1,60})")
_VERT = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}


def _pos_token(kind: str, m: re.Match) -> str:
    if kind == "§A§":
        return " §A§ "
    if kind == "vh":
        return f" §P:{_VERT[m.group(1)]}-{m.group(2)}§ "
    if kind == "h":
        return f" §P:{m.group(1)}§ "
    if kind == "v":
        return f" §P:{_VERT[m.group(1)]}§ "
    if kind == "c":
        return " §P:center§ "
    return f" §P:{m.group(1)}§ "


def mask(prompt: str, scene: Scene) -> str:
    """Replace quoted text, reference ordinals, styles, background colours and layout phrases by
    marker tokens, so the word-level pass below sees only nouns, numbers and colours."""
    def quote(m: re.Match) -> str:
        scene.texts.append(TextSpec(text=(m.group(1) or m.group(2)).strip()))
        return f" §Q{len(scene.texts) - 1}§ "

    text = _QUOTE_RE.sub(quote, prompt.replace("\n", ". "))
    # Everything outside quotes is matched case-insensitively; quoted text keeps its case.
    text = re.sub(r"[^§]+|§[^§]*§", lambda m: m.group(0) if m.group(0).startswith("§") else m.group(0).lower(),
                  text)
    text = text.replace("’", "'")

    def ref(m: re.Match) -> str:
        n = _ORD[m.group(1)] if m.group(1) else int(m.group(2))
        if n not in scene.references_named:
            scene.references_named.append(n)
        return f" §R{n}§ "

    text = _REF_RE.sub(ref, text)
    for pattern, treatment, group in lx.STYLES:
        def style(m: re.Match, treatment: str = treatment, group: str = group) -> str:
            taken = {lx.STYLE_GROUP[t] for t in scene.treatments}
            if treatment in scene.treatments:
                pass
            elif group in taken:
                scene.drop(m.group(0).strip(), "conflicting_style", f"{group} already set; first wins")
            else:
                scene.treatments.append(treatment)
            return " §S§ "
        text = re.sub(pattern, style, text)

    def bg(m: re.Match) -> str:
        color = lx.norm_color(m.group(1) or m.group(2))
        if scene.background_color is None:
            scene.background_color = color
        elif scene.background_color != color:
            scene.drop(m.group(0).strip(), "conflicting_background", "first background colour wins")
        return " §B§ "

    text = _BG_COLOR_RE.sub(bg, text)
    text = _SCENE_BG_RE.sub(r"\1", text)
    for pattern, rel in _REL_PATTERNS:
        text = re.sub(pattern, lambda m, rel=rel: f" §L:{rel or m.group(1)}§ ", text)
    for pattern, kind in _POS_PATTERNS:
        text = re.sub(pattern, lambda m, kind=kind: _pos_token(kind, m), text)
    return text


# ---------------------------------------------------------------- word-level pass

_TOKEN_RE = re.compile(r"§[^§]+§|\d+|[a-z]+(?:[-'&][a-z]+)*|[.,;:!?()]")


def _position_of(token: str) -> Position:
    name = token[3:-1]
    if name in ("foreground", "background"):
        return Position(depth=name)
    if name == "center":
        return Position(h="center")
    if "-" in name:
        v, h = name.split("-")
        return Position(h=h, v=v)
    return Position(h=name) if name in ("left", "right") else Position(v=name)


_RELATION = {  # relation -> (position of the subject before it, position of the one after it)
    "left": (Position(h="left"), Position(h="right")), "right": (Position(h="right"), Position(h="left")),
    "above": (Position(v="top"), Position(v="bottom")), "below": (Position(v="bottom"), Position(v="top")),
    "beside": (Position(h="left"), Position(h="right")),
    "front": (Position(depth="foreground"), Position(depth="background")),
    "behind": (Position(depth="background"), Position(depth="foreground")),
}


@dataclass
class _NP:
    words: list[str]
    start: int
    end: int
    count: int | None = None
    count_kind: str = "single"
    confirmed: bool = False
    color: str | None = None
    size: str | None = None
    negated: bool = False
    bare_number: bool = False


def _read_np(toks: list[str], i: int, *, loose: bool) -> _NP | None:
    """Read a noun phrase starting at ``toks[i]``. ``loose``: a bare noun may start it (sentence start,
    or after a comma/"and" inside a list); otherwise it needs a determiner, number or colour."""
    np = _NP(words=[], start=i, end=i)
    j, started = i, False
    while j < len(toks):
        t = toks[j]
        if t in ("exactly", "precisely", "only", "just") and not np.words:
            j += 1
            continue
        if t == "no" and not np.words:
            np.negated, started, j = True, True, j + 1
            continue
        if t in lx.DETERMINERS and not started:
            np.count, np.count_kind = (1, "single") if t in ("a", "an", "another") else (None, "definite")
            started, j = True, j + 1
            continue
        num = WORD_NUMBERS.get(t) if not t.isdigit() else int(t)
        if num is not None and not np.words:
            np.count, np.count_kind, started = num, "stated", True
            if toks[j + 1: j + 2] == ["("] and j + 3 < len(toks) and toks[j + 2].isdigit() and toks[j + 3] == ")":
                np.confirmed, j = int(toks[j + 2]) == num, j + 3
            j += 1
            continue
        if t in lx.VAGUE and not np.words:
            np.count, np.count_kind, started = None, "vague", True
            j += 2 if toks[j + 1: j + 2] == ["of"] else 1
            continue
        if t in lx.COLLECTIVE and toks[j + 1: j + 2] == ["of"] and not np.words:
            n = lx.COLLECTIVE[t]
            if n == "arrangement":
                np.confirmed = True
            elif n is None:
                np.count, np.count_kind = None, "vague"
            else:
                np.count, np.count_kind = n, "stated"
            started, j = True, j + 2
            continue
        shade = lx.norm_color(f"{t} {toks[j + 1]}") if j + 1 < len(toks) and t in lx.SHADES else None
        if shade or t in lx.COLORS:
            if np.color is None:
                np.color = shade or lx.norm_color(t)
            started, j = True, j + (2 if shade else 1)
            continue
        if t in lx.SIZES:
            np.size, started, j = lx.SIZES[t], True, j + 1
            continue
        if not (started or loose) or lx.is_stop(t, after_content=bool(np.words)) or len(np.words) >= 4:
            break
        np.words.append(t)
        started, j = True, j + 1
    np.end = j
    if not started:
        return None
    if not np.words:
        np.bare_number = np.count_kind == "stated"
        return np if np.bare_number else None
    if np.count_kind == "definite":
        np.count, np.count_kind = (None, "plural") if lx.is_plural(np.words[-1]) else (1, "single")
    elif np.count_kind == "single" and np.count is None and lx.is_plural(np.words[-1]):
        np.count_kind = "plural"
    elif np.count is None and np.count_kind == "single":
        np.count_kind = "plural" if lx.is_plural(np.words[-1]) else "single"
        np.count = None if np.count_kind == "plural" else 1
    return np


def parse_prompt(prompt: str) -> Scene:
    """Parse ``prompt`` into a Scene. Never raises on odd input: what it cannot read is dropped."""
    scene = Scene()
    text = mask(prompt, scene)
    for m in _UNQUOTED_RE.finditer(text):
        sentence_end = re.search(r"[.;!?]", text[m.end():])
        rest = text[m.start(): m.end() + (sentence_end.start() if sentence_end else len(text))]
        before = text[: m.start()].rsplit(".", 1)[-1]
        if "§Q" not in rest and "§Q" not in before:
            scene.drop(m.group(1).strip(), "unquoted_text", "text must be in double quotes to be drawn")
    toks = _TOKEN_RE.findall(text)
    sentences: list[list[str]] = [[]]
    for t in toks:
        sentences[-1].append(t)
        if t in ".;!?":
            sentences.append([])
    for k, sent in enumerate(s for s in sentences if s):
        _parse_sentence(sent, k, scene)
    for c in _leftover_colors(text, scene):
        scene.unbound_colors.append(c)
        scene.drop(c, "unbound_color", "colour word not attached to a noun")
    return scene


def _leftover_colors(text: str, scene: Scene) -> list[str]:
    return getattr(scene, "_leftover", [])


def _parse_sentence(toks: list[str], k: int, scene: Scene) -> None:
    group: list[Subject | TextSpec] = []  # the current coordinated group ("a cat, a dog and a bird")
    sentence_subjects: list[Subject] = []
    carrier: TextSpec | None = None
    carrier_name: str | None = None
    text_color: str | None = None
    banner_color: str | None = None
    pending_rel: tuple[list[Subject | TextSpec], str] | None = None
    pending_ref: list[int] = []
    arrangement = False
    leftover: list[str] = scene.__dict__.setdefault("_leftover", [])
    i, joined = 0, True
    while i < len(toks):
        t = toks[i]
        if t.startswith("§Q"):
            spec = scene.texts[int(t[2:-1])]
            spec.sentence, spec.carrier = k, carrier_name
            group = group + [spec] if joined else [spec]
            carrier, joined, i = spec, False, i + 1
            continue
        if t.startswith("§R"):
            n = int(t[2:-1])
            target = next((s for s in reversed(sentence_subjects)), None)
            if i >= 2 and toks[i - 2: i] == ["style", "of"]:
                scene.drop(f"style of reference {n}", "style_reference", "the collage cannot transfer a style")
            elif target is not None and target.ref is None:
                target.ref = n
            else:
                pending_ref.append(n)
            i += 1
            continue
        if t.startswith("§P:"):
            pos = _position_of(t)
            members = [m for m in group] or ([carrier] if carrier else [])
            for m in members:
                clashes = m.position.merge(pos)
                if clashes:
                    scene.drop(t[3:-1], "conflicting_layout", f"{_label(m)} already placed; first wins")
                if isinstance(m, Subject):
                    m.position_source = m.position_source or "prompt"
            if not members:
                scene.drop(t[3:-1], "unbound_layout", "layout phrase with no subject before it")
            joined, i = False, i + 1
            continue
        if t.startswith("§L:"):
            pending_rel = (list(group), t[3:-1]) if group else None
            joined, i = False, i + 1
            continue
        if t == "§A§":
            arrangement, i = True, i + 1
            continue
        if t.startswith("§"):
            i += 1
            continue
        if t in (",", "and", "or", "&"):
            i += 1
            continue
        loose = i == 0 or (toks[i - 1] in (",", "and") and joined)
        np = _read_np(toks, i, loose=loose)
        if np is None:
            if t in lx.COLORS:
                leftover.append(lx.norm_color(t))
            elif t in ("is", "are") and i + 1 < len(toks):
                i = _copula(toks, i, sentence_subjects, scene, leftover)
                continue
            joined = t in (",", "and") and joined
            i += 1
            continue
        i = np.end
        if np.bare_number:
            target = next((s for s in reversed(sentence_subjects) if s.count_kind != "stated"), None)
            if target is None:
                scene.drop(str(np.count), "count_without_noun", "a number with no noun to count")
            else:
                target.count, target.count_kind = np.count, "bare"
            continue
        head = lx.singular(np.words[-1])
        if np.negated:
            continue
        if head in lx.TEXT_STYLE:
            text_color = text_color or np.color
            continue
        if head in lx.TEXT_CARRIERS:
            carrier_name, banner_color = head, banner_color or np.color
            continue
        if head in lx.SCENES:
            _set_scene(scene, lx.SCENES[head], np.color, " ".join(np.words))
            continue
        if head in lx.ARRANGEMENT:
            arrangement = True
            continue
        if head in lx.GENERIC:
            if np.color:
                leftover.append(np.color)
            continue
        if head in lx.PARTS or (i - len(np.words) > 0 and "with" in toks[max(0, np.start - 1): np.start]
                                and head in lx.PARTS):
            if np.color:
                scene.drop(f"{np.color} {head}", "part_color", "colours of parts are not drawn")
            continue
        subject = _make_subject(np, head, k, sentence_subjects)
        if pending_ref:
            subject.ref = pending_ref.pop(0)
        if pending_rel:
            before, rel = pending_rel
            a_pos, b_pos = _RELATION[rel]
            for m in before:
                if isinstance(m, Subject) and m.position.empty():
                    m.position.merge(Position(**a_pos.__dict__))
                    m.position_source = "relation"
            if subject.position.empty():
                subject.position.merge(Position(**b_pos.__dict__))
                subject.position_source = "relation"
            pending_rel = None
        scene.subjects.append(subject)
        sentence_subjects.append(subject)
        group = group + [subject] if joined and group else [subject]
        joined = True
        if toks[i: i + 1] in (["is"], ["are"]):
            i = _copula(toks, i, sentence_subjects, scene, leftover)
    for spec in scene.texts:
        if spec.sentence == k:
            spec.color, spec.banner_color = spec.color or text_color, spec.banner_color or banner_color
    if arrangement:
        for s in sentence_subjects:
            s.count_confirmed = True
    for n in pending_ref:
        scene.drop(f"reference {n}", "unbound_reference", "no subject named near the reference phrase")


def _make_subject(np: _NP, head: str, k: int, previous: list[Subject]) -> Subject:
    words = np.words[:-1] + [head]
    if head in ("one", "ones") and previous:  # "two red apples and four green ones"
        src = previous[-1]
        words, head = src.label.split(), src.head
    count_kind = np.count_kind
    count = np.count
    if count is not None and count > MAX_COUNT:
        count = MAX_COUNT
    return Subject(label=" ".join(words), head=head, phrase=" ".join(np.words), count=count,
                   count_kind=count_kind, count_confirmed=np.confirmed, color=np.color, size=np.size,
                   sentence=k)


def _copula(toks: list[str], i: int, subjects: list[Subject], scene: Scene, leftover: list[str]) -> int:
    """"the car is red": bind a colour that follows is/are to the last subject of the sentence."""
    j = i + 1
    while j < len(toks) and toks[j] in ("all", "painted", "coloured", "colored", "entirely", "completely", "bright"):
        j += 1
    if j < len(toks) and (toks[j] in lx.COLORS or toks[j] in lx.SHADES):
        shade = lx.norm_color(f"{toks[j]} {toks[j + 1]}") if toks[j] in lx.SHADES and j + 1 < len(toks) else None
        color = shade or lx.norm_color(toks[j])
        if color is None:
            return i + 1
        target = subjects[-1] if subjects else None
        if target is None:
            leftover.append(color)
        elif target.color is None:
            target.color = color
        elif target.color != color:
            scene.drop(color, "conflicting_color", f"{target.label} is already {target.color}; first wins")
        return j + (2 if shade else 1)
    return i + 1


def _set_scene(scene: Scene, key: str, color: str | None, phrase: str) -> None:
    if scene.scene is None:
        scene.scene, scene.scene_color = key, color
    elif key == "sky" or key == scene.scene:
        scene.scene_color = scene.scene_color or (color if key == scene.scene else None)
    else:
        scene.drop(phrase, "conflicting_background", f"scene already {scene.scene}; first wins")


def _label(m: Subject | TextSpec) -> str:
    return m.label if isinstance(m, Subject) else f'text "{m.text}"'
