import asyncio
import json

import pytest

from genevolve.agent import Agent, AgentConfig
from genevolve.policy.base import PolicyError
from genevolve.policy.scripted import ScriptedPolicy
from genevolve.protocol import ToolCall, format_turn
from genevolve.reward import Failure, protocol_failure
from genevolve.sft_rows import trajectory_from_sft_row, trajectory_to_sft_row
from genevolve.tools.knowledge import KnowledgeTool
from genevolve.types import StopReason, Trajectory
from tests.fakes import FakeImages, FakeSearch


def call(name, **arguments):
    return format_turn(f"I will use {name}.", tool_call=ToolCall(name, arguments))


def answer(prompt, *ids):
    return format_turn("Done.", answer={"gen_prompt": prompt,
                                        "reference_images": [{"img_id": i, "note": "subject"} for i in ids]})


@pytest.fixture
def tools(tmp_path):
    return [FakeSearch(), FakeImages(tmp_path), KnowledgeTool()]


def test_full_rollout(tools):
    policy = ScriptedPolicy([
        call("search", queries=["mascot of the 2024 olympics"]),
        call("image_search", query="Phryge mascot"),
        call("query_knowledge", skill_name="text_rendering"),
        call("image_search", query="Paris skyline"),
        # unsorted: IMG_004 (the skyline) is listed first, and the ordinals follow the list as written
        answer("The mascot from the second reference image in front of the skyline of the first reference image, "
               'with the words "PARIS 2024"', "IMG_004", "IMG_001"),
    ])
    traj = Agent(policy, tools).run("A poster of the 2024 Olympic mascot")
    assert traj.stop_reason == StopReason.ANSWER and traj.ok
    assert [r.img_id for r in traj.program.references] == ["IMG_001", "IMG_004"]  # sorted by id
    assert traj.program.gen_prompt.startswith(  # the ordinals still name the mascot and the skyline
        "The mascot from the first reference image in front of the skyline of the second reference image")
    assert traj.violations == ["unsorted_references", "ordinals_remapped"]
    assert [im.img_id for im in traj.retrieved] == ["IMG_001", "IMG_002", "IMG_003", "IMG_004"]
    assert traj.n_policy_calls == 5 and traj.n_tool_calls == 4 and traj.n_format_errors == 0
    assert traj.backends["policy"] == "scripted" and traj.backends["search"] == "fake"
    # the knowledge tool's guidance reached the policy
    assert "text" in policy.calls[3][-1].content.lower()
    assert traj.program.references[0].path.endswith(".png")
    assert set(traj.timings) >= {"policy", "tools", "total"}


def test_budget_final_step_and_no_answer(tools):
    replies = [call("search", queries=[f"q{i}"]) for i in range(11)]
    policy = ScriptedPolicy(replies)
    traj = Agent(policy, tools).run("anything")
    assert traj.n_policy_calls == 11 and traj.n_tool_calls == 10
    assert traj.stop_reason == StopReason.NO_ANSWER and traj.program is None
    kinds = [t.kind for t in traj.turns]
    assert kinds.count("final_step") == 1
    # the final-step message comes right before the 11th policy call
    assert policy.calls[10][-1].kind == "final_step"
    assert traj.turns[-1].kind == "format_error"  # tool call in the final step is refused


def test_final_step_comes_early_when_tool_budget_is_spent(tools):
    policy = ScriptedPolicy([call("search", queries=["a"]), call("search", queries=["b"]), answer("x", "IMG_001")])
    traj = Agent(policy, tools, AgentConfig(max_tool_calls=2, min_references=0)).run("r")
    assert policy.calls[2][-1].kind == "final_step"
    assert traj.stop_reason == StopReason.INVALID_ANSWER or traj.ok


def test_format_error_then_recovery(tools):
    policy = ScriptedPolicy(["I think I should search", call("image_search", query="cat"), answer("A cat", "IMG_002")])
    traj = Agent(policy, tools).run("a cat")
    assert traj.ok and traj.n_format_errors == 1
    assert traj.turns[3].kind == "format_error" and "missing_think" in traj.turns[3].content


def test_repeated_call_is_not_executed(tools):
    search = tools[0]
    policy = ScriptedPolicy([call("search", queries=["Eiffel Tower"]), call("search", queries=["  eiffel tower "]),
                             call("image_search", query="eiffel"), answer("tower", "IMG_001")])
    traj = Agent(policy, tools).run("the tower")
    assert search.calls == [["Eiffel Tower"]]
    assert traj.tool_calls[1].repeated and "already made this exact call" in traj.turns[5].content
    assert traj.ok


