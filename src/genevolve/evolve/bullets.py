"""Validation and repair of experience bullets: short, imperative, free of named entities.

METHOD.md section 3 asks for bullets of about 12-22 words, phrased as actions, with no named
entities, so that a bundle learned on one request transfers to similar ones instead of leaking the
source request's answer. Both extractors pass every bullet through :func:`clean_bullet`; the LLM
extractor re-asks when a slot ends up empty.

The checks are heuristics (ours), written to fail safe:

- Entities: the source requests' quoted spans and capitalised names (:func:`request_entities`),
  plus any capitalised run of words after the first word of a sentence in the bullet itself, are
  replaced by a generic phrase ("the required text", "the subject"). All-caps acronyms (JSON, OCR)
  are kept. Image ids (``IMG_007``) and URLs are replaced too: they name one rollout's results.
- Imperative: the first word must not be a pronoun, article or a rollout noun ("the best rollout
  searched ..."), nor an -ing/-ed form unless it is a known verb; a third-person verb ("Uses") is
  turned into the base form, and "You should"/"Make sure to" prefixes are dropped.
- Length: a bullet over ``max_words`` is cut at a clause boundary when one leaves at least
  ``min_words``, else at ``max_words`` words; a bullet under ``min_words`` is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_w = str.split
VERBS = frozenset(_w(
    "add adjust align anchor apply ask attach avoid balance bind break build call cap capture center "
    "check choose cite clarify combine commit compare compose confirm connect consider constrain copy count "
    "cover crop declare define delay describe detail direct do double-check drop emphasise emphasize "
    "enumerate ensure establish exclude expand favour favor fetch fill filter find finish fix focus follow "
    "frame gather give ground group handle identify ignore include inspect keep label lead lead leave "
    "limit list locate look make map match mention name narrow note number open order pair pass pick "
    "pin place plan point position prefer prepare preserve prioritise prioritize pull put query quote "
    "rank read reconcile record refer reject rely remove render reorder repeat replace request require "
    "reserve resolve restate retrieve reuse review rewrite run scan search select separate set settle "
    "show size skip sort spell split start state stay stick stop structure supply swap tag take target "
    "test tie translate treat trust try tune use validate verify weigh word write"))
ADVERBS = frozenset(_w("always never first only then before after once when if for once instead"))
NOT_IMPERATIVE = frozenset(_w(
    "the a an this that these those it its they them their there he she we you i our your his her "
    "best worst better worse both rollout rollouts trajectory trajectories policy agent model student "
    "teacher one each every no not searching using"))
_PREFIXES = re.compile(r"^(?:you\s+(?:should|must|need\s+to|have\s+to)|should|must|make\s+sure\s+to|"
                       r"remember\s+to|be\s+sure\s+to|try\s+to)\s+", re.IGNORECASE)
_LIST_MARK = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)])\s*")
_QUOTED = re.compile(r"\"[^\"\n]{1,200}\"|\u201c[^\u201d\n]{1,200}\u201d|(?<![A-Za-z])'[^'\n]{1,200}'(?![A-Za-z])")
_IMG_ID = re.compile(r"\bIMG_\d+\b")
_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+")
_CAP_RUN = re.compile(r"\b[A-Z][a-z0-9'’&.-]*[a-z][a-z0-9'’&.-]*(?:\s+(?:of\s+|the\s+|de\s+)?[A-Z][a-z0-9'’&.-]+)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*)$")
_ARTICLE_BEFORE = re.compile(r"\b(?:the|a|an)\s+$", re.IGNORECASE)
_CLAUSE_CUTS = (";", " - ", " \u2014 ", ", so ", ", and ", ", then ", ", which ", ", because ", ", ")
_TRAILING_FILLER = frozenset(_w("and or but the a an of to with for in on at by so then which because"))
# Capitalised words that open a request without naming anything ("Draw ...", "A poster ...").
COMMON_STARTERS = frozenset(_w(
    "a an the this that these those draw create generate make design show render paint illustrate depict "
    "produce picture imagine photograph sketch visualize visualise compose give please can could i we my "
    "our image photo poster illustration painting portrait logo scene cover close close-up view one two "
    "three four five six seven eight nine ten several some many an old young cute tiny small large big "
    "red blue green yellow black white pink purple orange brown gray grey gold silver in on at under "
    "inside outside above below beside behind near with without top bottom left right front back "
    "realistic photorealistic cartoon minimalist vintage modern futuristic watercolor oil flat"))
SUBJECT = "the subject"
TEXT = "the required text"


def words(text: str) -> list[str]:
    return text.split()


def _title_runs(text: str) -> list[tuple[int, str]]:
    """(start, run) for capitalised word runs; acronyms in all caps are not matched."""
    return [(m.start(), m.group(0).rstrip(".'’-")) for m in _CAP_RUN.finditer(text)]


def request_entities(requests: Iterable[str]) -> list[str]:
    """Named entities in source requests: quoted spans (with their quotes) and capitalised names.

    A capitalised word that opens a sentence counts only when it is not a common request word or
    when it starts a run of capitalised words ("Golden Gate Bridge at dusk"). Longest first.
    """
    found: set[str] = set()
    for text in requests:
        found.update(m.group(0) for m in _QUOTED.finditer(text))
        unquoted = _QUOTED.sub(" ", text)
        for start, run in _title_runs(unquoted):
            first = run.split()[0]
            at_start = bool(_SENTENCE_START.search(unquoted[:start]))
            if at_start and " " not in run and first.lower().strip("'’") in COMMON_STARTERS:
                continue
            if at_start and " " in run and first.lower() in COMMON_STARTERS:
                run = re.sub(r"^(?:(?:of|the|de)\s+)+", "", run.split(None, 1)[1])  # "Draw the X Y" -> "X Y"
            found.add(run)
    return sorted(found, key=lambda e: (-len(e), e))


def _replace(text: str, span: tuple[int, int], generic: str) -> str:
    head, tail = text[:span[0]], text[span[1]:]
    if _ARTICLE_BEFORE.search(head) and generic.startswith("the "):
        head = _ARTICLE_BEFORE.sub("", head)
    return head + generic + tail


def strip_entities(text: str, entities: Iterable[str] = ()) -> tuple[str, int]:
    """``text`` with entities replaced by generic phrases, and how many were replaced."""
    count = 0

    def sub(pattern: re.Pattern[str], generic: str, s: str) -> str:
        nonlocal count
        while (m := pattern.search(s)) is not None:
            s = _replace(s, m.span(), generic)
            count += 1
        return s

    text = sub(_URL, "the source page", text)
    text = sub(_IMG_ID, "the chosen image", text)
    text = sub(_QUOTED, TEXT, text)
    for entity in entities:
        if entity[:1] in "\"'\u201c":
            continue  # quoted spans are handled above, whatever their content
        flags = re.IGNORECASE if " " in entity else 0
        text = sub(re.compile(rf"(?<![\w-]){re.escape(entity)}(?![\w-])", flags), SUBJECT, text)
    # A capitalised run that does not open a sentence is a name the source requests did not show.
    pos = 0
    while True:
        runs = [(s, r) for s, r in _title_runs(text[pos:]) if not _SENTENCE_START.search(text[:pos + s])]
        if not runs:
            break
        start, run = runs[0]
        start += pos
        text = _replace(text, (start, start + len(run)), SUBJECT)
        count += 1
        pos = start
    text = re.sub(rf"\b{SUBJECT}(?:\s+{SUBJECT})+", SUBJECT, text)
    return text, count


def _make_imperative(text: str) -> tuple[str | None, list[str]]:
    notes = []
    stripped = _PREFIXES.sub("", text)
    if stripped != text:
        notes.append("dropped a modal prefix")
        text = stripped
    first, _, rest = text.partition(" ")
    word = first.lower().strip(",:;")
    if word in NOT_IMPERATIVE:
        return None, [*notes, f"not imperative (starts with {first!r})"]
    if word not in VERBS and word not in ADVERBS:
        for base in (word[:-2], word[:-1]):  # "searches" -> "search", "uses" -> "use"
            if word.endswith("s") and base in VERBS:
                first, word = base.capitalize(), base
                notes.append("third-person verb made imperative")
                break
        else:
            if word.endswith(("ing", "ed")):
                return None, [*notes, f"not imperative (starts with {first!r})"]
    return (first[:1].upper() + first[1:] + (" " + rest if rest else "")), notes


def _shorten(text: str, min_words: int, max_words: int) -> str:
    best = None
    for cut in _CLAUSE_CUTS:  # the strongest boundary first, its last occurrence that fits
        idx = text.rfind(cut)
        while idx > 0 and best is None:
            if min_words <= len(words(text[:idx])) <= max_words:
                best = text[:idx]
            idx = text.rfind(cut, 0, idx)
        if best is not None:
            break
    if best is None:
        kept = words(text)[:max_words]
        while len(kept) > min_words and kept[-1].lower().strip(",;:") in _TRAILING_FILLER:
            kept.pop()
        best = " ".join(kept)
    return best.rstrip(",;:- \u2014")


def clean_bullet(text: str, entities: Iterable[str] = (), *, min_words: int = 10,
                 max_words: int = 22) -> tuple[str | None, list[str]]:
    """The bullet made valid, or ``None`` when it cannot be; with notes on what was changed or why
    it was dropped."""
    notes: list[str] = []
    text = " ".join(_LIST_MARK.sub("", str(text)).split())
    if not text:
        return None, ["empty"]
    text, n = strip_entities(text, entities)
    if n:
        notes.append(f"replaced {n} named entit{'y' if n == 1 else 'ies'}")
    made, why = _make_imperative(text)
    notes += why
    if made is None:
        return None, notes
    text = made
    if len(words(text)) > max_words:
        text = _shorten(text, min_words, max_words)
        notes.append(f"shortened to {len(words(text))} words")
    if len(words(text)) < min_words:
        return None, [*notes, f"too short ({len(words(text))} words)"]
    if not text.endswith((".", "!")):
        text = text.rstrip("?") + "."
    return text, notes


def clean_slot(bullets: Iterable[str], entities: Iterable[str] = (), *, min_words: int = 10,
               max_words: int = 22, max_bullets: int = 4) -> tuple[list[str], list[str]]:
    """Valid, distinct bullets (at most ``max_bullets``) and the notes of every repair or drop."""
    entities = list(entities)
    kept: list[str] = []
    notes: list[str] = []
    for raw in bullets:
        bullet, why = clean_bullet(raw, entities, min_words=min_words, max_words=max_words)
        notes += why
        if bullet is not None and bullet.lower() not in {b.lower() for b in kept}:
            kept.append(bullet)
    if len(kept) > max_bullets:
        notes.append(f"kept the first {max_bullets} of {len(kept)} bullets")
    return kept[:max_bullets], notes
