"""The learner's update goes the right way: GRPO raises the likelihood of rollouts with a positive
advantage and lowers it for negative ones; VED alone pulls the student toward the teacher."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from genevolve.evolve.learner import Learner, Row  # noqa: E402
from genevolve.evolve.model import TrainModel  # noqa: E402
from genevolve.evolve.rl_config import EvolveConfig  # noqa: E402
from genevolve.evolve.tokens import TokenView, collate, token_logps  # noqa: E402
from genevolve.evolve.train_config import ModelSpec  # noqa: E402


class _Tok:
    pad_token_id = 0
    eos_token_id = 1


def _model(seed: int = 0) -> TrainModel:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return TrainModel(transformers.LlamaForCausalLM(config), _Tok(), None, ModelSpec())


def _view(context: list[int], answer: list[int]) -> TokenView:
    return TokenView(context + answer, [0] * len(context) + [1] * len(answer),
                     [(len(context), len(context) + len(answer))], [2])


def _answer_logp(tm: TrainModel, view: TokenView) -> float:
    with torch.no_grad():
        batch = collate([view], tm.pad_id)
        return float((token_logps(tm.model.eval(), batch) * batch.mask_B_T).sum())


@pytest.mark.parametrize("form", ["none", "kl", "advantage"])
def test_grpo_moves_likelihood_with_the_advantage_sign(form):
    tm = _model()
    context = [5, 6, 7, 8]
    good, bad = _view(context, [10, 11, 12, 13]), _view(context, [20, 21, 22, 23])
    rows = [Row(good, None, advantage=1.0), Row(bad, None, advantage=-1.0)]
    cfg = EvolveConfig(data="unused", lr=3e-3, mini_batches=1, micro_batch=2, steps=10, warmup_frac=0.0,
                       kl_coef=0.0, ved={"form": form})
    learner = Learner(tm, cfg)
    before = _answer_logp(tm, good), _answer_logp(tm, bad)
    for _ in range(3):
        learner.step(rows)
    after = _answer_logp(tm, good), _answer_logp(tm, bad)
    assert after[0] > before[0] + 0.5 and after[1] < before[1] - 0.5, (before, after)


def test_ved_alone_pulls_the_student_toward_the_teacher():
    """Zero advantages (a group with no spread) and a bundle: only the distillation term acts, and the
    student's log-probs of the rollout move toward what the teacher context gives them."""
    tm = _model(1)
    context, guide, answer = [5, 6, 7, 8], [30, 31, 32], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    student, teacher = _view(context, answer), _view(guide + context, answer)
    rows = [Row(student, teacher, advantage=0.0)]
    # Adam's first step moves every parameter by about lr whatever the gradient's size: keep it small
    # next to the initial teacher-student gap, so the test sees the direction, not the step size
    cfg = EvolveConfig(data="unused", lr=1e-5, mini_batches=1, micro_batch=1, steps=10, warmup_frac=0.0,
                       kl_coef=0.0, ved={"form": "kl", "lam": 2.0, "top_frac": 1.0})
    learner = Learner(tm, cfg)

    def logps(view: TokenView, start: int) -> torch.Tensor:
        with torch.no_grad():
            return token_logps(tm.model.eval(), collate([view], 0))[0, start:]

    target = logps(teacher, len(guide) + len(context))  # the teacher's scores, constants in the loss
    before = float((logps(student, len(context)) - target).abs().mean())
    metrics = learner.step(rows)
    assert metrics["ved_loss"] > 0 and metrics["grpo_loss"] == 0
    after = float((logps(student, len(context)) - target).abs().mean())
    assert after < before, (before, after)


def test_lora_kl_reference_is_the_adapter_the_run_started_from():
    """With a LoRA policy that starts from a trained adapter (an SFT run's), the KL reference is that
    adapter, not the base model under it; scoring it leaves the current weights in place."""
    peft = pytest.importorskip("peft")
    tm = _model(2)
    tm.model = peft.get_peft_model(tm.model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter: lora_B is no longer zero
        for name, p in tm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert tm.is_lora
    view = _view([5, 6, 7, 8], [10, 11, 12, 13, 14])
    rows = [Row(view, None, advantage=1.0), Row(_view([5, 6, 7, 8], [20, 21, 22]), None, advantage=-1.0)]
    start = _answer_logp(tm, view)
    with tm.model.disable_adapter():
        base = _answer_logp(tm, view)
    assert abs(start - base) > 1e-3  # the adapter matters
    cfg = EvolveConfig(data="unused", lr=1e-2, mini_batches=1, micro_batch=2, steps=10, kl_coef=0.1, temperature=1.0)
    learner = Learner(tm, cfg)
    learner.step(rows)
    moved = _answer_logp(tm, view)
    assert abs(moved - start) > 1e-3
    scored = learner.score(rows)
    assert float(scored.ref[0][view.mask.index(1):].sum()) == pytest.approx(start, abs=1e-4)
    assert float(scored.old[0][view.mask.index(1):].sum()) == pytest.approx(moved, abs=1e-4)
    assert _answer_logp(tm, view) == pytest.approx(moved, abs=1e-6)  # weights restored
