"""The benchmark runner: agent -> render -> judge over a dataset, one JSONL log per stage, resumable.

runs/NAME/
  config.yaml          the resolved run config
  trajectories.jsonl   {"id", "item", "ok", "failure", "detail", "trajectory", "seconds"}
  renders.jsonl        {"id", "item", "ok", "failure", "detail", "image", "program", "render", "seconds"}
  images/<id>.png      the rendered images
  scores.jsonl         {"id", "item", "ok", "failure", "detail", "score", "seconds"}

Every record is fsynced before the next starts, so a kill loses at most the items in flight; a rerun
skips every id already in a stage's log (``failure`` records included: a failure is a result, not a
gap). ``failure`` is ``"<stage>:<reason>"`` (``agent:no_answer``, ``render:render_error:timeout``,
``judge:judge_error``: render and judge failures are genevolve.scoring's ``ScoreFailure.reason``, as RL
rewards name them); a downstream stage copies an upstream failure unchanged, and the item scores 0 in
``overall_missing_zero``. Unexpected exceptions in a backend are recorded the same way (as
``<stage>:exception:<Type>``, e.g. ``judge:exception:ValueError``) rather than ending a 600-item run;
their count is printed.

Stages can run alone (``stage="render"`` reads trajectories.jsonl, ``"judge"`` reads renders.jsonl), so
rollouts, rendering and judging can run on different machines sharing the run folder.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from genevolve.bench.datasets import BenchItem
from genevolve.bench.store import JsonlLog, RunFolderError
from genevolve.display import Progress
from genevolve.scoring import Scored, judge_rendered, render_program
from genevolve.types import Program

STAGES = ("agent", "render", "judge")
LOGS = {"agent": "trajectories.jsonl", "render": "renders.jsonl", "judge": "scores.jsonl"}
UPSTREAM = {"render": "agent", "judge": "render"}


@dataclass
class Backends:
    """What each stage needs; a stage that is not run may leave its backend None."""

    agent: Any = None  # genevolve.agent.Agent
    renderer: Any = None  # genevolve.render.base.Renderer
    judge: Any = None  # genevolve.judge.base.Judge


def image_name(item_id: str) -> str:
    """A file name for an id: safe characters kept, anything else replaced and disambiguated by a hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)[:80]
    if safe != item_id:
        safe += f"-{zlib.crc32(item_id.encode()):08x}"
    return f"{safe}.png"


