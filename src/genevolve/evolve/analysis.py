"""Reading finished runs: spread over seeds, learning curves, and what a teacher's guide changes.

Used by ``benchmarks/ablation.py``; each function also works on any evolve run folder.

- ``mean_std``: mean and sample standard deviation over seeds (std 0 for one seed).
- ``reward_curve``: an evolve run's mean reward per step against rollouts spent so far.
- ``rollouts_to_reach``: the first rollout count at which a (smoothed) curve reaches a target.
- ``paired_difference``: a run's reward (or another step metric) minus a frozen control's, step by step
  (same requests and seeds).
- ``teacher_pushes``: for one student rollout and one experience bundle, the assistant tokens whose
  log-probability the teacher context raises or lowers most: what distillation would push.
- ``copy_rate``: how often a policy's first image query reuses a content word of the request, a quick
  check that a small policy conditions on the request at all.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample (n - 1) standard deviation; one value has std 0. Empty input raises."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def step_records(run: str | Path) -> dict[int, dict[str, Any]]:
    """An evolve run's ``metrics.jsonl`` by step (a step logged twice keeps its last record)."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in (Path(run) / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[int(record["step"])] = record
    return by_step


def reward_curve(run: str | Path) -> tuple[list[int], list[float]]:
    """``(rollouts, reward)`` per step of an evolve run: rollouts spent through that step, and the
    step's mean reward (from ``metrics.jsonl``; a step logged twice keeps its last record)."""
    by_step = step_records(run)
    rollouts, rewards, spent = [], [], 0
    for step in sorted(by_step):
        spent += int(by_step[step]["rollouts"])
        rollouts.append(spent)
        rewards.append(float(by_step[step]["reward"]))
    return rollouts, rewards


