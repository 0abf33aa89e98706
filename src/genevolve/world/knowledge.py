"""Knowledge-anchored request templates: the subject is named only through a fact to look up.

Eight categories. Every one hides at least one fact (a country behind its capital, currency,
neighbour, rank or internet domain; a thing behind its encyclopedia description; a capital or a
currency name that must be written). The GT prompt names the resolved subject and ties it to its
reference; medium requests have one subject, hard ones add a second subject, a second hop, a count
or a text, with the skill that makes the collage keep it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from genevolve.world.records import PromptPart, WorldRequest
from genevolve.world.slots import NUMBER_WORDS, Context, fact, flag_slot, request, thing_slot

TRACK = "knowledge"
Gen = Callable[[Context, random.Random, str], WorldRequest | None]


def _capital_fact(ctx: Context, c, rng) -> object:
    return fact(f"{c.capital} capital city of which country", c.name, f"{c.capital} is the capital of {c.name}.",
                ctx.similar_country(c, rng).name)


def _two_flags(ctx: Context, rng: random.Random, pool, describe, fact_of, category: str) -> WorldRequest | None:
    if len(pool) < 2:
        return None
    a, b = rng.sample(pool, 2)
    k = rng.randrange(3)
    da, db = describe(a), describe(b)
    question = [
        f"Two flags side by side: on the left the flag of {da}, and on the right the flag of {db}.",
        f"Show the flag of {da} and the flag of {db}, the first one on the left, the second on the right.",
        f"Left and right respectively: the flag of {da} and the flag of {db}.",
    ][k]
    sa, sb = flag_slot(ctx, a, "a", position="left"), flag_slot(ctx, b, "b", position="right")
    parts = [PromptPart(text=f"A flag of {a.name} from {{ref:a}} on the left.", skill="spatial_layout",
                        naive=f"A flag of {a.name} from {{ref:a}} and"),
             PromptPart(text=f"A flag of {b.name} from {{ref:b}} on the right.", skill="spatial_layout",
                        naive=f"a flag of {b.name} from {{ref:b}}, side by side.")]
    return request(category, TRACK, "hard", f"pair{k}", question, ["spatial_layout"], [sa, sb], parts,
                   facts=[fact_of(a), fact_of(b)])


def _one_flag(ctx: Context, rng: random.Random, c, described: str, the_fact, category: str) -> WorldRequest:
    k = rng.randrange(4)
    question = [
        f"The flag of {described}, on a plain white background.",
        f"Draw the national flag of {described}.",
        f"A picture of the flag that belongs to {described}.",
        f"Show me the flag of {described}, flying in the sky.",
    ][k]
    parts = [PromptPart(text=f"A flag of {c.name} from {{ref:a}} in the center.")]
    if k == 3:
        parts.append(PromptPart(text="In the sky."))
    return request(category, TRACK, "medium", f"one{k}", question, [], [flag_slot(ctx, c, "a")],
                   parts, facts=[the_fact], scene="sky" if k == 3 else None)


def capital_flag(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    def describe(c):
        return f"the country whose capital is {c.capital}"

    if difficulty == "hard":
        return _two_flags(ctx, rng, ctx.countries, describe, lambda c: _capital_fact(ctx, c, rng), "capital")
    c = rng.choice(ctx.countries)
    return _one_flag(ctx, rng, c, describe(c), _capital_fact(ctx, c, rng), "capital")


def currency_flag(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    def describe(c):
        return f"the country that pays with the {c.currency}"

    def the_fact(c):
        return fact(f"{c.currency} official currency of", c.name, f"The {c.currency} is the currency of {c.name}.",
                    ctx.similar_country(c, rng).name)

    if difficulty == "hard":
        return _two_flags(ctx, rng, ctx.unique_currency, describe, the_fact, "currency")
    c = rng.choice(ctx.unique_currency)
    return _one_flag(ctx, rng, c, describe(c), the_fact(c), "currency")


def neighbour_flag(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    x = rng.choice(ctx.one_neighbour)
    n = ctx.by_name[x.borders[0]]
    the_fact = fact(f"{x.name} land borders", n.name, f"{x.name} shares a land border only with {n.name}.",
                    ctx.similar_country(n, rng).name)
    described = f"the only country that shares a land border with {x.name}"
    if difficulty == "medium":
        return _one_flag(ctx, rng, n, described, the_fact, "neighbour")
    k = rng.randrange(2)
    question = [f"The flag of {described}, with the flag of {x.name} itself underneath it.",
                f"Stack two flags: {x.name}'s flag at the bottom and, above it, the flag of its only land neighbour."][k]
    parts = [PromptPart(text=f"A flag of {n.name} from {{ref:a}} at the top.", skill="spatial_layout",
                        naive=f"A flag of {n.name} from {{ref:a}}"),
             PromptPart(text=f"A flag of {x.name} from {{ref:b}} at the bottom.", skill="spatial_layout",
                        naive=f"with a flag of {x.name} from {{ref:b}} underneath.")]
    return request("neighbour", TRACK, "hard", f"stack{k}", question, ["spatial_layout"],
                   [flag_slot(ctx, n, "a", position="top"), flag_slot(ctx, x, "b", position="bottom")], parts,
                   facts=[the_fact])


def superlative_flag(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    sub = rng.choice(sorted(ctx.subregions))
    members = ctx.subregions[sub]
    big = max(members, key=lambda c: c.area)
    crowded = max(members, key=lambda c: c.population)

    def the_fact(c, what):
        return fact(f"largest country of {sub} by area" if what == "area" else f"most populous country of {sub}",
                    c.name, f"The {'largest' if what == 'area' else 'most populous'} country of {sub} is {c.name}.",
                    rng.choice([m for m in members if m.code != c.code]).name)

    if difficulty == "medium":
        what = rng.choice(["area", "population"])
        c = big if what == "area" else crowded
        described = (f"the largest country of {sub} by area" if what == "area"
                     else f"the most populous country of {sub}")
        return _one_flag(ctx, rng, c, described, the_fact(c, what), "superlative")
    if big.code == crowded.code:
        return None
    question = (f"On the left, the flag of the largest country of {sub} by area; on the right, the flag of "
                f"the most populous country of {sub}.")
    question = question if rng.random() < 0.5 else (
        f"The flags of the biggest (by area) and the most populous countries of {sub}, left and right respectively.")
    parts = [PromptPart(text=f"A flag of {big.name} from {{ref:a}} on the left.", skill="spatial_layout",
                        naive=f"A flag of {big.name} from {{ref:a}} and"),
             PromptPart(text=f"A flag of {crowded.name} from {{ref:b}} on the right.", skill="spatial_layout",
                        naive=f"a flag of {crowded.name} from {{ref:b}}, left and right respectively.")]
    return request("superlative", TRACK, "hard", "pair", question, ["spatial_layout"],
                   [flag_slot(ctx, big, "a", position="left"), flag_slot(ctx, crowded, "b", position="right")], parts,
                   facts=[the_fact(big, "area"), the_fact(crowded, "population")])


def domain_flag(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    by_tld = rng.random() < 0.5
    c = rng.choice(ctx.unique_tld if by_tld else ctx.unique_calling)
    described = (f"the country whose websites end in {c.tld}" if by_tld
                 else f"the country whose international dialling code is +{c.calling}")
    the_fact = fact(f"internet country domain {c.tld}" if by_tld else f"international calling code +{c.calling}",
                    c.name, f"{c.name} uses {c.tld if by_tld else '+' + c.calling}.", ctx.similar_country(c, rng).name)
    if difficulty == "medium":
        return _one_flag(ctx, rng, c, described, the_fact, "domain")
    n = rng.randint(5, 7)
    word = NUMBER_WORDS[n]
    question = f"A neat line of {word} small flags of {described}." if rng.random() < 0.5 else \
        f"{word.capitalize()} copies of the flag of {described}, like bunting."
    parts = [PromptPart(text=f"Exactly {word} ({n}) flags of {c.name} from {{ref:a}} in a grid.",
                        skill="quantity_counting", naive=f"{word.capitalize()} flags of {c.name} from {{ref:a}}.")]
    return request("domain", TRACK, "hard", "bunting", question, ["quantity_counting"],
                   [flag_slot(ctx, c, "a", count=n)], parts, facts=[the_fact])


def _text_request(ctx, rng, difficulty, category, c, text, text_fact, described_text, extra_facts=()):
    k = rng.randrange(3)
    question = [
        f"The flag of {c.name} at the top, above a road sign that names {described_text}.",
        f"A sign that spells out {described_text}, under the flag of {c.name}.",
        f"Put the flag of {c.name} up top and, below it, a board with {described_text} written on it.",
    ][k]
    parts = [PromptPart(text=f"A flag of {c.name} from {{ref:a}} at the top."),
             PromptPart(text=f'A sign at the bottom reads "{text}".', skill="text_rendering",
                        naive=f"A sign at the bottom with the name {text}.")]
    return request(category, TRACK, difficulty, f"sign{k}", question, ["text_rendering"],
                   [flag_slot(ctx, c, "a", position="top")], parts, texts=[text], facts=[*extra_facts, text_fact])


def capital_text(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    c = rng.choice(ctx.countries)
    wrong = ctx.similar_country(c, rng).capital
    text_fact = fact(f"capital of {c.name}", c.capital, f"The capital of {c.name} is {c.capital}.", wrong)
    if difficulty == "medium":
        return _text_request(ctx, rng, "medium", "capital_text", c, c.capital, text_fact, "its capital city")
    # hard: the country itself is hidden behind its currency
    pool = ctx.unique_currency
    c = rng.choice(pool)
    first = fact(f"{c.currency} official currency of", c.name, f"The {c.currency} is the currency of {c.name}.",
                 ctx.similar_country(c, rng).name)
    text_fact = fact(f"capital of {c.name}", c.capital, f"The capital of {c.name} is {c.capital}.",
                     ctx.similar_country(c, rng).capital)
    req = _text_request(ctx, rng, "hard", "capital_text", c, c.capital, text_fact, "its capital city", [first])
    req.question = req.question.replace(f"flag of {c.name}", f"flag of the country that pays with the {c.currency}")
    req.template += "-hop"
    return req


def currency_text(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    c = rng.choice(ctx.countries)
    text_fact = fact(f"currency of {c.name}", c.currency, f"The currency of {c.name} is the {c.currency}.",
                     ctx.similar_country(c, rng).currency)
    if difficulty == "medium":
        return _text_request(ctx, rng, "medium", "currency_text", c, c.currency, text_fact, "the money used there")
    first = _capital_fact(ctx, c, rng)
    req = _text_request(ctx, rng, "hard", "currency_text", c, c.currency, text_fact, "the money used there", [first])
    req.question = req.question.replace(f"flag of {c.name}", f"flag of the country whose capital is {c.capital}")
    req.template += "-hop"
    return req


def described_thing(ctx: Context, rng: random.Random, difficulty: str) -> WorldRequest | None:
    t = rng.choice(ctx.described)
    noun = {"animal": "animal", "food": "food", "building": "building", "vehicle": "vehicle"}.get(t.kind, "object")
    desc = t.description[0].lower() + t.description[1:]
    wrong = rng.choice([o for o in ctx.described if o.kind == t.kind and o.key != t.key] or ctx.described).name
    the_fact = fact(t.description, t.name, f"The encyclopedia entry described as '{desc}' is {t.name}.", wrong)
    if difficulty == "medium":
        k = rng.randrange(3)
        question = [f"Picture the {noun} an encyclopedia sums up as: {desc}.",
                    f"Show the {noun} whose encyclopedia entry reads '{desc}', in the middle of the frame.",
                    f"Draw the {noun} known in the encyclopedia as {desc}."][k]
        parts = [PromptPart(text=f"{'An' if t.name[0] in 'aeiou' else 'A'} {t.name} from {{ref:a}} in the center.")]
        return request("described", TRACK, "medium", f"one{k}", question, [],
                       [thing_slot(ctx, t, "a", position="center" if k == 1 else None)], parts,
                       facts=[the_fact])
    n = rng.randint(5, 8)
    word = NUMBER_WORDS[n]
    question = f"{word.capitalize()} of the {noun} an encyclopedia sums up as: {desc}."
    parts = [PromptPart(text=f"Exactly {word} ({n}) {t.plural} from {{ref:a}} in a grid.", skill="quantity_counting",
                        naive=f"{word.capitalize()} {t.plural} from {{ref:a}}.")]
    return request("described", TRACK, "hard", "count", question, ["quantity_counting"],
                   [thing_slot(ctx, t, "a", count=n)], parts, facts=[the_fact])


CATEGORIES: dict[str, Gen] = {
    "capital": capital_flag, "currency": currency_flag, "neighbour": neighbour_flag,
    "superlative": superlative_flag, "domain": domain_flag, "capital_text": capital_text,
    "currency_text": currency_text, "described": described_thing,
}
