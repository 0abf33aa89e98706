"""A rollout's reward (METHOD.md section 2): R = (1 - alpha) * R_image + alpha * R_program.

R_image is the rubric judge's ``Score.overall`` of the rendered image, R_program the
program-sufficiency score; the paper uses alpha = 0.5. A protocol failure scores 0 whatever the
judges said, and the reward names it, so a training run can count why rollouts earned nothing.

Failure names (stable; reports count them):

| name | cause |
|---|---|
| ``no_answer`` | the policy-call budget ran out without an answer |
| ``invalid_answer`` | the last answer failed validation |
| ``empty_prompt`` | the program's prompt is empty |
| ``no_reference`` | no usable reference image was left |
| ``render_error`` | the renderer failed (``RenderError``) |
| ``judge_error`` | the judge gave no usable judgement (``JudgeError``) |
| ``policy_error`` | the policy backend failed after its retries |
| ``empty_request`` | the request itself was empty |

Why a judge failure scores 0 rather than dropping the rollout: the paper scores every protocol
failure 0 and keeps the group size fixed; the count makes a flaky judge visible. A caller that
prefers to drop such rollouts can filter on ``reward.failure == "judge_error"``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from genevolve.judge.base import Score
from genevolve.types import StopReason, Trajectory


class Failure(StrEnum):
    NO_ANSWER = "no_answer"
    INVALID_ANSWER = "invalid_answer"
    EMPTY_PROMPT = "empty_prompt"
    NO_REFERENCE = "no_reference"
    RENDER_ERROR = "render_error"
    JUDGE_ERROR = "judge_error"
    POLICY_ERROR = "policy_error"
    EMPTY_REQUEST = "empty_request"


class Reward(BaseModel):
    """One rollout's reward and its parts (``None``: not computed, e.g. after a failure)."""

    model_config = ConfigDict(extra="forbid")

    value: float
    image: float | None = None  # R_image = Score.overall
    program: float | None = None  # R_program, the sufficiency score
    failure: str | None = None  # a Failure name when the rollout failed the protocol
    alpha: float = 0.5


def mix_reward(image_score: Score | None, program_score: float | None, *, alpha: float = 0.5,
               failure: str | None = None) -> Reward:
    """R = (1 - alpha) * R_image + alpha * R_program, or 0 with ``failure`` set.

    A component whose weight is 0 may be ``None`` (alpha = 0: image only, as in benchmarks; alpha = 1:
    program only). A missing weighted component without a ``failure`` is the caller's bug and raises.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}; expected a weight in [0, 1]")
    image = None if image_score is None else image_score.overall
    if failure:
        return Reward(value=0.0, image=image, program=program_score, failure=str(failure), alpha=alpha)
    missing = [name for name, part, weight in (("image_score", image, 1.0 - alpha),
                                               ("program_score", program_score, alpha))
               if part is None and weight > 0]
    if missing:
        raise ValueError(f"mix_reward: {' and '.join(missing)} missing with alpha={alpha}; "
                         "pass failure=<reason> for a failed rollout")
    value = (1.0 - alpha) * (image or 0.0) + alpha * (program_score or 0.0)
    return Reward(value=value, image=image, program=program_score, alpha=alpha)


def protocol_failure(trajectory: Trajectory) -> Failure | None:
    """The failure a finished rollout carries before rendering, or ``None`` when it has a program."""
    if trajectory.ok:
        return None
    if trajectory.stop_reason == StopReason.POLICY_ERROR:
        return Failure.POLICY_ERROR
    if trajectory.stop_reason == StopReason.NO_ANSWER:
        return Failure.NO_ANSWER
    for name in (Failure.EMPTY_PROMPT, Failure.NO_REFERENCE):  # the fatal validation rules
        if name in trajectory.violations:
            return name
    if trajectory.stop_reason == StopReason.EMPTY_REQUEST:
        return Failure.EMPTY_REQUEST
    return Failure.INVALID_ANSWER


def count_failures(rewards: Iterable[Reward]) -> dict[str, int]:
    """Failures by name, most frequent first (successful rollouts are not counted)."""
    return dict(Counter(r.failure for r in rewards if r.failure).most_common())
