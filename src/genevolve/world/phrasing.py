"""Free-form wordings of world requests: the same hidden record, asked the way people type.

The world's templates give each category a handful of fixed phrasings. A policy trained only on them
learns the templates, not the task: people open with "can you draw", "i need", or nothing at all,
write numbers as digits, quote with either mark, put the second clause first and leave out the full
stop. ``rephrase`` rewrites a request with such changes, each one meaning-preserving, so the record
(subjects, counts, positions, colours, exact texts, facts) and hence the GT program stay valid:

- the opening: a template's lead-in ("A picture of", "Show me", "Draw", ...) is replaced by another
  or dropped;
- "A and B, left and right respectively"-style clauses are spelled out per subject;
- "X on the left, and Y on the right" may swap its two clauses;
- counts may become digits; quoted texts may change quote marks (their letters never change);
- word choice (picture/image, national flag/flag), casing and final punctuation.

Used by ``build_world(rephrase=...)`` on the SFT split only, so the benchmark keeps its templates.
"""

from __future__ import annotations

import random
import re

_LEADS = ("a picture of ", "an image of ", "show me ", "show ", "draw ", "picture ", "imagine ", "make ",
          "create ", "generate ", "i'd like ")
_NEW_LEADS = ("", "", "", "draw ", "make ", "create ", "generate ", "paint ", "illustrate ", "show ",
              "i need ", "i want ", "please draw ", "can you draw ", "could you make ", "make me a picture of ",
              "an image of ", "a picture of ", "give me ", "render ")
_NUMBERS = {"two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
            "nine": "9", "ten": "10"}
_SYNONYMS = ((r"\b(?<!surreal )picture\b", ("image", "illustration", "drawing")), (r"\bnational flag\b", ("flag",)),
             (r"\bno more and no fewer\b", ("exactly that many", "not one more or less")),
             (r"\bside by side\b", ("next to each other",)), (r"\bup top\b", ("at the top",)))
_REGION = r"(?:left|right|top|bottom|top left|top right|bottom left|bottom right)"
#: "A coin and a canned food, right and left respectively" / "... in the top left and bottom right corners respectively"
_RESPECTIVELY = re.compile(rf"^(?P<a>an? [a-z -]+?) and (?P<b>an? [a-z -]+?),? (?:in the )?(?P<p>{_REGION}) and "
                           rf"(?P<q>{_REGION})(?: corners)? respectively$", re.I)
_LEFT_RIGHT = re.compile(r"^(?P<a>.+?) on the (?P<p>left|right|top|bottom), and (?P<b>.+?) on the "
                         r"(?P<q>left|right|top|bottom)$", re.I)
_QUOTED = re.compile(r"'([^']+)'")
_DETERMINERS = {"a", "an", "the", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"}


def rephrase(question: str, rng: random.Random) -> str:
    """A free-form wording of ``question`` with the same meaning (module docstring); deterministic in ``rng``."""
    text = question.strip()
    end = text[-1] if text[-1:] in ".?!" else ""
    body = text[:-1] if end else text
    lead = next((p for p in _LEADS if body.lower().startswith(p)), None)
    if lead is not None and _noun_phrase(body[len(lead):]) and rng.random() < 0.8:
        body = body[len(lead):]
    body = _clauses(body, rng)
    for pattern, options in _SYNONYMS:
        if rng.random() < 0.4:
            body = re.sub(pattern, lambda m, options=options: _same_case(m.group(0), rng.choice(options)), body,
                          flags=re.I)
    body = re.sub(r"\b(a)( [aeiou])", lambda m: m.group(1) + "n" + m.group(2), body, flags=re.I)  # a image
    if _noun_phrase(body) and (lead is None or not body.lower().startswith(lead)) and rng.random() < 0.7:
        new = rng.choice(_NEW_LEADS)
        body = new + (_lower(body) if new else body)
    if rng.random() < 0.4:
        body = re.sub(r"\b(" + "|".join(_NUMBERS) + r")\b(?= [a-z])",
                      lambda m: _NUMBERS[m.group(1).lower()], body, flags=re.I)
    if rng.random() < 0.5:
        body = _QUOTED.sub(lambda m: f'"{m.group(1)}"', body)
    body = body[0].upper() + body[1:] if rng.random() < 0.6 else body[0].lower() + body[1:]
    if body.lower().startswith(("can you", "could you")):
        end = "?"
    elif rng.random() < 0.45:
        end = ""
    elif not end:
        end = "."
    return " ".join(body.split()) + end


def _noun_phrase(body: str) -> bool:
    """Whether ``body`` starts like a thing to draw ("a cat", "the flag", "eight pins"), not an instruction."""
    return body.split(" ", 1)[0].lower() in _DETERMINERS


def _same_case(old: str, new: str) -> str:
    return new[0].upper() + new[1:] if old[0].isupper() else new


def _clauses(body: str, rng: random.Random) -> str:
    """Spell out "respectively" pairings, or swap two positioned clauses; otherwise ``body`` unchanged."""
    m = _RESPECTIVELY.match(body)
    if m and rng.random() < 0.7:
        p, q = m.group("p").lower(), m.group("q").lower()
        corner = " corner" if "corners" in body.lower() else ""
        pairs = [(m.group("a"), p), (m.group("b"), q)]
        if rng.random() < 0.5:
            pairs.reverse()
        (a, p), (b, q) = pairs
        return f"{a} {_where(p, corner)} and {_lower(b)} {_where(q, corner)}"
    m = _LEFT_RIGHT.match(body)
    if m and rng.random() < 0.5:
        return f"{m.group('b')} on the {m.group('q')}, and {_lower(m.group('a'))} on the {m.group('p')}"
    return body


def _where(region: str, corner: str) -> str:
    if corner:
        return f"in the {region}{corner}"
    return f"on the {region}" if region in ("left", "right") else f"at the {region}"


def _lower(phrase: str) -> str:
    """Lower-case a leading determiner ("The flag" -> "the flag"); names keep their capital."""
    first = phrase.split(" ", 1)[0]
    return phrase[0].lower() + phrase[1:] if first.lower() in _DETERMINERS else phrase