def test_tool_errors_and_timeouts_are_observations(tmp_path):
    tools = [FakeSearch(fail_with="http_500"), FakeImages(tmp_path)]
    policy = ScriptedPolicy([call("search", queries=["x"]), call("image_search", query="x"), answer("x", "IMG_001")])
    traj = Agent(policy, tools).run("r")
    assert traj.ok and traj.tool_calls[0].error == "http_500" and "[tool error: http_500]" in traj.turns[3].content

    slow = [FakeSearch(delay=5), FakeImages(tmp_path)]
    policy = ScriptedPolicy([call("search", queries=["x"]), call("image_search", query="y"), answer("x", "IMG_001")])
    traj = Agent(policy, slow, AgentConfig(tool_timeout_s=0.05)).run("r")
    assert traj.ok and traj.tool_calls[0].error == "timeout"


def test_bad_arguments_and_unknown_skill(tools):
    policy = ScriptedPolicy([call("image_search", query=""), call("query_knowledge", skill_name="juggling"),
                             call("image_search", query="dog"), answer("dog", "IMG_001")])
    traj = Agent(policy, tools).run("a dog")
    assert [c.error for c in traj.tool_calls[:2]] == ["bad_arguments", "bad_arguments"]
    assert traj.ok


def test_ids_count_up_and_repeat_images_keep_their_id(tmp_path):
    tools = [FakeImages(tmp_path, per_call=2, broken=1)]
    policy = ScriptedPolicy([call("image_search", query="cat"), call("image_search", query="dog"),
                             call("image_search", query="cat", top_k=3), answer("x", "IMG_003", "IMG_004")])
    traj = Agent(policy, tools).run("r")
    ids = [im.img_id for im in traj.retrieved]
    # the broken image has the same URL in every call, so it keeps IMG_003
    assert ids == ["IMG_001", "IMG_002", "IMG_003", "IMG_004", "IMG_005"]
    # third call returned the cat files again: same ids, and the broken one is flagged unusable
    third = traj.turns[7].content
    assert "IMG_001" in third and "unusable" in third
    assert traj.ok


def test_vlm_sees_images_text_policy_does_not(tools):
    seq = [call("image_search", query="cat"), answer("cat", "IMG_001")]
    text_policy = ScriptedPolicy(list(seq))
    traj = Agent(text_policy, tools).run("cat")
    assert all(not t.images for t in traj.turns) and "<image>" not in traj.turns[3].content

    vlm = ScriptedPolicy(list(seq))
    vlm.accepts_images = True
    traj = Agent(vlm, tools).run("cat")
    assert traj.turns[3].content.count("<image>") == 2 and len(traj.turns[3].images) == 2


def test_context_image_cap(tmp_path):
    vlm = ScriptedPolicy([call("image_search", query=q) for q in "abc"] + [answer("x", "IMG_001")])
    vlm.accepts_images = True
    traj = Agent(vlm, [FakeImages(tmp_path, per_call=2)], AgentConfig(max_context_images=3)).run("r")
    seen = vlm.calls[-1]
    assert sum(len(t.images) for t in seen) == 3
    assert sum(t.content.count("<image>") for t in seen) == 3
    assert sum(len(t.images) for t in traj.turns) == 6  # the trajectory keeps them all


def test_invalid_answer_is_rejected_then_fixed(tools):
    policy = ScriptedPolicy([call("image_search", query="cat"), answer("cat", "IMG_099"), answer("cat", "IMG_002")])
    traj = Agent(policy, tools).run("cat")
    assert traj.ok and "unknown_image_id" in traj.violations
    assert any(t.kind == "answer_rejected" for t in traj.turns)


def test_out_of_range_ordinal_is_fed_back_then_fixed(tools):
    policy = ScriptedPolicy([call("image_search", query="cat"),
                             answer("the cat of the fifth reference image", "IMG_001", "IMG_002"),
                             answer("the cat of the second reference image", "IMG_001", "IMG_002")])
    traj = Agent(policy, tools).run("cat")
    policy.assert_exhausted()
    assert traj.ok and traj.program.gen_prompt == "the cat of the second reference image"
    seen = policy.calls[2][-1]  # what the policy was shown before its second answer
    assert seen.kind == "answer_rejected" and "ordinal_mismatch" in seen.content
    assert "ordinal_mismatch" in traj.violations


def test_out_of_range_ordinal_in_the_final_step_is_a_recorded_failure(tools):
    policy = ScriptedPolicy([call("image_search", query="cat"),
                             answer("the cat of the third reference image", "IMG_001", "IMG_002")])
    traj = Agent(policy, tools, AgentConfig(max_policy_calls=2)).run("cat")
    policy.assert_exhausted()
    assert traj.stop_reason == StopReason.INVALID_ANSWER and traj.program is None
    assert "ordinal_mismatch" in traj.failure and protocol_failure(traj) == Failure.INVALID_ANSWER
    assert traj.turns[-1].role == "assistant"  # nothing is fed back after the last allowed call


