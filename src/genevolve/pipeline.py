"""One request end to end: agent -> program -> renderer -> image (-> judge), written to a folder.

DIR/trajectory.json   every turn, tool call, retrieved image, and why the rollout stopped
DIR/program.json      the validated program (only when there is one)
DIR/image.png         the rendered image (only when a renderer is configured and rendering worked)
DIR/render.json       renderer metadata (the collage renderer's manifest of what it drew) or its failure
DIR/score.json        the judge's score (only when a judge is given and judging worked)
Failures are recorded in these files, never raised: a bad request or a failing backend costs one
sample, not the run. A render or judge failure is the ``ScoreFailure`` of genevolve.scoring, kept in
trajectory.json as ``meta["score_failure"]``, as RL rollouts keep it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genevolve.agent import Agent
from genevolve.judge.base import Judge, Score
from genevolve.render.base import Renderer
from genevolve.scoring import ScoreFailure, score_program
from genevolve.types import Trajectory, write_text_atomic


@dataclass
class Outcome:
    trajectory: Trajectory
    image_path: Path | None = None
    render: dict[str, Any] | None = None
    score: Score | None = None
    failure: ScoreFailure | None = None  # rendering or judging failed

    @property
    def ok(self) -> bool:
        return self.trajectory.ok and self.image_path is not None


async def solve(agent: Agent, request: str, out: Path, *, renderer: Renderer | None = None,
                judge: Judge | None = None, seed: int = 0, gt_image: Any = None,
                id: str | None = None, meta: dict[str, Any] | None = None) -> Outcome:
    out.mkdir(parents=True, exist_ok=True)
    traj = await agent.arun(request, id=id, meta=meta)
    outcome = Outcome(traj)
    if traj.program is not None and renderer is not None:
        scored = await score_program(request, traj.program, renderer=renderer, judge=judge, gt_image=gt_image,
                                     seed=seed, save_to=out / "image.png")
        outcome.render, outcome.score, outcome.failure = dict(scored.meta), scored.score, scored.failure
        if scored.image is not None:
            outcome.image_path = out / "image.png"
            traj.backends["renderer"] = renderer.name
        if scored.score is not None:
            traj.backends["judge"] = judge.name  # type: ignore[union-attr]  # a score means a judge
        if scored.failure is not None:
            scored.failure.record(traj)
            if scored.image is None:
                outcome.render.update(scored.failure.model_dump(mode="json"))
    traj.save(out / "trajectory.json")
    if traj.program is not None:
        write_text_atomic(out / "program.json", traj.program.model_dump_json(indent=2))
    if outcome.render is not None:
        write_text_atomic(out / "render.json", json.dumps(outcome.render, indent=2, default=str))
    if outcome.score is not None:
        write_text_atomic(out / "score.json", outcome.score.model_dump_json(indent=2))
    return outcome
