"""Read a generation prompt (or a request) into a Scene: what it states explicitly, nothing more.

Shared by the collage renderer (which draws a Scene under the fidelity model of
``docs/collage_renderer.md``) and the heuristic judge (which reads a request's hard constraints with
the same rules), so "what the renderer understood" and "what the judge checks" cannot drift apart.

Rule-based and lexicon-light on purpose. A subject is recognised where the prompt introduces it the
way the prompt-writing skills recommend (an article, a number or a colour before the noun, or a noun
opening a sentence or a list item); a colour only next to its noun or in "the X is red"; a text only
when quoted. Whatever cannot be bound is recorded in ``Scene.dropped`` instead of guessed: the
renderer decides, seeded, what a real generator would do with such leftovers.

Two passes: ``mask`` (regexes over the whole prompt turn quotes, reference ordinals, styles, background
colours, layout phrases and poses into marker tokens), then ``scene_reader.SentenceReader`` per sentence.
"""

from __future__ import annotations

import re

from genevolve.render.scene import Dropped, Position, Scene, Subject, TextSpec
from genevolve.render.scene_reader import SentenceReader
from genevolve.render.scene_words import (
    ARRANGEMENT,
    COLOR_ALIASES,
    COLORS,
    POSES,
    SCENES,
    STYLE_GROUP,
    STYLES,
    norm_color,
)

__all__ = ["Dropped", "Position", "Scene", "Subject", "TextSpec", "mask", "parse_prompt", "tokens"]

# ---------------------------------------------------------------- masking (regex over the whole prompt)

_QUOTE_RE = re.compile(r'"([^"\n]{1,200})"|“([^”\n]{1,200})”')
_MARK_RE = re.compile(r"(§[^§]*§)")
_ORD = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "1st": 1, "2nd": 2, "3rd": 3}
_REF_RE = (r"\b(?:the\s+)?(first|second|third|fourth|fifth|1st|2nd|3rd)\s+(?:reference|ref)"
           r"(?:\s+(?:image|photo|picture))?s?\b|\breference\s+(?:image\s+)?#?([1-5])\b")
_COLOR_RE = "(?:(?:light|pale|dark|deep|bright)[\\s-]+)?(?:" + "|".join([*COLORS, *COLOR_ALIASES]) + ")"
_BG_RE = (rf"\b(?:on|against|with|over)?\s*(?:a|an|the)?\s*(?:plain|solid|simple|clean)?\s*({_COLOR_RE})\s+"
          rf"(?:background|backdrop)\b|\b(?:the\s+)?(?:background|backdrop)\s+is\s+({_COLOR_RE})\b")
_OF_FRAME = r"(?:\s+of\s+the\s+(?:image|frame|picture|scene|canvas|composition|poster|photo))?"
_VERT = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_LAYOUT = [  # (pattern, replacement builder), applied in order outside earlier markers
    (r"\bto the (left|right) of\b", lambda m: f"§L:{m.group(1)}§"),
    (r"\b(?:on top of|above)\b", lambda m: "§L:above§"),
    (r"\b(?:below|beneath|underneath|under)\b", lambda m: "§L:below§"),
    (r"\b(?:beside|next to|alongside)\b", lambda m: "§L:beside§"),
    (r"\bin front of\b", lambda m: "§L:front§"), (r"\bbehind\b", lambda m: "§L:behind§"),
    (r"\bfrom left to right\b", lambda m: "§A:row§"), (r"\bevenly spaced\b", lambda m: "§A:spaced§"),
    (r"\bin an? (?:neat |single |straight )?(row|line|grid|circle|column)\b",
     lambda m: f"§A:{ARRANGEMENT[m.group(1)]}§"),
    (r"\b(?:in|at|on|to)?\s*(?:the\s+)?(top|upper|bottom|lower)[\s-]+(left|right)(?:[\s-]+(?:hand\s+)?"
     r"(?:corner|side|quadrant|third))?" + _OF_FRAME + r"\b", lambda m: f"§P:{_VERT[m.group(1)]}-{m.group(2)}§"),
    (r"\b(?:on|at|in|to|along)?\s*(?:the\s+)?(left|right)(?:[\s-]+hand)?(?:\s+(?:side|half|edge|third))?"
     + _OF_FRAME + r"\b", lambda m: f"§P:{m.group(1)}§"),
    (r"\b(?:at|on|in|along|across)?\s*(?:the\s+)?(top|bottom|upper|lower)(?:\s+(?:half|edge|part|third))?"
     + _OF_FRAME + r"\b", lambda m: f"§P:{_VERT[m.group(1)]}§"),
    (r"\b(?:in|at)?\s*(?:the\s+)?(?:very\s+)?(?:center|centre|middle)" + _OF_FRAME + r"\b|\bcent(?:er|re)d\b",
     lambda m: "§P:center§"),
    (r"\b(?:in|at)?\s*(?:the\s+)?(foreground|background)\b", lambda m: f"§P:{m.group(1)}§"),
]
_UNQUOTED_RE = re.compile(
    r"\b(?:that says|which says|says|saying|that reads|which reads|reads|titled|entitled|captioned|"
    r"labell?ed|inscribed(?: with)?|with the words?|the words?|with the text|the text|spelling)\b[:,]?\s+"
    r"([^.;!?§]{1,60})")


