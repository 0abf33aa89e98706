"""From a program to a score: render, then judge. The one path that ``genevolve run`` (pipeline.py), the
benchmark's stages (bench/runner.py) and RL groups (evolve/groups.py) take, so that a failure counts the
same in a rollout's reward and in a benchmark's score.

    program ─▶ render_program ─▶ Scored(image, meta) ─▶ judge_rendered ─▶ Scored(…, score)

``score_program`` is the two in a row. The benchmark calls them one at a time, because its stages may run
on different machines: the image travels as a file and ``meta`` as JSON, which is why ``meta`` is always
the JSON form (the judge sees the same metadata whether it runs now or later from ``renders.jsonl``).

A ``RenderError`` or a ``JudgeError`` is an expected failure (a server down, a refused prompt, no usable
judgement): it becomes a ``ScoreFailure`` named with ``genevolve.reward.Failure`` (``render_error``,
``judge_error``), never an exception; anything else is a bug and raises.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict

from genevolve.judge.base import Judge, JudgeError, Score
from genevolve.render.base import Renderer, RenderError
from genevolve.reward import Failure
from genevolve.types import Program, Trajectory

_DETAIL = 300  # characters of an error message kept in the record


class ScoreFailure(BaseModel):
    """Why a program got no score. Trajectories keep it as ``meta["score_failure"]``; rewards and benchmark
    summaries count it by name."""

    model_config = ConfigDict(extra="forbid")

    failure: Failure  # render_error or judge_error
    code: str | None = None  # the renderer's error code (timeout, refused, bad_reference, ...); None for a judge
    detail: str = ""  # the error's message, clipped

    @property
    def reason(self) -> str:
        """The failure with its code (``render_error:refused``, ``judge_error``), as the benchmark counts it."""
        return f"{self.failure}:{self.code}" if self.code else str(self.failure)

    @classmethod
    def of(cls, exc: RenderError | JudgeError) -> ScoreFailure:
        if isinstance(exc, RenderError):
            return cls(failure=Failure.RENDER_ERROR, code=exc.code, detail=exc.message[:_DETAIL])
        return cls(failure=Failure.JUDGE_ERROR, detail=str(exc)[:_DETAIL])

    def record(self, trajectory: Trajectory) -> None:
        """Write the failure on ``trajectory`` (the same key in every run folder)."""
        trajectory.meta["score_failure"] = self.model_dump(mode="json")


@dataclass
class Scored:
    """A program taken as far as it went: ``image`` and ``meta`` once rendered, ``score`` once judged,
    ``failure`` when a step failed (then nothing after it was done)."""

    image: Image.Image | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # {"renderer": name, **RenderResult.meta}, as JSON
    score: Score | None = None
    failure: ScoreFailure | None = None


async def render_program(renderer: Renderer, program: Program, *, seed: int = 0,
                         save_to: Path | None = None) -> Scored:
    """Render ``program``; with ``save_to`` the image is also written there (atomically, as PNG)."""
    try:
        result = await renderer.arender(program, seed=seed)
    except RenderError as exc:
        return Scored(meta={"renderer": renderer.name}, failure=ScoreFailure.of(exc))
    meta = json.loads(json.dumps({"renderer": renderer.name, **result.meta}, default=str))
    if save_to is not None:
        await asyncio.to_thread(_save_png, result.image, save_to)
    return Scored(image=result.image, meta=meta)


async def judge_rendered(judge: Judge, request: str, rendered: Scored, *, gt_image: Image.Image | None = None,
                         program: Program | None = None) -> Scored:
    """Score a rendered image (``rendered.image``, with the renderer's ``meta``) against ``gt_image``."""
    if rendered.failure is not None or rendered.image is None:
        return rendered
    try:
        score = await judge.ascore(request, rendered.image, gt_image=gt_image, program=program, meta=rendered.meta)
    except JudgeError as exc:
        return replace(rendered, failure=ScoreFailure.of(exc))
    return replace(rendered, score=score)


async def score_program(request: str, program: Program, *, renderer: Renderer, judge: Judge | None,
                        gt_image: Image.Image | None = None, seed: int = 0, save_to: Path | None = None) -> Scored:
    """Render ``program`` and judge the image (``judge=None``: render only)."""
    rendered = await render_program(renderer, program, seed=seed, save_to=save_to)
    if judge is None:
        return rendered
    return await judge_rendered(judge, request, rendered, gt_image=gt_image, program=program)


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.png")
    image.save(tmp, format="PNG")
    tmp.replace(path)