class BenchRun:
    """One run folder. ``items`` is the dataset (required for the agent stage); later stages alone
    take their items from the upstream log, restricted to ``items`` when given."""

    def __init__(self, out: Path, backends: Backends, items: list[BenchItem] | None = None, *,
                 concurrency: int = 4, seed: int = 0, progress: bool = True):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.out = Path(out)
        self.backends = backends
        self.items = items
        self.concurrency = concurrency
        self.seed = seed
        self.progress = progress
        self.logs = {stage: JsonlLog(self.out / name).load() for stage, name in LOGS.items()}
        self.n_exceptions = 0

    def stages(self, stage: str) -> tuple[str, ...]:
        if stage == "all":
            return STAGES
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)} or all")
        return (stage,)

    def work_items(self, first: str) -> list[BenchItem]:
        if first == "agent":
            if self.items is None:
                raise RunFolderError("the agent stage needs a dataset (--data)")
            return self.items
        upstream = self.logs[UPSTREAM[first]].records
        if not upstream:
            raise RunFolderError(f"--stage {first} reads {self.out / LOGS[UPSTREAM[first]]}, which is missing or "
                                 f"empty: run --stage {UPSTREAM[first]} first (or copy that file here)")
        from_log = [BenchItem.model_validate(r["item"]) for r in upstream.values()]
        if self.items is None:
            return from_log
        wanted = {i.id for i in self.items}
        return [i for i in from_log if i.id in wanted]

    async def run(self, stage: str = "all") -> None:
        stages = self.stages(stage)
        for s in stages:
            needed = {"agent": "agent", "render": "renderer", "judge": "judge"}[s]
            if getattr(self.backends, needed) is None:
                raise RunFolderError(f"stage {s} needs a {needed}, and the config names none")
        items = self.work_items(stages[0])
        (self.out / "images").mkdir(parents=True, exist_ok=True)
        sem = asyncio.Semaphore(self.concurrency)
        with Progress(self.progress) as bar:
            tasks = {s: bar.task(s, total=len(items), completed=sum(i.id in self.logs[s] for i in items))
                     for s in stages}

            async def one(item: BenchItem) -> None:
                for s in stages:
                    if item.id in self.logs[s]:
                        continue
                    async with sem:
                        await self._step(s, item)
                    bar.advance(tasks[s])

            await asyncio.gather(*(one(i) for i in items))

    async def _step(self, stage: str, item: BenchItem) -> None:
        t0 = time.perf_counter()
        record: dict[str, Any] = {"id": item.id, "item": item.model_dump(), "ok": False, "failure": None, "detail": None}
        upstream = self.logs[UPSTREAM[stage]].get(item.id) if stage in UPSTREAM else None
        if upstream is not None and not upstream["ok"]:
            record.update(failure=upstream["failure"], detail=upstream.get("detail"))
        else:
            try:
                await getattr(self, f"_{stage}")(item, upstream, record)
            except Exception as exc:  # a backend bug must not end the run; it is recorded and counted
                self.n_exceptions += 1
                record.update(ok=False, failure=f"{stage}:exception:{type(exc).__name__}", detail=str(exc)[:500])
        record["seconds"] = round(time.perf_counter() - t0, 4)
        self.logs[stage].append(record)

    async def _agent(self, item: BenchItem, _: Any, record: dict[str, Any]) -> None:
        meta = {"track": item.track, "category": item.category, "difficulty": item.difficulty}
        traj = await self.backends.agent.arun(item.request, id=item.id, meta=meta)
        record.update(ok=traj.ok, trajectory=json.loads(traj.model_dump_json()))
        if not traj.ok:
            record.update(failure=f"agent:{traj.stop_reason}", detail=traj.failure)

    async def _render(self, item: BenchItem, upstream: dict[str, Any], record: dict[str, Any]) -> None:
        program = Program.model_validate(upstream["trajectory"]["program"])
        record["program"] = program.model_dump()
        rel = f"images/{image_name(item.id)}"
        rendered = await render_program(self.backends.renderer, program, seed=self.seed, save_to=self.out / rel)
        record["render"] = rendered.meta  # the JSON form: the judge stage hands it to the judge as it is
        if rendered.failure is not None:
            record.update(failure=f"render:{rendered.failure.reason}", detail=rendered.failure.detail)
        else:
            record.update(ok=True, image=rel)

    async def _judge(self, item: BenchItem, upstream: dict[str, Any], record: dict[str, Any]) -> None:
        image_path = self.out / upstream["image"]
        if not image_path.is_file():
            record.update(failure="judge:image_missing", detail=f"{image_path} is gone")
            return
        with Image.open(image_path) as im:
            image = im.convert("RGB")
        gt = None
        if item.gt_image:
            try:
                with Image.open(item.gt_image) as im:
                    gt = im.convert("RGB")
            except OSError as exc:
                record.update(failure="judge:gt_unreadable", detail=f"{item.gt_image}: {exc}")
                return
        program = Program.model_validate(upstream["program"]) if upstream.get("program") else None
        judged = await judge_rendered(self.backends.judge, item.request, Scored(image, upstream.get("render") or {}),
                                      gt_image=gt, program=program)
        if judged.failure is not None:
            record.update(failure=f"judge:{judged.failure.reason}", detail=judged.failure.detail)
        else:
            record.update(ok=True, score=json.loads(judged.score.model_dump_json()))
