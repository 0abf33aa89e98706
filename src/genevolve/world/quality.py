"""Quality-anchored request templates: every subject is named, the difficulty is in how it must look.

Eight categories, one skill each. A request states its requirement in everyday wording that the
collage renderer does not understand as such (a count of five or more in words only, "left and
right respectively", text in single quotes or none, colours listed apart from their nouns, a
material, a described pose, a mood, a far-fetched setting). The GT prompt says the same thing the
way the skill teaches, which the renderer does keep. A writer who skips the skill keeps the
request's wording (the ``naive`` side of each prompt part), which is how a weaker trajectory fails.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from genevolve.world.records import PromptPart, WorldRequest
from genevolve.world.slots import COLORS, NUMBER_WORDS, Context, article, request, thing_slot

TRACK = "quality"
Gen = Callable[[Context, random.Random, str], WorldRequest | None]

MATERIALS = {"jade": "green", "marble": "white", "bronze": "brown", "copper": "orange", "sapphire": "blue",
             "ruby": "red", "coal": "black", "amethyst": "purple"}
POSES = {  # pose -> (explicit wording the collage reads, everyday wordings it does not)
    "lying": ("lying down on its side", ["sprawled out for a nap", "stretched out flat, fast asleep",
                                          "resting on its side after a long day"]),
    "upside_down": ("upside down", ["hanging the wrong way up", "flipped over with its feet in the air",
                                    "turned head over heels"]),
    "jumping": ("jumping in mid-air", ["caught in mid-air", "springing high off the ground",
                                       "bounding into the air"]),
}
MOODS = {  # treatment -> (explicit style words, everyday wordings)
    "warm": ("In warm light, at golden hour.", ["bathed in the last light of the day", "in the glow of early evening"]),
    "night": ("At night, moonlit.", ["after dark, under a starry sky", "long after the sun has set"]),
    "monochrome": ("In monochrome.", ["with every colour drained away, only greys",
                                                               "like a silver-gelatin print"]),
    "sepia": ("In vintage sepia tones.", ["like a brownish photo from a great-grandparent's album",
                                       "with the yellowed look of a century-old print"]),
    "pastel": ("In pastel colours.", ["in soft candy-like tones", "in gentle sugared-almond shades"]),
    "neon": ("Under neon lights.", ["lit by glowing tubes of electric colour", "under buzzing signs of coloured gas"]),
    "soft": ("In dreamy watercolor.", ["with a gentle, hazy glow", "as if seen through a misty lens"]),
    "high_contrast": ("With dramatic lighting.", ["with deep blacks and blazing highlights",
                                                             "lit hard from one side, half in shadow"]),
}
SETTINGS = {  # scene -> (explicit wording, everyday wordings)
    "space": ("floating in space", ["floating weightless among the planets and stars",
                                    "adrift far beyond the moon"]),
    "sky": ("flying in the sky", ["soaring high above the clouds", "gliding among the clouds"]),
    "sea": ("swimming in the sea", ["gliding deep beneath the waves", "exploring a coral reef"]),
    "snow": ("standing in the snow", ["wandering across a frozen tundra", "crossing an icy polar plain"]),
    "desert": ("walking through the desert", ["wandering a scorching, waterless wasteland",
                                               "crossing the Sahara at noon"]),
    "forest": ("standing in a forest", ["hidden among towering ancient trees", "deep in a mossy old wood"]),
}
WORDS_A = ("FRESH", "GRAND", "SUNNY", "HAPPY", "GOLDEN", "LUCKY", "QUIET", "NORTH", "CORNER", "DAILY")
WORDS_B = ("BAKERY", "MARKET", "CAFE", "GARDEN", "STUDIO", "HARBOR", "LIBRARY", "THEATER", "KITCHEN", "FAIR")
LONG = ("WELCOME TO THE ANNUAL {A} {B} SPRING FESTIVAL", "PLEASE KEEP THIS DOOR CLOSED AT ALL TIMES {B}",
        "THE {A} {B} IS OPEN EVERY DAY FROM NINE TO FIVE", "ALL PROCEEDS FROM TODAY SUPPORT THE {A} {B}")


def _two(ctx: Context, rng: random.Random, pool=None):
    """Two things whose names share no word, so neither the collage nor the judge can mix them up."""
    pool = pool or ctx.things
    while True:
        a, b = rng.sample(pool, 2)
        if not set(a.name.split()) & set(b.name.split()):
            return a, b


def _with_refs(question: str, a: str, b: str) -> str:
    """The request's own wording with the subjects ``a`` and ``b`` (as worded there) tied to their
    references: what a writer who skips the skill sends."""
    out = question.replace(a, "\0A", 1).replace(b, "\0B", 1)
    return out.replace("\0A", f"{a} from {{ref:a}}").replace("\0B", f"{b} from {{ref:b}}")


def _a(t) -> str:
    return f"{article(t.name)} {t.name}"


def counting(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    if difficulty == "medium":
        t = rng.choice(ctx.things)
        n = rng.randint(5, 9)
        w = NUMBER_WORDS[n]
        k = rng.randrange(3)
        question = [f"{w.capitalize()} {t.plural}, no more and no fewer.", f"A picture with {w} {t.plural} in it.",
                    f"I'd like {w} {t.plural} together in one image."][k]
        parts = [PromptPart(text=f"Exactly {w} ({n}) {t.plural} from {{ref:a}} in a grid.", skill="quantity_counting",
                            naive=f"{w.capitalize()} {t.plural} from {{ref:a}}.")]
        return request("counting", TRACK, "medium", f"one{k}", question, ["quantity_counting"],
                       [thing_slot(ctx, t, "a", count=n)], parts)
    a, b = _two(ctx, rng)
    na, nb = rng.sample(range(5, 9), 2)
    question = f"{NUMBER_WORDS[na].capitalize()} {a.plural} and {NUMBER_WORDS[nb]} {b.plural}."
    parts = [PromptPart(text=f"Exactly {NUMBER_WORDS[na]} ({na}) {a.plural} from {{ref:a}} in a grid at the top.",
                        skill="quantity_counting", naive=f"{NUMBER_WORDS[na].capitalize()} {a.plural} from {{ref:a}}."),
             PromptPart(text=f"Exactly {NUMBER_WORDS[nb]} ({nb}) {b.plural} from {{ref:b}} in a grid at the bottom.",
                        skill="quantity_counting", naive=f"{NUMBER_WORDS[nb].capitalize()} {b.plural} from {{ref:b}}.")]
    return request("counting", TRACK, "hard", "two", question, ["quantity_counting"],
                   [thing_slot(ctx, a, "a", count=na), thing_slot(ctx, b, "b", count=nb)], parts)


def layout(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    a, b = _two(ctx, rng)
    if difficulty == "medium":
        pa, pb = rng.choice([("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top")])
        k = rng.randrange(3)
        word = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
        question = [f"Place on the {word[pa]} {_a(a)} and on the {word[pb]} {_a(b)}.",
                    f"{_a(a).capitalize()} and {_a(b)}, {pa} and {pb} respectively.",
                    f"Put {_a(a)} and {_a(b)} in one picture: the {a.name} goes {pa}, the {b.name} goes {pb}."][k]
    else:
        pa, pb = rng.choice([("top-left", "bottom-right"), ("top-right", "bottom-left"),
                             ("bottom-left", "top-right"), ("bottom-right", "top-left")])
        k = rng.randrange(2)
        question = [f"{_a(a).capitalize()} and {_a(b)} in the {pa.replace('-', ' ')} and {pb.replace('-', ' ')} "
                    "corners respectively.",
                    f"Tuck {_a(a)} into the {pa.replace('-', ' ')} corner and send {_a(b)} to the opposite one."][k]
    phrase = {p: f"in the {p.replace('-', ' ')} corner" if "-" in p else f"on the {p}" if p in ("left", "right")
              else f"at the {p}" for p in (pa, pb)}
    parts = [PromptPart(text=f"{_a(a).capitalize()} from {{ref:a}} {phrase[pa]}.", skill="spatial_layout",
                        naive=_with_refs(question, a.name, b.name)),
             PromptPart(text=f"{_a(b).capitalize()} from {{ref:b}} {phrase[pb]}.", skill="spatial_layout", naive=" ")]
    return request("layout", TRACK, difficulty, f"pos{k}", question, ["spatial_layout"],
                   [thing_slot(ctx, a, "a", position=pa), thing_slot(ctx, b, "b", position=pb)], parts)


def text(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    t = rng.choice(ctx.things)
    wa, wb = rng.choice(WORDS_A), rng.choice(WORDS_B)
    if difficulty == "medium":
        words = f"{wa} {wb}"
        k = rng.randrange(3)
        question = [f"{_a(t).capitalize()} next to a sign that says '{words}'.",
                    f"{_a(t).capitalize()} under a banner with the words {words.title()} on it.",
                    f"A poster of {_a(t)}, captioned {words.lower()} in big letters."][k]
        naive = question.replace(t.name, f"{t.name} from {{ref:a}}", 1)
        parts = [PromptPart(text=f"{_a(t).capitalize()} from {{ref:a}} in the center.", skill="text_rendering",
                            naive=naive),
                 PromptPart(text=f'A sign at the bottom reads "{words}".', skill="text_rendering", naive=" ")]
        return request("text", TRACK, "medium", f"short{k}", question, ["text_rendering"],
                       [thing_slot(ctx, t, "a")], parts, texts=[words])
    words = rng.choice(LONG).format(A=wa, B=wb)
    cut = words.rfind(" ", 0, len(words) // 2 + 6)
    first, second = words[:cut], words[cut + 1:]
    question = f"{_a(t).capitalize()} beneath a long banner reading '{words}'."
    parts = [PromptPart(text=f"{_a(t).capitalize()} from {{ref:a}} in the center.", skill="text_rendering",
                        naive=f'{_a(t).capitalize()} from {{ref:a}} beneath a banner that reads "{words}".'),
             PromptPart(text=f'A banner at the top reads "{first}". A banner at the bottom reads "{second}".',
                        skill="text_rendering", naive=" ")]
    return request("text", TRACK, "hard", "long", question, ["text_rendering"],
                   [thing_slot(ctx, t, "a")], parts, texts=[words])


def binding(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    a, b = _two(ctx, rng)
    ca, cb = rng.sample(COLORS, 2)
    na, nb = (1, 1) if difficulty == "medium" else tuple(rng.sample([2, 3, 4], 2))
    k = rng.randrange(3)
    if difficulty == "medium":
        question = [f"{_a(a).capitalize()} and {_a(b)}, coloured {ca} and {cb} respectively.",
                    f"{_a(a).capitalize()} and {_a(b)}; make the {a.name} {ca} and the {b.name} {cb}.",
                    f"{_a(a).capitalize()} and {_a(b)} in {ca} and {cb}, in that order."][k]
        sa, sb = a.name, b.name
        ta, tb = f"{article(ca)} {ca} {a.name}", f"{article(cb)} {cb} {b.name}"
    else:
        wa, wb = NUMBER_WORDS[na], NUMBER_WORDS[nb]
        question = [f"{wa.capitalize()} {a.plural} and {wb} {b.plural}, coloured {ca} and {cb} respectively.",
                    f"{wa.capitalize()} {a.plural} and {wb} {b.plural}; the {a.plural} {ca}, the {b.plural} {cb}.",
                    f"{wa.capitalize()} {a.plural} and {wb} {b.plural} in {ca} and {cb}, in that order."][k]
        sa, sb = a.plural, b.plural
        ta, tb = f"{wa} {ca} {a.plural}", f"{wb} {cb} {b.plural}"
    naive = _with_refs(question, sa, sb)
    parts = [PromptPart(text=f"{ta[0].upper() + ta[1:]} from {{ref:a}} on the left.", skill="attribute_binding",
                        naive=naive[0].upper() + naive[1:]),
             PromptPart(text=f"{tb[0].upper() + tb[1:]} from {{ref:b}} on the right.", skill="attribute_binding",
                        naive=" ")]
    return request("binding", TRACK, difficulty, f"colors{k}", question, ["attribute_binding"],
                   [thing_slot(ctx, a, "a", count=na, color=ca, color_skill="attribute_binding"),
                    thing_slot(ctx, b, "b", count=nb, color=cb, color_skill="attribute_binding")], parts)


def material(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    n = 1 if difficulty == "medium" else 2
    things = rng.sample(ctx.things, n)
    mats = rng.sample(sorted(MATERIALS), n)
    verbs = ["carved from", "sculpted out of", "made entirely of"]
    k = rng.randrange(3)
    clauses = [f"{_a(t)} {verbs[(k + i) % 3]} {m}" for i, (t, m) in enumerate(zip(things, mats, strict=True))]
    question = (f"A statue: {clauses[0]}." if n == 1 else f"Two statues side by side: {clauses[0]}, and {clauses[1]}.")
    slots, parts = [], []
    for i, (t, m) in enumerate(zip(things, mats, strict=True)):
        s, col = "ab"[i], MATERIALS[m]
        where = "in the center" if n == 1 else ("on the left" if i == 0 else "on the right")
        slots.append(thing_slot(ctx, t, s, color=col, color_skill="physical_material_consistency"))
        parts.append(PromptPart(text=f"{article(col).capitalize()} {col} {t.name} from {{ref:{s}}} {where}, carved "
                                     f"from polished {m}.", skill="physical_material_consistency",
                                naive=f"{_a(t).capitalize()} from {{ref:{s}}} {where}, {verbs[(k + i) % 3]} {m}."))
    return request("material", TRACK, difficulty, f"mat{k}", question, ["physical_material_consistency"], slots, parts)


def pose(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    n = 1 if difficulty == "medium" else 2
    animals = rng.sample(ctx.figures, n)
    poses = rng.sample(sorted(POSES), n)
    k = rng.randrange(3)
    clauses = [f"{_a(t)} {POSES[p][1][(k + i) % len(POSES[p][1])]}" for i, (t, p) in enumerate(zip(animals, poses,
                                                                                                    strict=True))]
    question = (f"{clauses[0][0].upper() + clauses[0][1:]}." if n == 1
                else f"{clauses[0][0].upper() + clauses[0][1:]} on the left, and {clauses[1]} on the right.")
    slots, parts = [], []
    for i, (t, p) in enumerate(zip(animals, poses, strict=True)):
        s = "ab"[i]
        where = "in the center" if n == 1 else ("on the left" if i == 0 else "on the right")
        slots.append(thing_slot(ctx, t, s, pose=p, position=None if n == 1 else where.split()[-1]))
        parts.append(PromptPart(text=f"{_a(t).capitalize()} from {{ref:{s}}} {POSES[p][0]} {where}.",
                                skill="anatomy_body_coherence",
                                naive=f"{_a(t).capitalize()} from {{ref:{s}}} {where}, {clauses[i].split(' ', 2)[-1]}."))
    return request("pose", TRACK, difficulty, f"pose{k}", question, ["anatomy_body_coherence"], slots, parts)


def aesthetic(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    t = rng.choice(ctx.things)
    if difficulty == "medium":
        moods = [rng.choice(sorted(MOODS))]
    else:
        moods = [rng.choice(["warm", "night"]), rng.choice(["monochrome", "sepia", "pastel", "neon"])]
    k = rng.randrange(2)
    said = [MOODS[m][1][k] for m in moods]
    question = f"{_a(t).capitalize()}, {' and '.join(said)}."
    parts = [PromptPart(text=f"{_a(t).capitalize()} from {{ref:a}} in the center.", skill="aesthetic_drawing",
                        naive=f"{_a(t).capitalize()} from {{ref:a}} in the center, {' and '.join(said)}."),
             *[PromptPart(text=MOODS[m][0], skill="aesthetic_drawing", naive=" ") for m in moods]]
    return request("aesthetic", TRACK, difficulty, f"mood{k}", question, ["aesthetic_drawing"],
                   [thing_slot(ctx, t, "a")], parts, treatments=moods)


def creative(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    t = rng.choice(ctx.things)
    scene = rng.choice(sorted(SETTINGS))
    k = rng.randrange(2)
    said = SETTINGS[scene][1][k]
    moods = [] if difficulty == "medium" else ["soft"]
    dream = "" if difficulty == "medium" else ", as if in a hazy dream"
    question = [f"A surreal picture: {_a(t)} {said}{dream}.", f"Imagine {_a(t)} {said}{dream}."][k]
    explicit = SETTINGS[scene][0]
    parts = [PromptPart(text=f"{_a(t).capitalize()} from {{ref:a}} in the center, {explicit}.", skill="creative_drawing",
                        naive=f"{_a(t).capitalize()} from {{ref:a}} in the center, {said}{dream}."),
             *[PromptPart(text="In dreamy watercolor.", skill="creative_drawing", naive=" ") for _ in moods]]
    return request("creative", TRACK, difficulty, f"setting{k}", question, ["creative_drawing"],
                   [thing_slot(ctx, t, "a")], parts, scene=scene, treatments=moods)


CATEGORIES: dict[str, Gen] = {
    "counting": counting, "layout": layout, "text": text, "binding": binding, "material": material,
    "pose": pose, "aesthetic": aesthetic, "creative": creative,
}