@dataclass
class PairedDifference:
    """Step-by-step reward of a run minus a control's, over the steps both have.

    Two evolve runs of one config and seed draw the same requests with the same sampling seeds, so with
    a frozen control (the same config at ``lr: 1e-12``) each step's difference measures the policy, not
    which requests the step drew, which dominates the raw reward curve.
    """

    steps: list[int]
    diffs: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    @property
    def sem(self) -> float:
        """Standard error of the mean difference (0 for one step)."""
        return statistics.stdev(self.diffs) / math.sqrt(len(self.diffs)) if len(self.diffs) > 1 else 0.0

    @property
    def wins(self) -> int:
        return sum(d > 0 for d in self.diffs)

    @property
    def losses(self) -> int:
        return sum(d < 0 for d in self.diffs)

    @property
    def sign_p(self) -> float:
        """Two-sided sign-test p-value of wins against losses (ties dropped)."""
        n, k = self.wins + self.losses, min(self.wins, self.losses)
        if n == 0:
            return 1.0
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)

    def parts(self, n: int = 3) -> list[float]:
        """Mean difference over ``n`` consecutive, near-equal parts of the steps (e.g. thirds)."""
        size = len(self.diffs)
        bounds = [round(i * size / n) for i in range(n + 1)]
        return [statistics.fmean(self.diffs[a:b]) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def paired_difference(run: str | Path, control: str | Path, metric: str = "reward") -> PairedDifference:
    """``run``'s ``metric`` (a number in each step's record: ``reward``, ``policy_calls``, ...) minus
    ``control``'s at every step both logged. Raises when they share no step or a record lacks the metric."""
    a, b = step_records(run), step_records(control)
    steps = sorted(set(a) & set(b))
    if not steps:
        raise ValueError(f"{run} and {control} have no step in common")
    for name, records in ((run, a), (control, b)):
        missing = [s for s in steps if not isinstance(records[s].get(metric), int | float)]
        if missing:
            raise ValueError(f"{name}: step {missing[0]} has no number {metric!r} in metrics.jsonl")
    return PairedDifference(steps, [float(a[s][metric]) - float(b[s][metric]) for s in steps])


def run_seconds(run: str | Path) -> float:
    """Seconds a training run spent in its steps, summed from ``metrics.jsonl`` (SFT: each train line's
    ``seconds``; evolve: each step's phase seconds). A step logged twice counts once, so a run that
    was stopped and resumed reports the time of the steps it kept; loading and evaluation are left out."""
    by_step: dict[int, float] = {}
    for line in (Path(run) / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("kind", "train") != "train":
            continue
        seconds = record.get("seconds", 0.0)
        by_step[int(record["step"])] = float(sum(seconds.values()) if isinstance(seconds, dict) else seconds)
    return sum(by_step.values())


def rollouts_to_reach(rollouts: Sequence[int], rewards: Sequence[float], target: float, *,
                      window: int = 1) -> int | None:
    """The first rollout count whose trailing ``window``-step mean reward is at least ``target``
    (None: never reached)."""
    if len(rollouts) != len(rewards):
        raise ValueError("rollouts and rewards differ in length")
    for x, y in zip(rollouts, moving_average(rewards, window), strict=True):
        if y >= target - 1e-12:
            return int(x)
    return None


@dataclass
class TokenPush:
    """One assistant token of a student rollout and how the teacher context changes its log-prob."""

    token: str
    context: str  # the text just before it in the same turn
    student: float
    teacher: float

    @property
    def delta(self) -> float:
        return self.teacher - self.student


def teacher_pushes(model: Any, encoder: Any, turns: Sequence[Any], teacher_system: str, *,
                   top: int = 5, context_tokens: int = 6) -> tuple[list[TokenPush], list[TokenPush], float]:
    """Score one student conversation under its own context and under ``teacher_system`` (the student's
    system prompt with the guide block); return the ``top`` tokens the teacher pushes up, the ``top``
    it pushes down, and the mean |teacher - student| over all assistant tokens."""
    import torch

    from genevolve.evolve.tokens import aligned_positions, collate, token_logps

    student = encoder.view(list(turns))
    teacher = encoder.view(list(turns), system=teacher_system)
    s_pos, t_pos = aligned_positions(student, teacher)
    pad = encoder.tokenizer.pad_token_id if encoder.tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        s_lp = token_logps(model, collate([student], pad))[0]
        t_lp = token_logps(model, collate([teacher], pad))[0]
    pushes = []
    for sp, tp in zip(s_pos, t_pos, strict=True):
        start = sp - 1
        while start > 0 and student.mask[start - 1] and sp - start < context_tokens:
            start -= 1
        pushes.append(TokenPush(token=encoder.tokenizer.decode([student.input_ids[sp]]),
                                context=encoder.tokenizer.decode(student.input_ids[start:sp]) if student.mask[sp - 1] else "",
                                student=float(s_lp[sp]), teacher=float(t_lp[tp])))
    if not pushes:
        return [], [], math.nan
    ranked = sorted(pushes, key=lambda p: p.delta)
    mean_abs = statistics.fmean(abs(p.delta) for p in pushes)
    return ranked[::-1][:top], ranked[:top], mean_abs


#: words of the world's request templates that say nothing about the subject
TEMPLATE_WORDS = frozenset(
    "with that this from their into under over only country flag picture image reference first second which "
    "whose shares land border largest capital city sign poster spells".split())


def content_words(text: str) -> set[str]:
    """Lower-case words of 4+ letters, template words left out."""
    return {w for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in TEMPLATE_WORDS}


def copy_rate(trajectories: Sequence[Any]) -> tuple[int, int]:
    """``(hits, n)``: of the trajectories that made an image search, how many searched first for a
    content word of the request. The world's expert scores 53 % (knowledge requests need a looked-up
    name instead); a policy that ignores the request scores near 0."""
    hits = n = 0
    for traj in trajectories:
        queries = [c.arguments.get("query", "") for c in traj.tool_calls if c.name == "image_search"]
        if queries:
            n += 1
            hits += bool(content_words(str(queries[0])) & content_words(traj.request))
    return hits, n
