"""The judge interface and the rubric's arithmetic (METHOD.md section 2).

Four dimensions, each in {0, 0.5, 1}: faithfulness, visual_correctness, text_accuracy (None = N/A,
counted as 0.5 in a sample's overall), aesthetics. overall = 0.1·F + 0.4·V + 0.4·T + 0.1·A.

A minimal implementation::

    class Half(Judge):
        name = "half"
        async def ascore(self, request, image, *, gt_image=None, program=None, meta=None):
            return Score.from_dimensions(0.5, 0.5, None, 0.5, judge=self.name, rationale="constant")
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from genevolve.types import Program

WEIGHTS = {"faithfulness": 0.1, "visual_correctness": 0.4, "text_accuracy": 0.4, "aesthetics": 0.1}
TEXT_NA_VALUE = 0.5


def overall(faithfulness: float, visual_correctness: float, text_accuracy: float | None, aesthetics: float) -> float:
    text = TEXT_NA_VALUE if text_accuracy is None else text_accuracy
    return (WEIGHTS["faithfulness"] * faithfulness + WEIGHTS["visual_correctness"] * visual_correctness
            + WEIGHTS["text_accuracy"] * text + WEIGHTS["aesthetics"] * aesthetics)


class Score(BaseModel):
    """One judged image."""

    model_config = ConfigDict(extra="forbid")

    faithfulness: float
    visual_correctness: float
    text_accuracy: float | None  # None: the request requires no text (N/A)
    aesthetics: float
    overall: float
    constraints: list[str] = Field(default_factory=list)  # the request's hard constraints, as the judge listed them
    rationale: str = ""
    judge: str = ""
    heuristic: bool = False  # True for offline judges that approximate the VLM rubric
    diagnostics: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_dimensions(cls, faithfulness: float, visual_correctness: float, text_accuracy: float | None,
                        aesthetics: float, **kw: Any) -> Score:
        return cls(faithfulness=faithfulness, visual_correctness=visual_correctness, text_accuracy=text_accuracy,
                   aesthetics=aesthetics, overall=overall(faithfulness, visual_correctness, text_accuracy, aesthetics),
                   **kw)


def snap(x: float) -> float:
    """Round a continuous estimate to the rubric's {0, 0.5, 1} scale."""
    return 0.0 if x < 0.25 else 0.5 if x < 0.75 else 1.0


class JudgeError(RuntimeError):
    """No usable judgement (an expected failure, as ``RenderError`` is for renderers): the server failed after
    its retries, or no reply parsed after re-asking. The caller records it as ``judge_error`` (reward 0);
    bugs raise anything else. ``raw`` holds the judge's last reply (empty when none came)."""

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class Judge(ABC):
    name: str = "judge"

    @abstractmethod
    async def ascore(self, request: str, image: Image.Image, *, gt_image: Image.Image | None = None,
                     program: Program | None = None, meta: dict[str, Any] | None = None) -> Score:
        """Score ``image`` (generated for ``request``) against ``gt_image`` when given.
        ``meta`` is the renderer's metadata (offline judges read the collage manifest from it)."""

    def score(self, request: str, image: Image.Image, **kw: Any) -> Score:
        return asyncio.run(self.ascore(request, image, **kw))
