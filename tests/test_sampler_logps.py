"""The invariant RL rests on: the learner's log-prob of each sampled token equals the sampler's.

Rollouts are sampled by ``HFPolicy`` through the real agent loop (tiny models built from config), the
learner's token views are built from the trajectories, and the learner's log-probs (``token_logps``) are
compared with the ones the sampler recorded (``Turn.logprobs``). On a CPU in float32 they must agree
to 1e-4 on every scored token: a gap means the learner scores a token the policy did not sample, or
not in the context it was sampled in.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("llguidance")

from genevolve.agent import Agent, AgentConfig  # noqa: E402
from genevolve.evolve.logp_check import GapStats, LogpGate, covers, tis_weights  # noqa: E402
from genevolve.evolve.tokens import ChatEncoder, collate, token_logps  # noqa: E402
from genevolve.policy.base import Constraint, Sampling  # noqa: E402
from genevolve.policy.hf import HFPolicy  # noqa: E402
from genevolve.protocol import ToolCall, format_turn  # noqa: E402
from genevolve.tools.knowledge import KnowledgeTool  # noqa: E402
from tests.fakes import FakeImages, FakeSearch  # noqa: E402
from tests.test_policy_hf import TEMPLATE, make_tokenizer, text_config  # noqa: E402

TEMPERATURE = 0.7
LONG = {"max_position_embeddings": 8192}  # the agent's system prompt is long in a 320-token BPE


def gaps(model, views, temperature=TEMPERATURE):
    """|learner - sampler| on every scored token of ``views``, and how many scored tokens had no sampler value."""
    out, unknown = [], 0
    for view in views:
        learner = token_logps(model, collate([view], 0), temperature=temperature)[0]
        for t, m in enumerate(view.mask):
            if not m:
                continue
            sampled = view.sampled_logps[t] if view.sampled_logps else math.nan
            if math.isnan(sampled):
                unknown += 1
            else:
                out.append(abs(float(learner[t]) - sampled))
    return out, unknown


def tools(tmp_path, per_call=2):
    return [FakeSearch(), FakeImages(tmp_path, per_call=per_call), KnowledgeTool()]


def test_text_policy_under_the_grammar_matches_the_learner(tmp_path):
    """Several turns decoded under the protocol grammar (non-canonical token splits included)."""
    tok = make_tokenizer()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**text_config(tok), **LONG})).eval()
    policy = HFPolicy.from_objects(model, tok, structured=True, think_max_chars=40)
    config = AgentConfig(max_policy_calls=4, prompt="compact", structured_decoding=True,
                         sampling=Sampling(temperature=TEMPERATURE, top_p=0.95, max_tokens=64))
    agent = Agent(policy, tools(tmp_path), config)
    trajectories = [agent.run("draw a red fox in the snow", seed=seed) for seed in (0, 1)]
    assistant = [t for traj in trajectories for t in traj.turns if t.role == "assistant"]
    assert len(assistant) >= 4 and all(t.logprobs for t in assistant)
    encoder = ChatEncoder(tok, skip_forced=True)
    views = [v for traj in trajectories for v in encoder.views(traj)]
    found, unknown = gaps(model, views)
    assert unknown == 0 and len(found) > 50
    assert max(found) < 1e-4, f"largest learner-sampler gap {max(found):.2e}"


class ForceText:
    """Logits processor that makes the decoder write ``ids`` then stop (a scripted VLM turn whose log-probs
    are still the model's own, taken before this mask)."""

    def __init__(self, ids):
        self.ids, self.start = ids, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        k = min(input_ids.shape[1] - self.start, len(self.ids) - 1)
        out = torch.full_like(scores, float("-inf"))
        out[:, self.ids[k]] = 0.0
        return out


def scripted(texts):
    """(agent constraint factory, policy processor factory) that have the policy write ``texts`` in turn."""
    queue = list(texts)

    def constraint(state):
        return Constraint(kind="regex", value=queue.pop(0))

    def processor(c, tokenizer):
        return ForceText(tokenizer.encode(c.value, add_special_tokens=False) + [tokenizer.eos_token_id])

    return constraint, processor


def tiny_llava():
    vtok = make_tokenizer(("<image>",))
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 28},
                                                        crop_size={"height": 28, "width": 28}),
        tokenizer=vtok, chat_template=TEMPLATE, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1)
    config = transformers.LlavaConfig(
        text_config={"model_type": "llama", **text_config(vtok), **LONG},
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32),
        image_token_id=vtok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(config).eval(), processor


