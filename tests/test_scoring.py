"""One path from a program to a score: `genevolve run` (pipeline.solve), the benchmark's stages and RL groups
record a render failure and a judge failure alike, with genevolve.reward's failure names."""

import asyncio
import json

import pytest

from genevolve.agent import Agent, AgentConfig
from genevolve.bench.datasets import BenchItem
from genevolve.bench.runner import Backends, BenchRun
from genevolve.evolve.groups import GroupSampler, Task
from genevolve.judge.heuristic import HeuristicJudge
from genevolve.pipeline import solve
from genevolve.render.collage import CollageRenderer
from genevolve.types import Trajectory
from tests.fakes import AnswerPolicy, FailingJudge, FailingRenderer

REQUEST = "Three blue birds on a wire"
BROKEN = {  # which backend fails -> (the failure every path records, the benchmark stage that records it)
    "renderer": ({"failure": "render_error", "code": "refused", "detail": "content refused"}, "render"),
    "judge": ({"failure": "judge_error", "code": None, "detail": "judge server down"}, "judge"),
}


def _agent():
    return Agent(AnswerPolicy(), [], AgentConfig(min_references=0, max_policy_calls=1, structured_decoding=False))


@pytest.mark.parametrize("broken", list(BROKEN))
def test_run_bench_and_groups_record_a_failure_alike(tmp_path, broken):
    want, stage = BROKEN[broken]
    renderer = FailingRenderer() if broken == "renderer" else CollageRenderer(128, 128)
    judge = FailingJudge() if broken == "judge" else HeuristicJudge(embeddings=False)

    outcome = asyncio.run(solve(_agent(), REQUEST, tmp_path / "run", renderer=renderer, judge=judge))
    assert outcome.score is None and not (tmp_path / "run" / "score.json").exists()
    assert Trajectory.load(tmp_path / "run" / "trajectory.json").meta["score_failure"] == want

    sampler = GroupSampler(agent=_agent(), renderer=renderer, judge=judge, k=2, alpha=0.0, concurrency=2)
    (group,) = asyncio.run(sampler.sample([Task("t0", REQUEST)], step=0))
    assert [(r.reward.failure, r.reward.value) for r in group] == [(want["failure"], 0.0)] * 2
    assert [r.trajectory.meta["score_failure"] for r in group] == [want] * 2

    bench = BenchRun(tmp_path / "bench", Backends(_agent(), renderer, judge), [BenchItem(id="b0", request=REQUEST)],
                     progress=False)
    asyncio.run(bench.run())
    (record,) = [json.loads(line) for line in (tmp_path / "bench" / "scores.jsonl").read_text().splitlines()]
    reason = f"{want['failure']}:{want['code']}" if want["code"] else want["failure"]
    assert (record["failure"], record["detail"]) == (f"{stage}:{reason}", want["detail"])
    assert bench.n_exceptions == 0  # an expected failure, not a backend bug


def test_the_judge_sees_the_same_metadata_now_and_from_the_log(tmp_path):
    """A group's judge gets the renderer's metadata in the JSON form the benchmark's judge stage reads back from
    renders.jsonl, so judging at once and judging later cannot differ."""
    seen = []

    class TupleMeta(CollageRenderer):
        async def arender(self, program, *, seed=0):
            result = await super().arender(program, seed=seed)
            result.meta["canvas"] = (128, 128)  # JSON has no tuples: the log gives a list back
            return result

    class Recording(HeuristicJudge):
        async def ascore(self, request, image, **kw):
            seen.append(kw["meta"])
            return await super().ascore(request, image, **kw)

    renderer, judge = TupleMeta(128, 128), Recording(embeddings=False)
    sampler = GroupSampler(agent=_agent(), renderer=renderer, judge=judge, k=2, alpha=0.0, concurrency=1)
    (group,) = asyncio.run(sampler.sample([Task("t0", REQUEST)], step=0))
    bench = BenchRun(tmp_path, Backends(_agent(), renderer, judge), [BenchItem(id="b0", request=REQUEST)],
                     progress=False)
    asyncio.run(bench.run())
    assert len(seen) == 3 and seen[0] == seen[2] == group[0].render_meta and seen[0]["canvas"] == [128, 128]
