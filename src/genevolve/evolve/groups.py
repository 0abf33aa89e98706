"""Rollout groups: K rollouts per request, rendered, judged and rewarded (METHOD.md sections 2 and 4).

``GroupSampler.sample(tasks, step=...)`` returns one list of ``Rollout`` per task, in task order, each of
length K. A rollout never raises out of here: a protocol failure, a render error or a judge error is a
named ``Reward.failure`` with value 0, so every group keeps its K members and the loss sees them all.
Rendering and judging are genevolve.scoring's ``score_program``, the path ``genevolve run`` and the
benchmark take; its ``ScoreFailure`` is kept on the trajectory (``meta["score_failure"]``).

Seeds: rollout k of group g at step s samples with seed ``base_seed + (s * 10_007 + g) * 101 + k`` and
renders with ``seed=k``: a step is reproducible, rollouts of a group differ, and the same request at
another step draws fresh samples.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from genevolve.agent import Agent
from genevolve.evolve.rollout import Rollout
from genevolve.judge.base import Judge, JudgeError
from genevolve.render.base import Renderer
from genevolve.reward import mix_reward, protocol_failure
from genevolve.scoring import ScoreFailure, score_program
from genevolve.types import Program


@dataclass(frozen=True)
class Task:
    """One training request: what the judges compare against (``gt_image``) and its metadata."""

    id: str
    request: str
    gt_image: str | None = None
    meta: dict[str, Any] | None = None


class ProgramJudge(Protocol):
    """The program-sufficiency judge's shape (``genevolve.judge.sufficiency.SufficiencyJudge``, the world's)."""

    async def ascore(self, request: str, program: Program, gt_image: Image.Image) -> Any: ...


@dataclass(kw_only=True)
class GroupSampler:
    """Samples, renders and scores rollout groups.

    Args:
        agent: the student agent (its policy is the model being trained, or a server holding it).
        renderer, judge: render the program and score the image against the task's GT.
        k, alpha, concurrency: ``evolve.k``, ``evolve.alpha``, ``evolve.concurrency``
            (genevolve.evolve.rl_config.EvolveConfig says what each means; no defaults here).
        program_judge: the sufficiency judge; required when ``alpha > 0``.
        images_dir: where rendered images are written (``<dir>/step_000003/g01_k2.png``).
        base_seed: see the module docstring.
    """

    agent: Agent
    renderer: Renderer
    judge: Judge
    k: int
    alpha: float
    concurrency: int
    program_judge: ProgramJudge | None = None
    images_dir: Path | None = None
    base_seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ValueError(f"k={self.k}: a group needs at least 2 rollouts to compare")
        if self.alpha > 0 and self.program_judge is None:
            raise ValueError(f"alpha={self.alpha} weighs the program score but no program_judge was given")

    async def sample(self, tasks: Sequence[Task], *, step: int,
                     groups: Sequence[int] | None = None) -> list[list[Rollout]]:
        """``groups``: the step-wide index of each task (default 0..n-1). A rollout worker sampling one
        share of a step passes its share's indices, so seeds, group ids and image names are those a
        single sampler would have used."""
        index = list(range(len(tasks))) if groups is None else list(groups)
        if len(index) != len(tasks):
            raise ValueError(f"{len(tasks)} tasks but {len(index)} group indices")
        gate = asyncio.Semaphore(self.concurrency)
        gts = [_load_gt(t.gt_image) for t in tasks]

        async def one(g: int, k: int) -> Rollout:
            async with gate:
                return await self._rollout(tasks[g], gts[g], step=step, group=index[g], sample=k)

        flat = await asyncio.gather(*(one(g, k) for g in range(len(tasks)) for k in range(self.k)))
        return [list(flat[g * self.k:(g + 1) * self.k]) for g in range(len(tasks))]

    async def _rollout(self, task: Task, gt: Image.Image | None, *, step: int, group: int, sample: int) -> Rollout:
        seed = self.base_seed + (step * 10_007 + group) * 101 + sample
        traj = await self.agent.arun(task.request, id=f"s{step}-g{group}-k{sample}", meta=dict(task.meta or {}),
                                     seed=seed)
        record = dict(request_id=task.id, request=task.request, group=group, sample=sample, trajectory=traj,
                      step=step)
        failure = protocol_failure(traj)
        if failure is not None:
            return Rollout(reward=mix_reward(None, None, alpha=self.alpha, failure=failure), **record)
        assert traj.program is not None
        path = None if self.images_dir is None else self.images_dir / f"step_{step:06d}" / f"g{group:02d}_k{sample}.png"
        scored = await score_program(task.request, traj.program, renderer=self.renderer, judge=self.judge,
                                     gt_image=gt, seed=sample, save_to=path)
        if scored.image is not None:
            record.update(render_meta=scored.meta, **({"image_path": str(path)} if path is not None else {}))
        program_score = None
        if scored.failure is None and self.alpha > 0 and gt is not None:
            assert self.program_judge is not None
            try:
                judged = await self.program_judge.ascore(task.request, traj.program, gt)
            except JudgeError as exc:
                scored.failure = ScoreFailure.of(exc)
            else:
                program_score = float(judged.score)
                record["program_rationale"] = getattr(judged, "rationale", "")
                record["program_missing"] = list(getattr(judged, "missing", []))
        if scored.failure is not None:
            scored.failure.record(traj)
            return Rollout(reward=mix_reward(scored.score, program_score, alpha=self.alpha,
                                             failure=scored.failure.failure), image_score=scored.score, **record)
        # Without a GT the program cannot be judged: the image score is the whole reward.
        alpha = self.alpha if program_score is not None else 0.0
        return Rollout(reward=mix_reward(scored.score, program_score, alpha=alpha), image_score=scored.score,
                       program_score=program_score, **record)


def _load_gt(path: str | None) -> Image.Image | None:
    if path is None:
        return None
    with Image.open(path) as img:
        return img.convert("RGB")
