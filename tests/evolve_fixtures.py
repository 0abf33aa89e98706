"""Hand-built rollouts for the experience tests: a careful best and a careless worst for one request."""

from __future__ import annotations

from genevolve.evolve.rollout import Rollout
from genevolve.judge.base import Score
from genevolve.reward import Reward
from genevolve.types import Program, Reference, RetrievedImage, StopReason, ToolCallRecord, Trajectory

REQUEST = 'A poster of the Eiffel Tower at night with the words "BON VOYAGE" and three red balloons on the left'


def rollout(value: float, *, failure: str | None = None, group: int = 0, sample: int = 0,
            request: str = REQUEST, request_id: str | None = None, step: int = 0) -> Rollout:
    """A bare rollout with reward ``value`` (for selection tests)."""
    traj = Trajectory(request=request, stop_reason=StopReason.NO_ANSWER if failure else StopReason.ANSWER,
                      program=None if failure else Program(gen_prompt="a poster"))
    return Rollout(request_id=request_id or f"req-{group}", request=request, group=group, sample=sample,
                   trajectory=traj, reward=Reward(value=0.0 if failure else value, failure=failure), step=step)


def _call(i: int, name: str, **arguments) -> ToolCallRecord:
    return ToolCallRecord(round=i, name=name, arguments=arguments, n_images=3 if name == "image_search" else 0)


def careful() -> Rollout:
    """Searches for the landmark, reads two skills, picks a well-described reference, writes a detailed prompt."""
    images = [RetrievedImage(img_id="IMG_001", title="Eiffel Tower at night, Paris", path="/x/1.jpg",
                             query="Eiffel Tower night photo"),
              RetrievedImage(img_id="IMG_002", title="red balloons", path="/x/2.jpg", query="red balloon")]
    calls = [_call(1, "search", queries=["Eiffel Tower night lights colour"]),
             _call(2, "image_search", query="Eiffel Tower night photo"),
             _call(3, "query_knowledge", skill_name="text_rendering"),
             _call(4, "query_knowledge", skill_name="quantity_counting"),
             _call(5, "image_search", query="red balloon")]
    prompt = ('A night travel poster showing the tower from the first reference image lit in warm gold, '
              'with exactly three red balloons like the second reference image floating on the left side; '
              'bold white letters at the top read "BON VOYAGE".')
    program = Program(gen_prompt=prompt, references=[
        Reference(img_id="IMG_001", note="the landmark at night", path="/x/1.jpg", title=images[0].title),
        Reference(img_id="IMG_002", note="balloon colour and shape", path="/x/2.jpg", title=images[1].title)])
    traj = Trajectory(request=REQUEST, program=program, stop_reason=StopReason.ANSWER, retrieved=images,
                      tool_calls=calls, n_tool_calls=len(calls), n_policy_calls=6)
    score = Score.from_dimensions(1.0, 1.0, 1.0, 0.5, judge="test", rationale="all elements present")
    return Rollout(request_id="req-7", request=REQUEST, group=0, sample=2, trajectory=traj,
                   reward=Reward(value=0.9, image=score.overall, program=0.75), image_score=score,
                   program_score=0.75, step=3)


def careless() -> Rollout:
    """No search, no skills, a vague prompt without the text, the count or the layout."""
    images = [RetrievedImage(img_id="IMG_001", title="Tower", path="/x/3.jpg", query="tower")]
    calls = [_call(1, "image_search", query="tower"), _call(2, "image_search", query="tower")]
    program = Program(gen_prompt="A tower poster at night with balloons.",
                      references=[Reference(img_id="IMG_001", path="/x/3.jpg", title="Tower")])
    traj = Trajectory(request=REQUEST, program=program, stop_reason=StopReason.ANSWER, retrieved=images,
                      tool_calls=calls, n_tool_calls=2, n_policy_calls=3, n_format_errors=1)
    calls[1].repeated = True
    score = Score.from_dimensions(0.5, 0.0, 0.0, 0.5, judge="test",
                                  rationale="visual_correctness: wrong tower\ntext_accuracy: the words are missing",
                                  diagnostics={"rationales": {"visual_correctness": "wrong tower"}})
    return Rollout(request_id="req-7", request=REQUEST, group=0, sample=4, trajectory=traj,
                   reward=Reward(value=0.2, image=score.overall, program=0.25), image_score=score,
                   program_score=0.25, program_rationale="the landmark reference is a different tower",
                   program_missing=["the quoted words", "the balloon count"], step=3)
