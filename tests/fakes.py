"""Small in-process tools, renderers and judges for tests (no network)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from PIL import Image
from pydantic import Field

from genevolve.judge.base import Judge, JudgeError
from genevolve.policy.base import Policy
from genevolve.protocol import format_turn
from genevolve.render.base import Renderer, RenderError
from genevolve.tools.base import Tool, ToolArgs, ToolError
from genevolve.types import Observation, RetrievedImage


class QueryArgs(ToolArgs):
    query: str = Field(min_length=1)
    top_k: int = Field(5, ge=1, le=10)


class QueriesArgs(ToolArgs):
    queries: list[str] = Field(min_length=1)
    top_k: int = 5


class FakeSearch(Tool):
    name = "search"
    description = "Text search."
    Args = QueriesArgs
    backend = "fake"

    def __init__(self, fail_with: str | None = None, delay: float = 0.0):
        self.fail_with = fail_with
        self.delay = delay
        self.calls: list[list[str]] = []

    async def acall(self, args):
        self.calls.append(args.queries)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with:
            raise ToolError(self.fail_with, "the server answered 500")
        return Observation(text="\n".join(f"[{q}] 1. Some page — a fact about {q}" for q in args.queries))


class FakeImages(Tool):
    """Returns ``per_call`` images per call; file names depend on the query, so repeats share files."""

    name = "image_search"
    description = "Image search."
    Args = QueryArgs
    backend = "fake"

    def __init__(self, folder: Path, per_call: int = 2, broken: int = 0):
        self.folder = folder
        self.per_call = per_call
        self.broken = broken

    async def acall(self, args):
        out = []
        for i in range(self.per_call):
            path = self.folder / f"{args.query.replace(' ', '_')}_{i}.png"
            # Written beside, then renamed: concurrent rollouts asking the same query must never read
            # a half-written file (a renderer would reject it as a broken reference).
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.png")
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp)
            os.replace(tmp, path)
            out.append(RetrievedImage(title=f"{args.query} {i}", url=f"https://img.example/{path.name}", path=str(path)))
        for i in range(self.broken):
            out.append(RetrievedImage(title=f"broken {i}", url=f"https://img.example/broken{i}", path=None,
                                      error="not_an_image"))
        return Observation(text=f"Image results for {args.query!r}:", images=out)


class FailingRenderer(Renderer):
    """Refuses every program, as a content filter would."""

    name = "failing"

    async def arender(self, program, *, seed=0):
        raise RenderError("refused", "content refused")


class FailingJudge(Judge):
    """Gives no judgement, as a judge server that is down after its retries."""

    name = "failing"

    async def ascore(self, request, image, *, gt_image=None, program=None, meta=None):
        raise JudgeError("judge server down")


class AnswerPolicy(Policy):
    """Answers at once, the request as the prompt and no reference (with ``AgentConfig(min_references=0)``)."""

    name = "answer"

    async def achat(self, turns, *, sampling, constraint=None):
        request = next(t.content for t in turns if t.kind == "request")
        return format_turn("draw it", answer={"gen_prompt": request, "reference_images": []})