def test_invalid_final_answer_is_a_named_failure(tools):
    policy = ScriptedPolicy([answer("cat", "IMG_001")])
    traj = Agent(policy, tools, AgentConfig(max_policy_calls=1)).run("cat")
    assert traj.stop_reason == StopReason.INVALID_ANSWER and "no_reference" in traj.failure


def test_policy_error_and_empty_request(tools):
    def boom(turns):
        raise PolicyError("server down")

    traj = Agent(ScriptedPolicy([boom]), tools).run("cat")
    assert traj.stop_reason == StopReason.POLICY_ERROR and "server down" in traj.failure
    traj = Agent(ScriptedPolicy([]), tools).run("   ")
    assert traj.stop_reason == StopReason.EMPTY_REQUEST


def test_concurrent_rollouts_have_independent_ids(tools):
    def script():
        return [call("image_search", query="cat"), answer("cat", "IMG_001")]

    agent = Agent(ScriptedPolicy(script() * 3), tools)
    trajs = asyncio.run(agent.arun_many(["a", "b", "c"], concurrency=1))
    assert all(t.ok and t.retrieved[0].img_id == "IMG_001" for t in trajs)


def test_trajectory_json_and_sft_round_trip(tools, tmp_path):
    policy = ScriptedPolicy([call("search", queries=["x"]), call("image_search", query="cat"), answer("A cat", "IMG_002")])
    policy.accepts_images = True
    traj = Agent(policy, tools).run("cat")
    again = Trajectory.from_json(traj.to_json())
    assert again == traj

    row = trajectory_to_sft_row(traj, image_root=tmp_path)
    assert all(not p.startswith("/") for p in row["images"])
    json.dumps(row)
    back = trajectory_from_sft_row(row, root=tmp_path)
    assert [(t.role, t.content, t.images) for t in back.turns] == [(t.role, t.content, t.images) for t in traj.turns]
    assert back.program.gen_prompt == "A cat" and back.program.references[0].img_id == "IMG_002"
    assert back.program.references[0].path == traj.program.references[0].path


def test_compact_prompt_keeps_every_tool_skill_and_budget(tools):
    from genevolve import prompts
    from genevolve.skills import load_skills

    full = Agent(ScriptedPolicy([]), tools, AgentConfig(max_policy_calls=5, max_tool_calls=4))
    compact = Agent(ScriptedPolicy([]), tools, AgentConfig(max_policy_calls=5, max_tool_calls=4, prompt="compact"))
    assert len(compact.system_prompt) * 4 < len(full.system_prompt)
    for text in (full.system_prompt, compact.system_prompt):
        assert all(t.name in text for t in tools) and all(s in text for s in load_skills())
        assert "5 messages" in text and "4 tool calls" in text
    assert "- search(queries, top_k?): " in compact.system_prompt
    guided = compact.system_prompt_with("- Read the counting skill first.")
    assert "Read the counting skill first." in guided and guided.startswith(compact.system_prompt.split("\n")[0])
    with pytest.raises(ValueError, match="unknown prompt style"):
        prompts.system_prompt(tools, style="tiny")


def test_prompt_style_comes_from_the_policy_unless_the_config_names_one(tools):
    policy = ScriptedPolicy([])
    policy.prompt_style = "compact"
    compact = Agent(policy, tools, AgentConfig()).system_prompt
    assert compact == Agent(ScriptedPolicy([]), tools, AgentConfig(prompt="compact")).system_prompt
    assert Agent(policy, tools, AgentConfig(prompt="full")).system_prompt == Agent(ScriptedPolicy([]), tools).system_prompt
    assert len(Agent(ScriptedPolicy([]), tools).system_prompt) > 4 * len(compact)


def test_image_lines_name_web_sources_but_not_local_paths():
    from genevolve.agent import format_image_lines
    from genevolve.types import RetrievedImage

    images = [RetrievedImage(img_id="IMG_001", title="cat", page_url="https://example.org/cat", path="/x/a.png"),
              RetrievedImage(img_id="IMG_002", title="dog", page_url="file:///home/me/dog.png", path="/x/b.png"),
              RetrievedImage(img_id="IMG_003", title="fox", page_url="openmoji:1F98A", path="/x/c.png")]
    text = format_image_lines("q", "3 images", images, with_images=False)
    assert text.splitlines() == ["3 images", "IMG_001: cat (source: https://example.org/cat)", "IMG_002: dog",
                                 "IMG_003: fox"]
