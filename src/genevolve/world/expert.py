"""The scripted expert: a real policy backend that plays a world request the way a careful agent would.

It reads the conversation so far and writes the next protocol-exact turn. It knows the request's
hidden record (looked up by the request text), but still has to work through the tools:

1. one ``search`` per hidden fact; it reads the result and only states the fact once the answer is
   in it (else it searches again with a confirming query);
2. one ``image_search`` per subject; it picks the image whose title is exactly the subject's name,
   from the ids the tool response actually listed;
3. one ``query_knowledge`` per skill that matters;
4. the answer: the GT prompt's clauses with ordinals following the sorted ids it picked.

``noise`` in [0, 1] makes weaker trajectories, decided once per (request, seed): each skill is
skipped with probability 0.7·noise (its clauses then keep the request's own wording), each fact is
forgotten with probability 0.5·noise (no search; a plausible wrong value is used instead), and each
reference is a look-alike with probability 0.4·noise. noise=0.5 is the "middle setting".

Options (config ``policy: {kind: world-expert, world: DIR, noise: 0.5}``), or the environment
variables ``GENEVOLVE_WORLD`` and ``GENEVOLVE_WORLD_NOISE`` when the config names no world/noise,
so ``genevolve run ... --policy world-expert`` works with the world's config or the variables.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from genevolve.policy.base import Constraint, Policy, Sampling
from genevolve.protocol import ToolCall, format_turn, parse_tool_response, parse_turn
from genevolve.types import Turn
from genevolve.world.records import ORDINAL_WORDS, EntitySlot, Fact, WorldRequest, render_parts

SKIP_SKILL, FORGET_FACT, DISTRACTOR = 0.7, 0.5, 0.4
#: results per text search: the fact document ranks first or second; more results only lengthen the context
SEARCH_TOP_K = 3
_IMG_LINE = re.compile(r"^(IMG_\d{3,}): (.*?)(?: \(source: [^)]*\))?(?: \[unusable[^\]]*\])?(?: <image>)?$", re.M)


@dataclass
class Plan:
    """The expert's decisions for one request (noise applied)."""

    req: WorldRequest
    skipped: set[str] = field(default_factory=set)
    forgotten: list[Fact] = field(default_factory=list)
    distract: set[str] = field(default_factory=set)  # slots that get a look-alike

    def actions(self) -> list[ToolCall]:
        calls = [ToolCall("search", {"queries": [f.query], "top_k": SEARCH_TOP_K}) for f in self.req.facts if f not in self.forgotten]
        seen: set[str] = set()
        for s in self.req.entities:
            q = self.query(s)
            if q not in seen:
                seen.add(q)
                calls.append(ToolCall("image_search", {"query": q, "top_k": 5}))
        calls += [ToolCall("query_knowledge", {"skill_name": k}) for k in self.req.skills if k not in self.skipped]
        return calls

    def swap(self, text: str) -> str:
        """Apply forgotten facts: the wrong value wherever the right one would be written."""
        for f in self.forgotten:
            if f.wrong:
                text = text.replace(f.answer, f.wrong)
        return text

    def query(self, s: EntitySlot) -> str:
        return self.swap(s.query)