def _sub_outside(pattern: str, repl, text: str) -> str:
    """``re.sub`` that leaves earlier markers (§...§) alone."""
    return "".join(p if p.startswith("§") else re.sub(pattern, lambda m: f" {repl(m)} ", p)
                   for p in _MARK_RE.split(text))


def mask(prompt: str, scene: Scene) -> str:
    """Turn quoted texts, reference ordinals, styles, background colours and layout phrases into
    marker tokens (recording what they mean on ``scene``), so the word pass sees nouns, numbers, colours."""
    def quote(m: re.Match) -> str:
        scene.texts.append(TextSpec(text=" ".join((m.group(1) or m.group(2)).split())))
        return f" §Q{len(scene.texts) - 1}§ "

    text = _QUOTE_RE.sub(quote, prompt.replace("\n", " . "))
    text = "".join(p if p.startswith("§") else p.lower().replace("’", "'") for p in _MARK_RE.split(text))

    def ref(m: re.Match) -> str:
        n = _ORD[m.group(1)] if m.group(1) else int(m.group(2))
        scene.references_named += [] if n in scene.references_named else [n]
        return f"§R{n}§"

    text = _sub_outside(_REF_RE, ref, text)
    matches = sorted((m.start(), m.group(0), t) for p, t in STYLES for m in re.finditer(p, text))
    for _, phrase, treatment in matches:  # in reading order, so "first wins" means first in the prompt
        if treatment in scene.treatments:
            continue
        if STYLE_GROUP[treatment] in {STYLE_GROUP[t] for t in scene.treatments}:
            scene.drop(phrase, "conflicting_style", f"one {STYLE_GROUP[treatment]} treatment per image; first wins")
        else:
            scene.treatments.append(treatment)
    for p, _ in STYLES:  # style phrases that contain colour words must not read as colours
        text = _sub_outside(p, lambda m: "§S§" if re.search(_COLOR_RE, m.group(0)) else m.group(0), text)

    def bg(m: re.Match) -> str:
        color = norm_color(m.group(1) or m.group(2))
        if scene.background_color is None:
            scene.background_color = color
        elif scene.background_color != color:
            scene.drop(m.group(0).strip(), "conflicting_background", "first background colour wins")
        return "§B§"

    text = _sub_outside(_BG_RE, bg, text)
    text = _sub_outside(r"\b(" + "|".join(SCENES) + r")\s+(?:background|backdrop|setting)\b",
                        lambda m: m.group(1), text)
    for pattern, build in _LAYOUT:
        text = _sub_outside(pattern, build, text)
    for pattern, pose in POSES:
        text = _sub_outside(pattern, lambda m, pose=pose: f"§O:{pose}§", text)
    return text


_TOKEN_RE = re.compile(r"§[^§]+§|\d+|[a-z]+(?:[-'&][a-z]+)*|[.,;:!?()]")


def tokens(prompt: str, scene: Scene) -> list[list[str]]:
    """Masked prompt -> sentences of tokens; also records unquoted text intents on ``scene``."""
    text = mask(prompt, scene)
    for sentence in re.split(r"[.;!?]", text):
        m = _UNQUOTED_RE.search(sentence)
        if m and "§Q" not in sentence:
            scene.drop(m.group(1).strip(), "unquoted_text", "text is drawn only when it is in double quotes")
    out: list[list[str]] = [[]]
    for t in _TOKEN_RE.findall(text):
        if t in ".;!?":
            out.append([])
        elif t != ":":
            out[-1].append(t)
    return [s for s in out if s]


def parse_prompt(prompt: str) -> Scene:
    """Parse ``prompt`` into a Scene. Never raises on odd input: what it cannot read is dropped."""
    scene = Scene()
    for sentence in tokens(prompt, scene):
        SentenceReader(sentence, scene).run()
    return scene
