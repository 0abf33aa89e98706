"""The world's records: one request with its hidden constraints, GT program and expert plan.

A ``WorldRequest`` is the single source of truth for a request. ``requests.jsonl`` holds them all;
``bench.jsonl``/``rl.jsonl`` are GenEvolve-Bench rows whose ``meta`` carries the same constraints,
so nothing is hidden from a person reading the files. The judge, the sufficiency judge and the
scripted expert all read these records, never the request text's wording.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

WORLD_VERSION = "genevolve-world/1"
TRACKS = ("knowledge", "quality")


class _Rec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EntitySlot(_Rec):
    """One subject the image must show, tied to one picture of the world's library."""

    slot: str  # "a", "b", ... also the placeholder name in prompt parts: {ref:a}
    entity: str  # "country:au" / "thing:1f408"
    name: str  # what the entity is called: "flag of Australia", "cat"
    head: str  # the noun the collage labels it with: "flag", "cat"
    image: str  # library key of the one right picture
    query: str  # what the expert types into image_search
    count: int = 1
    color: str | None = None
    color_skill: str | None = None  # attribute_binding | physical_material_consistency
    position: str | None = None  # region: left, right, top, bottom, top-left, ...
    pose: str | None = None  # lying | upside_down | jumping
    decoys: list[str] = Field(default_factory=list)  # look-alike library keys, most confusable first


class Fact(_Rec):
    """A fact the request hides; the expert must find ``answer`` in a search result before using it."""

    query: str  # the expert's search query
    answer: str  # the resolved value ("Australia", "CANBERRA")
    statement: str  # one sentence for the expert's reasoning
    wrong: str = ""  # a plausible wrong value, used when the noisy expert forgets the fact


class PromptPart(_Rec):
    """One clause of the GT prompt. ``naive`` is how a writer who skipped ``skill`` phrases it (usually
    the request's own wording). ``{ref:a}`` stands for slot a's ordinal phrase."""

    text: str
    naive: str = ""
    skill: str | None = None


class WorldRequest(_Rec):
    version: str = WORLD_VERSION
    id: str
    question: str
    split: str = ""  # sft | rl | bench
    track: str
    category: str
    difficulty: str  # medium | hard
    template: str  # template id; (template, entities) is unique in a world
    wording: str = "template"  # "free": the question was reworded (genevolve.world.phrasing), same meaning
    skills: list[str]  # skills that matter (the expert calls them)
    entities: list[EntitySlot]
    texts: list[str] = Field(default_factory=list)  # required readable texts, exact
    scene: str | None = None  # required backdrop key (sky, sea, space, ...)
    treatments: list[str] = Field(default_factory=list)  # required global treatments (warm, night, ...)
    facts: list[Fact] = Field(default_factory=list)
    parts: list[PromptPart]
    gt_image: str = ""  # relative path inside the world folder

    @property
    def pair_key(self) -> str:
        """(template, entities): never shared between splits."""
        return self.template + "|" + ",".join(sorted(e.entity for e in self.entities))

    def constraints(self) -> list[str]:
        """The hidden constraints, one readable line each (what the judge's rationale lists)."""
        out = []
        for e in self.entities:
            bits = [f"{e.count} x" if e.count != 1 else "", e.color or "", e.name, f"(picture {e.image})"]
            out.append(" ".join(b for b in bits if b) + (f" at {e.position}" if e.position else "")
                       + (f", pose {e.pose}" if e.pose else ""))
        out += [f'text "{t}"' for t in self.texts]
        out += [f"scene: {self.scene}"] if self.scene else []
        return out + [f"treatment: {t}" for t in self.treatments]

    def gt_prompt(self, ordinals: dict[str, str] | None = None) -> str:
        return render_parts(self.parts, ordinals or default_ordinals(self.entities), skipped=())

    def bench_row(self) -> dict[str, Any]:
        """The GenEvolve-Bench row (``genevolve.bench.datasets`` reads it unchanged)."""
        return {"id": self.id, "question": self.question, "gt_image": self.gt_image, "eval_type": self.track,
                "category": self.category, "difficulty": self.difficulty,
                "meta": {"world_version": self.version, "template": self.template, "skills": self.skills,
                         "constraints": self.constraints(), "hidden": self.model_dump(mode="json")}}


ORDINAL_WORDS = ("first", "second", "third", "fourth")


def default_ordinals(entities: list[EntitySlot]) -> dict[str, str]:
    return {e.slot: f"the {ORDINAL_WORDS[i]} reference image" for i, e in enumerate(entities)}


def render_parts(parts: list[PromptPart], ordinals: dict[str, str], skipped: tuple[str, ...] | set[str]) -> str:
    """Join the prompt clauses, naive where the writer skipped the clause's skill."""
    texts = []
    for p in parts:
        text = p.naive if (p.skill in skipped and p.naive) else p.text
        for slot, phrase in ordinals.items():
            text = text.replace("{ref:" + slot + "}", phrase)
        texts.append(text)
    out = " ".join(t.strip() for t in texts if t.strip())
    return out[:1].upper() + out[1:]
