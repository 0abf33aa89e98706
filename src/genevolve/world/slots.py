"""Shared pieces of the request templates: the fact context, entity slots and their look-alikes."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from genevolve.world.facts import Country, Thing
from genevolve.world.library import pictures_for
from genevolve.world.records import EntitySlot, Fact, PromptPart, WorldRequest

NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "black", "white", "brown")


@dataclass
class Context:
    """Indexes over the facts that the templates draw from (built once per world)."""

    countries: list[Country]
    things: list[Thing]
    by_name: dict[str, Country] = field(default_factory=dict)
    unique_currency: list[Country] = field(default_factory=list)
    unique_tld: list[Country] = field(default_factory=list)
    unique_calling: list[Country] = field(default_factory=list)
    one_neighbour: list[Country] = field(default_factory=list)
    subregions: dict[str, list[Country]] = field(default_factory=dict)
    described: list[Thing] = field(default_factory=list)
    figures: list[Thing] = field(default_factory=list)

    @classmethod
    def build(cls, countries: list[Country], things: list[Thing]) -> Context:
        ctx = cls(list(countries), list(things))
        ctx.by_name = {c.name: c for c in countries}
        cur = Counter(c.currency for c in countries)
        tld = Counter(c.tld for c in countries)
        calls = Counter(c.calling for c in countries)
        capitals = Counter(c.capital for c in countries)
        ctx.countries = [c for c in countries if capitals[c.capital] == 1]
        ctx.unique_currency = [c for c in ctx.countries if cur[c.currency] == 1]
        ctx.unique_tld = [c for c in ctx.countries if tld[c.tld] == 1 and len(c.tld) == 3]
        ctx.unique_calling = [c for c in ctx.countries if calls[c.calling] == 1 and c.calling.isdigit()]
        ctx.one_neighbour = [c for c in ctx.countries if len(c.borders) == 1 and c.borders[0] in ctx.by_name]
        groups: dict[str, list[Country]] = defaultdict(list)
        for c in ctx.countries:
            if c.subregion:
                groups[c.subregion].append(c)
        ctx.subregions = {k: v for k, v in sorted(groups.items()) if len(v) >= 3}
        descs = Counter(t.description.lower() for t in things if t.description)
        ctx.described = [t for t in things if t.description and descs[t.description.lower()] == 1
                         and t.head.lower() not in t.description.lower()]
        ctx.figures = [t for t in things if t.kind == "animal"]
        return ctx

    def similar_country(self, c: Country, rng: random.Random) -> Country:
        """A plausible confusion: a country of the same subregion, else any other."""
        pool = [o for o in self.subregions.get(c.subregion, []) if o.code != c.code] or \
            [o for o in self.countries if o.code != c.code]
        return rng.choice(pool)


def _name_distance(a: str, b: str) -> int:
    common = 0
    for x, y in zip(a.lower(), b.lower(), strict=False):
        if x != y:
            break
        common += 1
    return -common


def flag_slot(ctx: Context, c: Country, slot: str, *, position: str | None = None, count: int = 1) -> EntitySlot:
    right, alike = pictures_for(c.key, f"flag of {c.name}")
    near = sorted((o for o in ctx.countries if o.code != c.code), key=lambda o: (_name_distance(o.name, c.name), o.code))
    decoys = [alike.key] + [pictures_for(o.key, "")[0].key for o in near[:2]]
    return EntitySlot(slot=slot, entity=c.key, name=f"flag of {c.name}", head="flag", image=right.key,
                      query=f"flag of {c.name}", count=count, position=position, decoys=decoys)


def thing_slot(ctx: Context, t: Thing, slot: str, **attrs) -> EntitySlot:
    right, alike = pictures_for(t.key, t.name)
    same_kind = [o for o in ctx.things if o.kind == t.kind and o.key != t.key]
    near = sorted(same_kind, key=lambda o: (-len(set(o.name.split()) & set(t.name.split())), o.hexcode))
    decoys = [alike.key] + [pictures_for(o.key, "")[0].key for o in near[:2]]
    return EntitySlot(slot=slot, entity=t.key, name=t.name, head=t.head, image=right.key, query=t.name,
                      decoys=decoys, **attrs)


def request(category: str, track: str, difficulty: str, template: str, question: str, skills: list[str],
            entities: list[EntitySlot], parts: list[PromptPart], **kw) -> WorldRequest:
    return WorldRequest(id="", question=" ".join(question.split()), track=track, category=category,
                        difficulty=difficulty, template=f"{category}/{difficulty}/{template}", skills=skills,
                        entities=entities, parts=parts, **kw)


def fact(query: str, answer: str, statement: str, wrong: str) -> Fact:
    return Fact(query=query, answer=answer, statement=statement, wrong=wrong)


def pick(rng: random.Random, items: list, k: int = 1) -> list:
    return rng.sample(items, k) if len(items) >= k else []


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"