def test_vlm_with_more_images_than_its_context_shows_is_scored_in_the_context_it_saw(tmp_path):
    """Three image searches of two images with max_context_images=2: each later turn saw only the newest
    two images, so the contexts part and the trajectory becomes several sequences, each exact."""
    model, processor = tiny_llava()
    turns = [format_turn("look", tool_call=ToolCall("image_search", {"query": q})) for q in ("fox", "cat", "owl")]
    turns.append(format_turn("done", answer={"gen_prompt": "the owl of the first reference image",
                                             "reference_images": [{"img_id": "IMG_005", "note": "owl"}]}))
    constraint, factory = scripted(turns)
    policy = HFPolicy.from_objects(model, processor=processor, logits_processor_factory=factory)
    config = AgentConfig(max_policy_calls=4, max_context_images=2, prompt="compact",
                         sampling=Sampling(temperature=TEMPERATURE, max_tokens=200, seed=3))
    traj = Agent(policy, tools(tmp_path), config, constraint_factory=constraint).run("draw an owl")
    assert traj.ok, (traj.stop_reason, traj.failure, [t.content[:80] for t in traj.turns[2:]])
    assert [t.content for t in traj.turns if t.role == "assistant"] == turns
    assert sum(len(t.images) for t in traj.turns) == 6

    encoder = ChatEncoder(processor.tokenizer, processor, max_context_images=2)
    views = encoder.views(traj)
    assert len(views) == 3  # turns 3 and 4 saw the first searches' images dropped: each starts a sequence
    found, unknown = gaps(model, views)
    assert unknown == 0 and max(found) < 1e-4, f"largest learner-sampler gap {max(found):.2e}"

    # What a view that ignores the window (every image of the trajectory attached) would score instead:
    everything = ChatEncoder(processor.tokenizer, processor).view(traj)
    wrong, _ = gaps(model, [everything])
    assert max(wrong) > 1e-3


# -- the gate and the correction ------------------------------------------------------------------------


def test_gap_stats_and_the_gate():
    stats = GapStats()
    stats.add(torch.tensor([-1.0, -2.0, -3.0, 0.0]), torch.tensor([-1.0, -2.002, math.nan, 5.0]),
              torch.tensor([1, 1, 1, 0]))
    assert stats.tokens == 2 and stats.over == 1  # the NaN and the unmasked token are not compared
    assert stats.metrics()["logp_gap_max"] == pytest.approx(0.002, abs=1e-6)
    gate = LogpGate(reuse=True, tolerance=1e-3, check_every=3)
    assert gate.plan(all_covered=True) is False  # the first step checks
    gate.record(stats)
    assert gate.behaviour_differs
    assert gate.plan(all_covered=True) is False  # apart: keep checking, and correct for it
    gate.record(GapStats(total=0.0, largest=1e-6, tokens=5))
    assert not gate.behaviour_differs
    assert gate.plan(all_covered=True) is True  # agreed, no check due: reuse
    assert gate.plan(all_covered=True) is False  # every third call checks
    assert gate.plan(all_covered=False) is False  # a row without sampler log-probs needs the pass
    off = LogpGate(reuse=False, tolerance=1e-3, check_every=3)
    off.record(GapStats(largest=0.0, tokens=1))
    assert not any(off.plan(all_covered=True) for _ in range(5))


def test_truncated_importance_weights():
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    behaviour = torch.tensor([[-1.0, -2.0, -0.5, math.nan]])
    w = tis_weights(old, behaviour, cap=2.0)
    assert w.tolist()[0] == pytest.approx([1.0, 2.0, math.exp(-0.5), 1.0])  # exp(1) capped at 2; unknown: 1


def test_covers_needs_every_scored_token():
    from genevolve.evolve.tokens import TokenView

    view = TokenView([1, 2, 3], [0, 1, 1], [(1, 3)], [1], sampled_logps=[math.nan, -0.5, -0.1])
    assert covers(view)
    view.sampled_logps = [math.nan, -0.5, math.nan]
    assert not covers(view)
    view.sampled_logps = []
    assert not covers(view)
