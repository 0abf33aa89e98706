"""Loss functions against slow references written as plain Python loops over the formulas in the issue."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from genevolve.evolve.losses import (  # noqa: E402
    distill_advantages,
    gated_distill_advantages,
    group_advantages,
    grpo_clip_fractions,
    grpo_loss,
    sft_loss,
    ved_loss,
    ved_selection,
)

# -- references (lists of floats, no torch) ----------------------------------------------------


def ref_group_advantages(rewards: list[float], eps: float) -> list[float]:
    k = len(rewards)
    if k < 2 or len(set(rewards)) == 1:
        return [0.0] * k
    mean = sum(rewards) / k
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (k - 1))
    return [(r - mean) / (std + eps) for r in rewards]


def ref_grpo(logp, old, adv, mask, clip_low, clip_high, ref=None, kl_coef=0.0) -> float:
    totals = []
    for b in range(len(logp)):
        total = 0.0
        for t in range(len(logp[b])):
            if not mask[b][t]:
                continue
            a = adv[b] if not isinstance(adv[b], list) else adv[b][t]
            u = math.exp(logp[b][t] - old[b][t])
            clipped = min(max(u, 1 - clip_low), 1 + clip_high)
            term = -min(u * a, clipped * a)
            if ref is not None and kl_coef:
                d = ref[b][t] - logp[b][t]
                term += kl_coef * (math.exp(d) - d - 1)
            total += term
        totals.append(total)
    return sum(totals) / len(totals)


def ref_ved(student, teacher, old, mask, top_frac, rho_max, clamp, token_cap) -> float:
    kept_terms = []
    for b in range(len(student)):
        idx = [t for t in range(len(student[b])) if mask[b][t]]
        if not idx:
            continue
        keep = math.ceil(Fraction(str(top_frac)) * len(idx))
        # Largest |teacher - student| first; Python's sort is stable, so ties keep token order.
        ranked = sorted(idx, key=lambda t, b=b: -abs(teacher[b][t] - student[b][t]))[:keep]
        for t in ranked:
            ell = min(max(student[b][t] - teacher[b][t], -clamp), clamp)
            k3 = math.exp(-ell) - 1 + ell
            rho = min(math.exp(student[b][t] - old[b][t]), rho_max)
            term = rho * k3
            if token_cap is not None:
                term = min(term, token_cap)
            kept_terms.append(term)
    return sum(kept_terms) / len(kept_terms) if kept_terms else 0.0


# -- strategies ---------------------------------------------------------------------------------

logps = st.floats(-6.0, 0.0, allow_nan=False, width=32)


@st.composite
def batches(draw, n_tensors: int):
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 12))
    tensors = [[[draw(logps) for _ in range(t)] for _ in range(b)] for _ in range(n_tensors)]
    mask = [[draw(st.booleans()) for _ in range(t)] for _ in range(b)]
    return b, t, tensors, mask


def T(x):
    return torch.tensor(x, dtype=torch.float64)


# -- sft_loss -------------------------------------------------------------------------------------


def test_sft_loss_is_masked_token_mean():
    logp = T([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    assert sft_loss(logp, mask).item() == pytest.approx((2 + 3 + 4) / 3)
    zero = sft_loss(logp.requires_grad_(), torch.zeros(2, 3))
    assert zero.item() == 0.0
    zero.backward()  # no masked token still leaves a usable graph
    # micro-batches of one step, each divided by the step's token count, add up to the step's token mean
    halves = [sft_loss(logp[b:b + 1], mask[b:b + 1], n_tokens=3) for b in (0, 1)]
    assert sum(h.item() for h in halves) == pytest.approx(sft_loss(logp, mask).item())


# -- group_advantages -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1), min_size=1, max_size=8))
def test_group_advantages_match_reference(rewards):
    as_given = T(rewards)  # the reference sees the same (float32-rounded) rewards the function sees
    got = group_advantages(as_given).tolist()
    assert got == pytest.approx(ref_group_advantages(as_given.tolist(), 1e-6), abs=1e-5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=8))
def test_group_advantages_unscaled_are_centred_rewards(rewards):
    as_given = T(rewards)
    got = group_advantages(as_given, scale="none").tolist()
    mean = sum(as_given.tolist()) / len(rewards)
    flat = len(set(as_given.tolist())) == 1
    assert got == pytest.approx([0.0 if flat else r - mean for r in as_given.tolist()], abs=1e-6)


def test_group_advantages_scale_changes_only_the_weight_of_near_tied_groups():
    tight, wide = group_advantages(T([[0.50, 0.51], [0.0, 1.0]]), scale="none")
    assert tight.tolist() == pytest.approx([-0.005, 0.005], abs=1e-6)
    assert wide.tolist() == pytest.approx([-0.5, 0.5], abs=1e-6)
    tight_std, wide_std = group_advantages(T([[0.50, 0.51], [0.0, 1.0]]))
    assert tight_std.tolist() == pytest.approx(wide_std.tolist(), abs=1e-3)  # std scaling: equal weight
    with pytest.raises(ValueError, match="scale"):
        group_advantages(T([0.0, 1.0]), scale="rank")


def test_group_advantages_zero_spread_and_batched_groups():
    assert group_advantages(T([0.1, 0.1, 0.1])).tolist() == [0.0, 0.0, 0.0]
    assert group_advantages(T([0.7])).tolist() == [0.0]
    both = group_advantages(T([[0.0, 1.0, 1.0], [0.3, 0.3, 0.3]]))
    assert both[1].tolist() == [0.0] * 3
    assert both[0].tolist() == pytest.approx(ref_group_advantages([0.0, 1.0, 1.0], 1e-6))
    # Unbiased std: for [0, 1] the std is sqrt(0.5), so the advantages are ±0.5/sqrt(0.5).
    assert group_advantages(T([0.0, 1.0])).tolist() == pytest.approx([-(0.5**0.5), 0.5**0.5], abs=1e-5)


# -- grpo_loss ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(batches(3), st.floats(0.0, 0.5), st.floats(0.0, 0.5), st.floats(0.0, 0.1), st.data())
def test_grpo_loss_matches_reference(batch, clip_low, clip_high, kl_coef, data):
    b, t, (logp, old, ref), mask = batch
    adv = [data.draw(st.floats(-3, 3)) for _ in range(b)]
    got = grpo_loss(T(logp), T(old), T(adv), torch.tensor(mask), clip_low=clip_low, clip_high=clip_high,
                    ref_logp=T(ref), kl_coef=kl_coef)
    want = ref_grpo(logp, old, adv, mask, clip_low, clip_high, ref, kl_coef)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(batches(2), st.data())
def test_grpo_loss_per_token_advantages(batch, data):
    b, t, (logp, old), mask = batch
    adv = [[data.draw(st.floats(-3, 3)) for _ in range(t)] for _ in range(b)]
    got = grpo_loss(T(logp), T(old), T(adv), torch.tensor(mask))
    assert got.item() == pytest.approx(ref_grpo(logp, old, adv, mask, 0.2, 0.28), rel=1e-9, abs=1e-9)


def test_grpo_gradients_flow_only_through_logp():
    logp = T([[-1.0, -0.5, -2.0]]).requires_grad_()
    old = T([[-1.5, -0.5, -1.0]]).requires_grad_()
    ref = T([[-1.1, -0.4, -2.5]]).requires_grad_()
    adv = T([1.5]).requires_grad_()
    grpo_loss(logp, old, adv, torch.ones(1, 3), ref_logp=ref, kl_coef=0.1).backward()
    assert old.grad is None and ref.grad is None and adv.grad is None
    # Token 3: u = e^-1 below 1 - 0.2 with A > 0, so min picks the unclipped u·A and grad flows;
    # token 1: u = e^0.5 > 1.28, A > 0 -> clipped, only the KL term's gradient remains.
    assert logp.grad is not None and logp.grad[0, 2] != 0
    kl_only = 0.1 * (1 - math.exp(-1.1 - (-1.0)))  # d/dlogp of kl_coef·(e^d - d - 1), d = ref - logp
    assert logp.grad[0, 0].item() == pytest.approx(kl_only)


def test_grpo_numeric_gradient_matches_autograd():
    torch.manual_seed(0)
    logp = (-torch.rand(3, 5, dtype=torch.float64) * 2).requires_grad_()
    old = logp.detach() + 0.05 * torch.randn(3, 5, dtype=torch.float64)
    ref = logp.detach() + 0.1 * torch.randn(3, 5, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.3

    def f(x):
        return grpo_loss(x, old, T([1.0, -0.5, 2.0]), mask, ref_logp=ref, kl_coef=0.01)

    assert torch.autograd.gradcheck(f, (logp,))


def test_clip_fractions_count_the_clipped_tokens():
    logp = T([[0.0, 0.0, 0.0, 0.0]])
    old = T([[0.5, -0.5, 0.0, -0.5]])  # ratios e^-0.5 (low), e^0.5 (high), 1, e^0.5 (masked out)
    fr = grpo_clip_fractions(logp, old, T([[-1.0, 1.0, 1.0, 1.0]]), torch.tensor([[1, 1, 1, 0]]))
    assert fr == {"low": pytest.approx(1 / 3), "high": pytest.approx(1 / 3)}
    assert grpo_clip_fractions(logp, old, T([1.0]), torch.tensor([[1, 1, 1, 0]])) == {"low": 0.0, "high": 1 / 3}


# -- ved_loss -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(batches(3), st.sampled_from([0.1, 0.25, 0.3, 1 / 3, 0.5, 1.0]), st.floats(1.0, 3.0),
       st.sampled_from([10.0, 1.0, 0.3]), st.sampled_from([None, 0.5, 5.0]))
def test_ved_loss_matches_reference(batch, top_frac, rho_max, clamp, token_cap):
    b, t, (student, teacher, old), mask = batch
    got = ved_loss(T(student), T(teacher), T(old), torch.tensor(mask), top_frac=top_frac, rho_max=rho_max,
                   clamp=clamp, token_cap=token_cap)
    want = ref_ved(student, teacher, old, mask, top_frac, rho_max, clamp, token_cap)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_ved_selection_counts_and_ties():
    student = T([[0.0] * 30, [0.0] * 30])
    teacher = T([[-float(i % 7) for i in range(30)], [-1.0] * 30])
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 10:] = False
    chosen = ved_selection(student, teacher, mask, 0.1)
    assert chosen[0].sum() == 3  # ceil(0.1 × 30) = 3 exactly, not 4 from 0.1*30 = 3.0000000000000004
    assert chosen[0].nonzero().flatten().tolist() == [6, 13, 20]  # the gap 6, earliest first
    assert chosen[1].nonzero().flatten().tolist() == [0]  # ceil(0.1 × 10) = 1; all tied -> first
    assert ved_selection(student, teacher, torch.zeros(2, 30), 0.1).sum() == 0
    with pytest.raises(ValueError, match="top_frac"):
        ved_selection(student, teacher, mask, 0.0)


def test_ved_gradients_flow_only_through_the_student():
    torch.manual_seed(1)
    student = (-torch.rand(2, 6, dtype=torch.float64)).requires_grad_()
    teacher = (-torch.rand(2, 6, dtype=torch.float64)).requires_grad_()
    old = (student.detach() - 0.1).requires_grad_()
    mask = torch.ones(2, 6)
    ved_loss(student, teacher, old, mask, top_frac=0.5).backward()
    assert teacher.grad is None and old.grad is None
    assert student.grad is not None and (student.grad != 0).sum() == 6  # 3 kept tokens per row
    assert torch.autograd.gradcheck(lambda s: ved_loss(s, teacher.detach(), old.detach(), mask, top_frac=0.5),
                                    (student,))


def test_ved_rho_gradient_and_empty_rows():
    # Inside the clamp and below rho's cap: d/ds of e^(s-old)·k3(s - t) = rho·k3 + rho·k3' = rho·(s - t).
    s, t, o = -1.0, -2.0, -1.3
    student = T([[s]]).requires_grad_()
    ved_loss(student, T([[t]]), T([[o]]), torch.ones(1, 1), top_frac=1.0).backward()
    assert student.grad.item() == pytest.approx(math.exp(s - o) * (s - t))
    # rho at its cap: the pull is rho_max·(s - t), not the product's rho_max·(1 - e^-(s-t)).
    student = T([[s]]).requires_grad_()
    ved_loss(student, T([[t]]), T([[s - 5.0]]), torch.ones(1, 1), top_frac=1.0, rho_max=2.0).backward()
    assert student.grad.item() == pytest.approx(2.0 * (s - t))
    # No masked token anywhere: zero, still differentiable.
    student = T([[s, s]]).requires_grad_()
    loss = ved_loss(student, T([[t, t]]), T([[o, o]]), torch.zeros(1, 2))
    loss.backward()
    assert loss.item() == 0.0 and student.grad.abs().sum() == 0


def test_ved_far_beyond_the_clamp_pulls_towards_the_teacher():
    """The issue's case: the teacher 12 nats above the student, rho = e^0.3. A literal autograd of
    rho·k3 with the clamp active gives +rho·k3(-10) ≈ +29,700 per kept token before the 1/n mean, away
    from the teacher."""
    student = T([[-14.0]]).requires_grad_()
    ved_loss(student, T([[-2.0]]), T([[-14.3]]), torch.ones(1, 1), top_frac=1.0).backward()
    assert student.grad.item() == pytest.approx(math.exp(0.3) * -10.0)


far_logps = st.floats(-40.0, 0.0, allow_nan=False, width=32)  # |s - t| up to 40, far beyond the clamp


@st.composite
def distill_batches(draw):
    """(s, t, old, mask): old within ±3 nats of s, so rho = e^(s - old) ranges from e^-3 to past its cap."""
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 10))
    s = [[draw(far_logps) for _ in range(t)] for _ in range(b)]
    teacher = [[draw(far_logps) for _ in range(t)] for _ in range(b)]
    old = [[x - draw(st.floats(-3.0, 3.0)) for x in row] for row in s]
    mask = [[draw(st.booleans()) for _ in range(t)] for _ in range(b)]
    return T(s), T(teacher), T(old), torch.tensor(mask)


@settings(max_examples=300, deadline=None)
@given(distill_batches(), st.sampled_from([0.1, 0.5, 1.0]), st.floats(1.0, 3.0), st.sampled_from([10.0, 2.0, 0.5]))
def test_ved_gradient_pulls_towards_the_teacher_and_is_bounded(batch, top_frac, rho_max, clamp):
    """Expected per-token gradient, from d/ds of rho·k3(s - t) = rho·(s - t): on each kept token
    rho·clamp(s - t)/n with rho = min(e^(s - old), rho_max); zero elsewhere."""
    s, t, old, mask = batch
    student = s.clone().requires_grad_()
    ved_loss(student, t, old, mask, top_frac=top_frac, rho_max=rho_max, clamp=clamp).backward()
    kept = ved_selection(s, t, mask, top_frac)
    n = max(int(kept.sum()), 1)
    grad = student.grad
    assert (grad[~kept] == 0).all()
    gap = s - t
    rho = torch.exp(s - old).clamp(max=rho_max)
    for g, d, r in zip(grad[kept].tolist(), gap[kept].tolist(), rho[kept].tolist(), strict=True):
        assert math.copysign(1, g) == math.copysign(1, d) or g == d == 0  # descent moves s towards t
        assert abs(g) <= rho_max * clamp / n * (1 + 1e-9)
        assert g == pytest.approx(r * min(max(d, -clamp), clamp) / n, rel=1e-9, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(distill_batches(), st.floats(0.01, 5.0))
def test_ved_token_cap_only_ever_removes_a_pull(batch, token_cap):
    s, t, old, mask = batch
    capped, free = s.clone().requires_grad_(), s.clone().requires_grad_()
    ved_loss(capped, t, old, mask, top_frac=1.0, token_cap=token_cap).backward()
    ved_loss(free, t, old, mask, top_frac=1.0).backward()
    same = capped.grad == free.grad
    assert (same | (capped.grad == 0)).all()  # each token keeps its pull or loses it, never flips


@settings(max_examples=300, deadline=None)
@given(distill_batches(), st.floats(0.01, 3.0), st.sampled_from([10.0, 2.0]))
def test_distill_advantage_gradient_pulls_towards_the_teacher_and_is_bounded(batch, coef, clamp):
    """The advantage form through grpo_loss, outcome advantage 0: per token the surrogate's gradient is
    -u·d/B with d = coef·clamp(t - old) and u = e^(s - old), or 0 where the clip is active. Its sign is
    that of old - t (the student that sampled the token) and its size at most u·coef·clamp/B."""
    s, t, old, mask = batch
    b = s.shape[0]
    student = s.clone().requires_grad_()
    adv = torch.zeros(b)[:, None] + distill_advantages(old, t, mask, coef=coef, clamp=clamp)
    grpo_loss(student, old, adv, mask).backward()
    grad, u = student.grad, torch.exp(s - old)
    assert (grad[~mask.bool()] == 0).all()
    for g, d, r in zip(grad[mask.bool()].tolist(), (old - t)[mask.bool()].tolist(), u[mask.bool()].tolist(),
                       strict=True):
        assert g == 0 or math.copysign(1, g) == math.copysign(1, d)
        assert abs(g) <= r * coef * clamp / b * (1 + 1e-9)


@settings(max_examples=300, deadline=None)
@given(distill_batches(), st.floats(0.01, 1.0), st.data())
def test_gated_distillation_never_flips_the_outcome_gradient(batch, coef, data):
    """The gated form adds at most coef per token and only in the direction of the outcome advantage A,
    so every token's gradient keeps the sign it has under A alone (or is clipped to 0) and moves by at
    most u·coef/B."""
    s, t, old, mask = batch
    b = s.shape[0]
    outcome = T([data.draw(st.sampled_from([-1.5, -0.2, 0.0, 0.7, 2.0])) for _ in range(b)])
    gated, plain = s.clone().requires_grad_(), s.clone().requires_grad_()
    adv = outcome[:, None] + gated_distill_advantages(old, t, outcome, mask, coef=coef)
    grpo_loss(gated, old, adv, mask).backward()
    grpo_loss(plain, old, outcome, mask).backward()
    u = torch.exp(s - old)
    for g, p, r in zip(gated.grad.flatten().tolist(), plain.grad.flatten().tolist(), u.flatten().tolist(),
                       strict=True):
        assert (g == 0) == (p == 0)  # a clipped or zero-advantage token stays so
        assert g == 0 or math.copysign(1, g) == math.copysign(1, p)
        assert abs(g - p) <= r * coef / b * (1 + 1e-9)


def test_ved_is_zero_when_teacher_agrees():
    student = T([[-0.5, -1.5, -0.1]])
    assert ved_loss(student, student.clone(), student - 0.3, torch.ones(1, 3), top_frac=1.0).item() == 0.0


# -- distillation as advantage ----------------------------------------------------------------------


def test_distill_advantages():
    student = T([[-1.0, -2.0, -0.5]]).requires_grad_()
    teacher = T([[-0.5, -2.5, -0.5]])
    adv = distill_advantages(student, teacher, torch.tensor([[1, 1, 0]]), coef=2.0)
    assert adv.tolist() == [[1.0, -1.0, 0.0]] and not adv.requires_grad


def test_gated_distill_advantages_keep_the_outcome_sign():
    student = T([[-1.0, -2.0, -0.5], [-1.0, -2.0, -0.5]])
    teacher = T([[-0.5, -2.5, -0.4], [-0.5, -2.5, -0.4]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = gated_distill_advantages(student, teacher, T([1.0, -1.0]), mask, coef=0.1)
    # Row 0 (good rollout): only the token the teacher endorses (+0.5) gets a bonus; the masked-out one none.
    assert adv[0].tolist() == pytest.approx([0.1 * math.tanh(0.5), 0.0, 0.0])
    # Row 1 (bad rollout): only the token the teacher disowns (-0.5) gets pushed further down.
    assert adv[1].tolist() == pytest.approx([0.0, -0.1 * math.tanh(0.5), 0.0])
    assert gated_distill_advantages(student, teacher, T([0.0, 0.0]), mask).abs().sum() == 0
    big = gated_distill_advantages(T([[-20.0]]), T([[0.0]]), T([1.0]), torch.ones(1, 1), coef=0.1)
    assert big.item() <= 0.1  # bounded by coef