class WorldExpert(Policy):
    """``world``: the world folder; ``noise``: 0 (expert) .. 1; ``seed``: varies the noisy choices."""

    name = "world-expert"

    def __init__(self, world: str | Path | None = None, noise: float | None = None, seed: int = 0):
        from genevolve.world.judge import load_requests

        world = world or os.environ.get("GENEVOLVE_WORLD")
        if not world:
            raise ValueError("world-expert needs a world folder: policy option `world: DIR` or $GENEVOLVE_WORLD")
        noise = float(os.environ.get("GENEVOLVE_WORLD_NOISE", 0.0)) if noise is None else float(noise)
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"world-expert noise must be in [0, 1], got {noise}")
        self.world, self.noise, self.seed = Path(world), noise, seed
        self.requests = load_requests(self.world)
        if noise:
            self.name = f"world-expert(noise={noise:g})"

    def plan(self, req: WorldRequest, sampling_seed: int | None = None) -> Plan:
        rng = random.Random(f"{self.seed}|{sampling_seed}|{self.noise}|{req.question}")
        plan = Plan(req)
        plan.skipped = {k for k in req.skills if rng.random() < SKIP_SKILL * self.noise}
        plan.forgotten = [f for f in req.facts if rng.random() < FORGET_FACT * self.noise]
        plan.distract = {s.slot for s in req.entities if rng.random() < DISTRACTOR * self.noise}
        return plan

    async def achat(self, turns: list[Turn], *, sampling: Sampling, constraint: Constraint | None = None) -> str:
        request = next((t.content for t in turns if t.kind == "request"), None)
        if request is None:
            request = next(t.content for t in turns if t.role == "user")
        req = self.requests.get(request.strip())
        if req is None:
            return format_turn("This request is not part of the world I know, so I answer with it as the prompt.",
                               answer={"gen_prompt": request, "reference_images": []})
        plan = self.plan(req, sampling.seed)
        done = [parse_turn(t.content) for t in turns if t.role == "assistant"]
        actions = plan.actions()
        final = any(t.kind == "final_step" for t in turns)
        step = len([d for d in done if d.tool_call])
        if step < len(actions) and not final:
            return self._tool_turn(plan, actions[step], turns)
        return self._answer(plan, turns)

    # ------------------------------------------------------------------ turns

    def _tool_turn(self, plan: Plan, call: ToolCall, turns: list[Turn]) -> str:
        last = _last_response(turns)
        prefix = _reading(plan, turns, last)
        if call.name == "search":
            fact = next(f for f in plan.req.facts if f.query == call.arguments["queries"][0])
            think = f"{prefix}The request does not name its subject directly; I need to look up: {fact.query}."
        elif call.name == "image_search":
            think = f"{prefix}Now I need a reference picture of the {call.arguments['query']}."
        else:
            think = f"{prefix}Before writing the prompt I read the {call.arguments['skill_name']} guidance."
        return format_turn(think.strip(), tool_call=call)

    def _answer(self, plan: Plan, turns: list[Turn]) -> str:
        images = _listed_images(turns)
        picks: dict[str, tuple[str, str]] = {}
        for s in plan.req.entities:
            chosen = _choose(images, plan.swap(s.name), s.slot in plan.distract)
            if chosen:
                picks[s.slot] = chosen
        ids = sorted({img for img, _ in picks.values()})
        ordinals = {slot: f"the {ORDINAL_WORDS[ids.index(img)]} reference image" for slot, (img, _) in picks.items()}
        prompt = plan.swap(render_parts(plan.req.parts, ordinals, plan.skipped))
        notes = {img: title for img, title in picks.values()}
        answer = {"gen_prompt": prompt, "reference_images": [{"img_id": i, "note": f"identity of the {notes[i]}"}
                                                             for i in ids]}
        facts = [plan.swap(f.statement) for f in plan.req.facts]
        think = " ".join(facts) + (" " if facts else "") + (
            f"References: {', '.join(f'{i} ({notes[i]})' for i in ids)}. "
            "I state every required element, count, colour, position and text explicitly.")
        return format_turn(think, answer=answer)


def _last_response(turns: list[Turn]) -> str:
    if turns and turns[-1].role == "user":
        return parse_tool_response(turns[-1].content) or ""
    return ""


def _reading(plan: Plan, turns: list[Turn], last: str) -> str:
    """One sentence about the previous observation (what a careful agent notes before acting)."""
    if not last:
        return ""
    for f in plan.req.facts:
        if f.answer.lower() in last.lower() and f.query.lower()[:20] in last.lower():
            return f"The search confirms it: {f.statement} "
    if "IMG_" in last:
        return "The image results are listed above. "
    if last.startswith("Skill:"):
        return "Noted the guidance. "
    return ""


def _listed_images(turns: list[Turn]) -> list[tuple[str, str]]:
    """(img_id, title) of every usable image a tool response listed, in order."""
    out = []
    for t in turns:
        body = parse_tool_response(t.content) if t.role == "user" else None
        if not body:
            continue
        for m in _IMG_LINE.finditer(body):
            if "[unusable" not in m.group(0):
                out.append((m.group(1), m.group(2).strip()))
    return out


def _choose(images: list[tuple[str, str]], name: str, distract: bool) -> tuple[str, str] | None:
    """The image titled exactly ``name``; with ``distract``, the first other image of the same search."""
    exact = [(i, t) for i, t in images if t.lower() == name.lower()]
    if distract:
        near = [(i, t) for i, t in images if t.lower() != name.lower() and name.split()[-1].lower() in t.lower()]
        if near:
            return near[0]
    return exact[0] if exact else (images[0] if images else None)
