"""Word tables for the prompt parser: colours, numbers, determiners, scene and layout nouns.

Kept apart from the parsing logic so the vocabulary can grow without touching the rules. The lists
are small on purpose: the parser recognises subjects by sentence shape, not by a noun dictionary.
"""

from __future__ import annotations

_w = str.split
COLORS = {  # name -> RGB; the renderer tints with these
    "red": (215, 38, 45), "orange": (245, 140, 30), "yellow": (245, 205, 40), "green": (55, 165, 70),
    "blue": (45, 100, 215), "purple": (135, 65, 185), "violet": (140, 80, 210), "pink": (240, 130, 180),
    "brown": (125, 80, 45), "black": (28, 28, 30), "white": (248, 248, 245), "gray": (128, 128, 128),
    "gold": (215, 165, 35), "silver": (190, 190, 200), "cyan": (40, 195, 215), "teal": (0, 128, 128),
    "navy": (25, 35, 100), "beige": (225, 205, 165), "cream": (248, 238, 208), "maroon": (125, 20, 40),
    "turquoise": (60, 205, 195), "magenta": (215, 40, 175), "crimson": (185, 20, 50),
}
COLOR_ALIASES = {"grey": "gray", "golden": "gold"}
SHADES = set(_w("light pale dark deep bright"))
WORD_NUMBERS = {w: i for i, w in enumerate(_w(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"))} | {"single": 1, "dozen": 12}
MAX_COUNT = 24  # more instances would be specks on a 512 canvas
DETERMINERS = set(_w("a an the this these those its his her their my our your another each every"))
VAGUE = set(_w("some several many few multiple various numerous lots plenty countless assorted dozens"))
COLLECTIVE: dict[str, int | str | None] = {
    "pair": 2, "trio": 3, "couple": None, "group": None, "bunch": None, "flock": None, "herd": None,
    "crowd": None, "pile": None, "stack": None, "handful": None, "lot": None, "set": None,
    "row": "arrangement", "line": "arrangement", "column": "arrangement", "grid": "arrangement",
    "circle": "arrangement", "ring": "arrangement"}
SIZES = {w: "small" for w in _w("small tiny little miniature mini")} | {
    w: "large" for w in _w("large big huge giant enormous massive tall")}
STOP = set(_w(
    "on in at of with from to by for as into onto over under near inside outside across along around through "
    "between among against toward towards upon within without about like than via per and or but nor so yet "
    "while whereas because if when then that which who whom whose where it they them there here he she him "
    "we us you i me is are was were be been being am has have had do does did can could will would should "
    "may might must not no very too also all both either neither any none other such same only just still "
    "even almost quite rather really maybe perhaps roughly approximately nearly exactly precisely "
    "slightly fully evenly while whole"))
VERBS = set(_w(
    "sit stand hold wear look swim run walk lie rest float grow read say lean perch jump eat sleep sing "
    "dance fill surround stretch reach glow shine burn rise appear seem make use draw create render "
    "generate place put add depict paint illustrate keep include ensure arrange position overlook peek "
    "chase hug gaze stare climb sail drive show give let"))
VERB_FORMS = VERBS | {v + ("es" if v.endswith(("sh", "ch", "s")) else "s") for v in VERBS} | {"lies", "flies"}
ING_NOUNS = set(_w("building painting ceiling ring king wing string swing earring wedding dumpling pudding "
                   "evening morning clothing sibling duckling seedling sapling thing spring icing frosting "
                   "awning railing carving drawing sling stocking"))
ED_NOUNS = set(_w("red bed sled shed seed weed steed reed tweed"))
TEXT_STYLE = set(_w("letter lettering text font type typeface character word serif sans-serif script "
                    "calligraphy typography wording"))
TEXT_CARRIERS = set(_w("sign signboard banner poster label billboard plaque board placard headline title "
                       "caption awning cover menu logo wordmark sticker tag marquee"))
SCENES = {w: key for key, words in {
    "sky": "sky", "sea": "sea ocean", "water": "lake pond river water", "snow": "snow winter",
    "grass": "grass field meadow lawn park garden hill hillside countryside farm",
    "desert": "desert sand dune", "beach": "beach shore coast", "forest": "forest woods jungle",
    "city": "city street town road skyline downtown alley", "space": "space galaxy universe",
    "room": "room kitchen interior office studio wall indoors bedroom", "table": "table desk counter "
    "tabletop countertop shelf floor"}.items() for w in _w(words)}
GENERIC = set(_w(
    "image picture photo photograph illustration scene composition view shot frame canvas style reference "
    "model subject side corner edge center centre middle left right top bottom foreground background "
    "lighting light color colour tone mood atmosphere detail quality resolution angle perspective close-up "
    "closeup portrait version layout area part front rest way time look effect texture shape size "
    "number copy instance kind sort other everything anything something nothing camera lens focus "
    "contrast palette hue shade aspect ratio setting element object item none all each"))
ARRANGEMENT = {"row": "row", "line": "row", "column": "column", "grid": "grid", "circle": "circle",
               "ring": "circle"}  # collective noun -> how the copies are laid out
PARTS = set(_w("petal eye hair ear tail wing stripe spot handle wheel roof door window leg arm nose mouth "
               "paw fur feather beak horn collar sleeve button lid trim"))
_IRREGULAR = {"people": "person", "children": "child", "mice": "mouse", "geese": "goose", "feet": "foot",
              "teeth": "tooth", "men": "man", "women": "woman", "leaves": "leaf", "wolves": "wolf",
              "knives": "knife", "loaves": "loaf", "shelves": "shelf", "calves": "calf", "scarves": "scarf",
              "tomatoes": "tomato", "potatoes": "potato", "mangoes": "mango", "heroes": "hero", "dice": "die"}
STYLES = [  # (pattern, treatment); groups: a prompt gets at most one treatment per group, first wins
    (r"\bin black[- ]and[- ]white\b|\bblack[- ]and[- ]white(?=\s+(?:photo|photograph|image|picture|style|"
     r"film|photography|shot|portrait))|\bmonochrome\b|\bgr[ae]yscale\b|\bb&w\b", "monochrome"),
    (r"\b(?:sunset|sunrise|golden hour|dusk|warm (?:light|lighting|tones?|glow|colou?rs))\b", "warm"),
    (r"\b(?:at night|night[- ]?time|midnight|moonlit|moonlight|night)\b", "night"),
    (r"\b(?:vintage|sepia|retro|old photo(?:graph)?)\b", "sepia"),
    (r"\bpastel\b", "pastel"), (r"\b(?:neon|cyberpunk)\b", "neon"),
    (r"\b(?:watercolou?r|soft focus|painterly|dreamy|soft light(?:ing)?)\b", "soft"),
    (r"\b(?:high[- ]contrast|dramatic lighting|dramatic)\b", "high_contrast")]
POSES = [  # (pattern, pose): the only body poses a collage can show, as a turn of the sprite
    (r"\b(?:lying|lies|lie) (?:down|flat|on (?:its|his|her|their) (?:side|back))\b|\blying down\b", "lying"),
    (r"\bupside[- ]down\b", "upside_down"),
    (r"\b(?:jumping|leaping|mid-?leap|mid-?jump)\b", "jumping")]
POSE_ANGLE = {"lying": 90, "upside_down": 180, "jumping": 25}  # degrees, counter-clockwise
STYLE_GROUP = {"warm": "light", "night": "light", "monochrome": "palette", "sepia": "palette",
               "pastel": "palette", "neon": "palette", "soft": "finish", "high_contrast": "finish"}


def norm_color(words: str) -> str | None:
    """'Grey' -> 'gray', 'light blue' -> 'light blue', 'pale mauve' -> None."""
    parts = words.lower().replace("-", " ").split()
    base = COLOR_ALIASES.get(parts[-1], parts[-1]) if parts else ""
    if base not in COLORS or len(parts) > 2 or (len(parts) == 2 and parts[0] not in SHADES):
        return None
    return " ".join(parts[:-1] + [base])


def singular(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is", "os")) and len(word) > 3:
        return word[:-1]
    return word


def is_color(t: str) -> bool:
    return COLOR_ALIASES.get(t, t) in COLORS


def is_plural(word: str) -> bool:
    return singular(word) != word
