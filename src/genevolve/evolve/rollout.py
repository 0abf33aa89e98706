"""One scored rollout of a training step: the record that links a trajectory to its reward.

A GRPO step samples K rollouts for each of its requests (a *group*), renders and judges every one,
and mixes the reward (METHOD.md sections 2 and 4). ``Rollout`` keeps all of that together so that
pair selection, the experience extractors and the loss read one record, and so that a step's
rollouts can be written to ``trajectories.jsonl`` and read back exactly (``to_json``/``from_json``).

The rendered image is a file named by ``image_path``, never inlined.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genevolve.judge.base import Score
from genevolve.reward import Reward
from genevolve.types import Trajectory


class Rollout(BaseModel):
    """One sampled trajectory of a group, with everything that scored it.

    ``group`` is the request's index within the step, ``sample`` the rollout's index within its group
    (0..K-1): together they name the rollout in a step, and ties in pair selection are broken by them.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: str
    request: str
    group: int = Field(ge=0)
    sample: int = Field(ge=0)
    trajectory: Trajectory
    reward: Reward
    image_score: Score | None = None  # the rubric judgement of the rendered image (None: not rendered/judged)
    program_score: float | None = None  # the program-sufficiency score, in {0, 0.25, 0.5, 0.75, 1}
    program_rationale: str = ""  # the sufficiency judge's rationale, read by the extractors
    program_missing: list[str] = Field(default_factory=list)  # needs the program failed to supply
    image_path: str | None = None
    render_meta: dict[str, Any] = Field(default_factory=dict)
    step: int = 0

    @property
    def failed(self) -> bool:
        """The rollout earned its reward through a named failure (protocol, render or judge)."""
        return self.reward.failure is not None

    def to_json(self, **kw: Any) -> str:
        return self.model_dump_json(**kw)

    @classmethod
    def from_json(cls, text: str | bytes) -> Rollout:
        return cls.model_validate_json(text)
