"""World judge, sufficiency judge, expert and direct baseline on a small world (no model, no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from genevolve.render.collage import CollageRenderer
from genevolve.types import Program, Reference
from genevolve.world import load_world
from genevolve.world.build import build_world
from genevolve.world.judge import UnknownRequest
from genevolve.world.records import render_parts


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build_world(out, seed=1, sizes={"bench": 48, "rl": 0, "sft": 0}, wiki=False)
    return load_world(out)


def _render(world, req, prompt: str, images: list[str]):
    refs = [Reference(img_id=f"IMG_{i:03d}", path=str(world.root / "library" / f"{k}.png"))
            for i, k in enumerate(images, 1)]
    program = Program(gen_prompt=prompt, references=refs)
    return program, CollageRenderer().render(program, seed=0)


def test_gt_program_scores_full_marks_and_same_input_same_score(world):
    judge = world.judge()
    for req in world.requests[:12]:
        program, res = _render(world, req, req.gt_prompt(), [e.image for e in req.entities])
        a = judge.score(req.question, res.image, meta=res.meta)
        b = judge.score(req.question, res.image, meta=res.meta)
        assert a == b
        assert (a.faithfulness, a.visual_correctness, a.aesthetics) == (1.0, 1.0, 1.0), a.rationale
        assert a.text_accuracy == (1.0 if req.texts else None)
        assert world.sufficiency_judge().score(req.question, program).score == 1.0


def test_lookalike_reference_loses_identity(world):
    judge = world.judge()
    req = next(r for r in world.requests if r.track == "knowledge" and len(r.entities) == 1)
    program, res = _render(world, req, req.gt_prompt(), [req.entities[0].decoys[0]])
    score = judge.score(req.question, res.image, meta=res.meta)
    assert score.visual_correctness < 1.0 and "not its picture" in score.rationale
    assert world.sufficiency_judge().score(req.question, program).score < 1.0


def test_skipping_the_skill_fails_the_skill_check(world):
    judge = world.judge()
    for cat in ("material", "pose", "aesthetic", "creative", "text"):
        req = next(r for r in world.requests if r.category == cat)
        ordinals = {e.slot: f"the {w} reference image" for e, w in zip(req.entities, ("first", "second"), strict=False)}
        prompt = render_parts(req.parts, ordinals, skipped=set(req.skills))
        _, res = _render(world, req, prompt, [e.image for e in req.entities])
        score = judge.score(req.question, res.image, meta=res.meta)
        skill = req.skills[0]
        assert score.diagnostics["skills"][skill]["failed"] >= 1, (cat, prompt, score.rationale)


def test_without_manifest_only_text_is_read(world):
    req = next(r for r in world.requests if not r.texts)
    _, res = _render(world, req, req.gt_prompt(), [e.image for e in req.entities])
    score = world.judge().score(req.question, res.image, meta={})
    assert score.diagnostics["manifest"] is False and score.visual_correctness == 0.5


def test_unknown_request_is_a_clear_error(world):
    from PIL import Image

    with pytest.raises(UnknownRequest):
        world.judge().score("a request from another world", Image.new("RGB", (64, 64)), meta={})


def _bench_agent(world, policy: dict, **agent):
    return world.agent(policy, **agent)


def test_expert_direct_and_noisy_through_the_agent(world):
    judge, renderer = world.judge(), CollageRenderer()

    async def score(agent, req):
        traj = await agent.arun(req.question)
        assert traj.ok, traj.failure
        res = await renderer.arender(traj.program, seed=0)
        return (await judge.ascore(req.question, res.image, meta=res.meta)).overall, traj

    reqs = world.split("bench")[:16]
    expert = world.agent(None)
    direct = world.agent({"kind": "direct"}, min_references=0)
    noisy = world.agent({"kind": "world-expert", "world": str(world.root), "noise": 1.0})

    async def run_all():
        e = [await score(expert, r) for r in reqs]
        d = [await score(direct, r) for r in reqs]
        n = [await score(noisy, r) for r in reqs]
        return e, d, n

    e, d, n = asyncio.run(run_all())
    mean = [sum(s for s, _ in x) / len(x) for x in (e, n, d)]
    ideal = sum(1.0 if r.texts else 0.8 for r in reqs) / len(reqs)  # text N/A counts 0.5 in a sample
    assert mean[0] == pytest.approx(ideal) and mean[0] > mean[1] > mean[2], mean
    assert all(not t.program.references for _, t in d)
    knowledge = [t for (_, t), r in zip(e, reqs, strict=True) if r.facts]
    assert knowledge and all(t.tool_calls[0].name == "search" for t in knowledge)


def test_world_expert_via_env_and_config(world, monkeypatch):
    from genevolve.world.expert import WorldExpert

    monkeypatch.setenv("GENEVOLVE_WORLD", str(world.root))
    monkeypatch.setenv("GENEVOLVE_WORLD_NOISE", "0.5")
    expert = WorldExpert()
    assert expert.noise == 0.5 and Path(expert.world) == world.root
    with pytest.raises(ValueError):
        WorldExpert(world.root, noise=1.5)


def test_expert_reads_image_lines_it_was_shown():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from genevolve.protocol import format_tool_response
    from genevolve.types import Turn
    from genevolve.world.expert import _choose, _listed_images

    title = st.text(alphabet=st.characters(blacklist_characters="\n\r()[]<>", blacklist_categories=("Cs",)),
                    min_size=1, max_size=30).map(str.strip).filter(bool)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(title, min_size=1, max_size=6, unique_by=str.lower))
    def check(titles):
        lines = [f"{len(titles)} images for \"q\"."] + [f"IMG_{i:03d}: {t} (source: file:///x/{i}.png)"
                                                         for i, t in enumerate(titles, 7)]
        turn = Turn(role="user", content=format_tool_response("\n".join(lines)), kind="tool_response")
        listed = _listed_images([turn])
        assert [t for _, t in listed] == titles
        assert _choose(listed, titles[-1], distract=False) == (f"IMG_{6 + len(titles):03d}", titles[-1])

    check()
