"""Rollout groups: K rollouts per task, rendered, judged and rewarded; failures are named and scored 0."""

import asyncio

import pytest
from PIL import Image

from genevolve.agent import Agent, AgentConfig
from genevolve.evolve.groups import GroupSampler, Task
from genevolve.judge.heuristic import HeuristicJudge
from genevolve.judge.sufficiency import SufficiencyScore
from genevolve.policy.base import Policy
from genevolve.protocol import ToolCall, format_turn
from genevolve.render.collage import CollageRenderer
from tests.fakes import FailingJudge, FailingRenderer, FakeImages


class SeedPolicy(Policy):
    """Searches once, then answers; the prompt depends on the sampling seed (so rollouts differ);
    requests containing 'NOANSWER' never answer. Records the seeds it was given."""

    name = "seed"

    def __init__(self):
        self.seeds: list[int | None] = []

    async def achat(self, turns, *, sampling, constraint=None):
        self.seeds.append(sampling.seed)
        request = next(t.content for t in turns if t.kind == "request")
        if not any(t.kind == "tool_response" for t in turns):
            return format_turn("look", tool_call=ToolCall("image_search", {"query": "apple"}))
        if "NOANSWER" in request:
            return "no tags at all"
        count = ["One", "Two", "Three"][sampling.seed % 3]
        return format_turn("done", answer={
            "gen_prompt": f"{count} red apples from the first reference image on the left.",
            "reference_images": [{"img_id": "IMG_001", "note": "apple"}]})


class FixedProgramJudge:
    async def ascore(self, request, program, gt_image):
        return SufficiencyScore(score=0.75 if program.gen_prompt.startswith("Three") else 0.25, rationale="count",
                                missing=["count"] if not program.gen_prompt.startswith("Three") else [])


@pytest.fixture
def tasks(tmp_path):
    gt = CollageRenderer(128, 128)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (48, 48), (220, 20, 20)).save(folder / "a.png")
    Image.new("RGB", (48, 48), (20, 220, 20)).save(folder / "b.png")
    from genevolve.types import Program, Reference
    gt_path = tmp_path / "gt.png"
    gt.render(Program(gen_prompt="Three red apples from the first reference image on the left.",
                      references=[Reference(img_id="IMG_001", path=str(folder / "a.png"))])).image.save(gt_path)
    return folder, [Task("t0", "Three red apples on the left", str(gt_path)),
                    Task("t1", "NOANSWER two pears", str(gt_path))]


def _sampler(folder, tmp_path, **kw):
    policy = SeedPolicy()
    agent = Agent(policy, [FakeImages(folder)], AgentConfig(max_policy_calls=3, structured_decoding=False))
    defaults = dict(agent=agent, renderer=CollageRenderer(128, 128), judge=HeuristicJudge(embeddings=False),
                    program_judge=FixedProgramJudge(), k=3, alpha=0.5, concurrency=4, images_dir=tmp_path / "images")
    return policy, GroupSampler(**{**defaults, **kw})


def test_groups_have_k_scored_rollouts_and_failures_score_zero(tmp_path, tasks):
    folder, items = tasks
    policy, sampler = _sampler(folder, tmp_path)
    groups = asyncio.run(sampler.sample(items, step=2))
    assert [len(g) for g in groups] == [3, 3]
    good, bad = groups
    assert [r.sample for r in good] == [0, 1, 2] and {r.group for r in good} == {0}
    assert all(r.reward.failure is None and r.image_score is not None and r.program_score is not None for r in good)
    for r in good:
        assert r.reward.value == pytest.approx(0.5 * r.image_score.overall + 0.5 * r.program_score)
        assert r.image_path and Image.open(r.image_path).size == (128, 128)
        assert r.render_meta["manifest"]["elements"]
    assert len({r.trajectory.program.gen_prompt for r in good}) > 1  # seeds differ across the group
    assert all(r.reward.failure == "no_answer" and r.reward.value == 0 for r in bad)
    assert len(set(policy.seeds)) > 3

    _, again = _sampler(folder, tmp_path / "again")
    prompts = [r.trajectory.program.gen_prompt for r in asyncio.run(again.sample(items, step=2))[0]]
    assert prompts == [r.trajectory.program.gen_prompt for r in good]  # a step is reproducible


def test_render_and_judge_errors_are_named_failures(tmp_path, tasks):
    folder, items = tasks
    _, sampler = _sampler(folder, tmp_path, renderer=FailingRenderer())
    assert {r.reward.failure for r in asyncio.run(sampler.sample(items[:1], step=0))[0]} == {"render_error"}
    _, sampler = _sampler(folder, tmp_path, judge=FailingJudge())
    rollouts = asyncio.run(sampler.sample(items[:1], step=0))[0]
    assert {r.reward.failure for r in rollouts} == {"judge_error"} and all(r.reward.value == 0 for r in rollouts)


def test_alpha_needs_a_program_judge(tmp_path, tasks):
    folder, _ = tasks
    with pytest.raises(ValueError, match="program_judge"):
        _sampler(folder, tmp_path, program_judge=None)
    _, sampler = _sampler(folder, tmp_path, program_judge=None, alpha=0.0)
    assert sampler.alpha == 0.0
