"""One request end to end: agent -> program -> renderer -> image (-> judge), written to a folder.

DIR/trajectory.json   every turn, tool call, retrieved image, and why the rollout stopped
DIR/program.json      the validated program (only when there is one)
DIR/image.png         the rendered image (only when a renderer is configured and rendering worked)
DIR/render.json       renderer metadata (the collage renderer's manifest of what it drew) or the error
DIR/score.json        the judge's score (only when a judge is given)
Failures are recorded in these files, never raised: a bad request or a failing backend costs one
sample, not the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genevolve.agent import Agent
from genevolve.judge.base import Judge, Score
from genevolve.render.base import Renderer, RenderError
from genevolve.types import Trajectory, write_text_atomic


@dataclass
class Outcome:
    trajectory: Trajectory
    image_path: Path | None = None
    render: dict[str, Any] | None = None
    score: Score | None = None

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
        try:
            result = await renderer.arender(traj.program, seed=seed)
        except RenderError as exc:
            outcome.render = {"renderer": renderer.name, "error": exc.code, "message": exc.message}
            traj.meta["render_error"] = exc.code
        else:
            outcome.image_path = out / "image.png"
            result.image.save(outcome.image_path)
            outcome.render = {"renderer": renderer.name, **result.meta}
            traj.backends["renderer"] = renderer.name
            if judge is not None:
                outcome.score = await judge.ascore(request, result.image, gt_image=gt_image,
                                                   program=traj.program, meta=result.meta)
                traj.backends["judge"] = judge.name
    traj.save(out / "trajectory.json")
    if traj.program is not None:
        write_text_atomic(out / "program.json", traj.program.model_dump_json(indent=2))
    if outcome.render is not None:
        write_text_atomic(out / "render.json", json.dumps(outcome.render, indent=2, default=str))
    if outcome.score is not None:
        write_text_atomic(out / "score.json", outcome.score.model_dump_json(indent=2))
    return outcome
