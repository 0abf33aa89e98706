"""Visual experience (METHOD.md section 3): best-worst pair selection and the experience bundle.

For every group of K rollouts the best and the worst by reward form a *pair*; a pair is kept when the
reward gap is at least ``min_gap`` (0.20) and the worst did not merely fail the protocol; at most
``max_pairs`` (8) pairs per step, largest gaps first. An extractor (``genevolve.evolve.extractors``)
turns each kept pair into one :class:`ExperienceBundle`: five slots of short imperative bullets plus
a retrieval key, and the provenance that says where it came from. ``to_guide`` renders the bundle as
the text of the teacher's decision-guide block (``genevolve.prompts.system_prompt(..., guide=)``).

Choices METHOD.md leaves open (ours):

- "Pure protocol failure" means the worst rollout's reward carries any named failure
  (``Reward.failure``): no answer, invalid answer, empty prompt, no reference, policy error, and also
  render and judge errors. Its 0 says nothing about the visual strategy, so contrasting it with the
  best would teach the protocol, which SFT and the format reward already cover.
- Ties: the best is the highest reward with the lowest sample index; the worst is the lowest reward,
  preferring a rollout without a failure, then the lowest sample index. Pairs with equal gaps keep the
  group order. Gaps are compared with a 1e-9 tolerance, so 0.7 - 0.5 counts as 0.20.
- ``worst_among_valid=True`` (not the paper's rule) picks the worst among rollouts without a failure,
  so a group whose lowest reward is a failure can still yield a pair.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genevolve.evolve.rollout import Rollout
from genevolve.reward import Failure

SLOTS: tuple[str, ...] = ("search_strategy", "knowledge_activation", "reference_selection",
                          "prompt_construction", "failure_avoidance")
SLOT_TITLES = {"search_strategy": "Search strategy", "knowledge_activation": "Knowledge activation",
               "reference_selection": "Reference selection", "prompt_construction": "Prompt construction",
               "failure_avoidance": "Failure avoidance"}
GAP_TOLERANCE = 1e-9
ALL_FAILURES: frozenset[str] = frozenset(str(f) for f in Failure)


# -- the bundle ------------------------------------------------------------------------------------


class RetrievalKey(BaseModel):
    """What the bundle is for: ``trigger`` (the kind of request it helps) and a short entity-free
    ``summary`` of the source request. Memory lookups embed the source request itself (see
    ``Provenance.request``); the key is for people and for the guide text."""

    model_config = ConfigDict(extra="forbid")

    trigger: str
    summary: str


class Provenance(BaseModel):
    """Where a bundle came from: the source request, the step, and the pair's rewards."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    request: str  # the source request's text: the memory's key is its embedding
    step: int = Field(ge=0)
    best_reward: float
    worst_reward: float
    gap: float
    best_id: str = ""  # trajectory ids of the pair
    worst_id: str = ""
    extractor: str = ""
    repairs: list[str] = Field(default_factory=list)  # what validation changed in the extractor's output
    created: float = Field(default_factory=time.time)


class ExperienceBundle(BaseModel):
    """One lesson from a best-worst pair: five slots of bullets, a retrieval key, provenance.

    Every slot holds at least one bullet: where the pair does not differ on a slot, the extractor
    states the best rollout's behaviour as a standard (METHOD.md section 3).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    search_strategy: list[str]
    knowledge_activation: list[str]
    reference_selection: list[str]
    prompt_construction: list[str]
    failure_avoidance: list[str]
    key: RetrievalKey
    provenance: Provenance

    @field_validator(*SLOTS)
    @classmethod
    def _non_empty(cls, bullets: list[str]) -> list[str]:
        bullets = [b.strip() for b in bullets if b.strip()]
        if not bullets:
            raise ValueError("a slot needs at least one bullet")
        return bullets

    def slots(self) -> dict[str, list[str]]:
        return {slot: list(getattr(self, slot)) for slot in SLOTS}

    def to_guide(self) -> str:
        """The text placed in the teacher's decision-guide block (under its fixed heading)."""
        lines = [f"Applies to: {self.key.trigger}", f"Learned from: {self.key.summary}"]
        for slot in SLOTS:
            lines += ["", f"{SLOT_TITLES[slot]}:", *(f"- {b}" for b in getattr(self, slot))]
        return "\n".join(lines)

    def to_json(self, **kw: Any) -> str:
        return self.model_dump_json(**kw)

    @classmethod
    def from_json(cls, text: str | bytes) -> ExperienceBundle:
        return cls.model_validate_json(text)


# -- pair selection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """The best and the worst rollout of one group."""

    best: Rollout
    worst: Rollout

    @property
    def gap(self) -> float:
        return self.best.reward.value - self.worst.reward.value

    def provenance(self, *, extractor: str, step: int | None = None, repairs: Sequence[str] = ()) -> Provenance:
        return Provenance(request_id=self.best.request_id, request=self.best.request,
                          step=self.best.step if step is None else step, best_reward=self.best.reward.value,
                          worst_reward=self.worst.reward.value, gap=self.gap, best_id=self.best.trajectory.id,
                          worst_id=self.worst.trajectory.id, extractor=extractor, repairs=list(repairs))


@dataclass
class PairSelection:
    """The kept pairs (largest gap first) and, per reason, how many groups gave none.

    Reasons: ``too_small`` (fewer than two rollouts), ``small_gap``, ``worst_failed`` (the worst is a
    failure), ``over_cap`` (a valid pair beyond ``max_pairs``).
    """

    pairs: list[Pair] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def _best(group: Sequence[Rollout]) -> Rollout:
    return min(group, key=lambda r: (-r.reward.value, r.sample))


def _worst(candidates: Sequence[Rollout], excluded: Collection[str]) -> Rollout:
    return min(candidates, key=lambda r: (r.reward.value, r.reward.failure in excluded, r.sample))


def select_pairs(groups: Iterable[Sequence[Rollout]], *, min_gap: float = 0.20, max_pairs: int = 8,
                 excluded_failures: Collection[str] = ALL_FAILURES,
                 worst_among_valid: bool = False) -> PairSelection:
    """Best/worst pairs of a step's groups, by the rule in the module docstring.

    Args:
        groups: one sequence of rollouts per request.
        min_gap: keep a pair only if best reward - worst reward >= this.
        max_pairs: at most this many pairs, largest gaps first (``0``: none).
        excluded_failures: failure names that make a worst rollout unusable (default: all of them).
        worst_among_valid: choose the worst among rollouts without an excluded failure.
    """
    if min_gap < 0 or max_pairs < 0:
        raise ValueError(f"min_gap={min_gap}, max_pairs={max_pairs}: both must be >= 0")
    excluded = frozenset(str(f) for f in excluded_failures)
    kept: list[Pair] = []
    skipped: Counter[str] = Counter()
    for group in groups:
        if len(group) < 2:
            skipped["too_small"] += 1
            continue
        best = _best(group)
        others = [r for r in group if r is not best]
        if worst_among_valid:
            others = [r for r in others if r.reward.failure not in excluded]
            if not others:
                skipped["worst_failed"] += 1
                continue
        pair = Pair(best, _worst(others, excluded))
        if pair.gap < min_gap - GAP_TOLERANCE:
            skipped["small_gap"] += 1
        elif pair.worst.reward.failure in excluded:
            skipped["worst_failed"] += 1
        else:
            kept.append(pair)
    kept.sort(key=lambda p: -p.gap)  # stable: equal gaps keep the group order
    if len(kept) > max_pairs:
        skipped["over_cap"] += len(kept) - max_pairs
    return PairSelection(pairs=kept[:max_pairs], skipped=dict(skipped))
