"""Loss functions for SFT, GRPO and Visual Experience Distillation: tensors in, tensor out.

No trainer state, no model calls: every function takes per-token log-probabilities that the caller
computed (``genevolve.evolve.tokens.token_logps``) and returns a loss or per-token advantages, so each
can be checked by hand against METHOD.md sections 4 and 5.

Axis letters in names: ``B`` sequences in the batch, ``T`` token positions (padded), ``K`` rollouts
in one group. ``mask_B_T`` is 1 on tokens the policy generated (assistant tokens) and 0 elsewhere
(system, user, tool responses, padding); it may be bool, int or float.

Departures from the paper, one line each:

- ``ved_loss`` breaks ties in the top-|teacher − student| selection by token order (earlier first),
  so the kept set is deterministic; the paper does not say.
- ``ved_loss`` computes ``ceil(top_frac · n)`` with a 1e-9 tolerance, so 0.1 × 30 keeps 3 tokens,
  not the 4 that binary floating point would give.
- ``token_cap`` (``c_tok``) defaults to no cap: the paper names the cap but not its value.
- ``ved_loss``'s gradient is ρ·clamp(s − t) in every regime, where a literal autograd of ρ·k3 would
  push the wrong way outside the clamp and explode at ρ's cap (its docstring has the derivation).
- ``distill_advantages`` clamps the teacher − student gap (the paper's advantage form is not published).
- An empty selection (no row has a masked token) gives a zero loss that still depends on the
  student, so ``backward`` works on every step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

#: the ways the teacher's signal can enter the RL loss (see ``ved_loss``, ``distill_advantages``,
#: ``gated_distill_advantages``)
VED_FORMS = ("kl", "advantage", "gated")


def _float_mask(mask_B_T: Tensor, like: Tensor) -> Tensor:
    return mask_B_T.to(dtype=like.dtype, device=like.device)


def sft_loss(logp_B_T: Tensor, mask_B_T: Tensor, *, n_tokens: float | None = None) -> Tensor:
    """Mean negative log-likelihood over the masked (assistant) tokens of the whole batch.

    A token mean rather than a sequence mean: every supervised token weighs the same, so long expert
    trajectories are not down-weighted. With no masked token the loss is 0 (graph kept).

    ``n_tokens``: divide by this count instead of the batch's own, when the batch is one micro-batch of a
    larger step: the micro-batches' losses (and gradients) then add up to the step's token mean.
    """
    mask = _float_mask(mask_B_T, logp_B_T)
    return -(logp_B_T * mask).sum() / (mask.sum().clamp(min=1.0) if n_tokens is None else n_tokens)


#: how ``group_advantages`` scales a group's centred rewards
ADVANTAGE_SCALES = ("std", "none")


def group_advantages(rewards: Tensor, eps: float = 1e-6, *, scale: str = "std") -> Tensor:
    """GRPO advantages Â_i = (R_i − mean R) / (std R + eps) over the last axis (a group of K rollouts).

    ``rewards`` is ``[K]`` (or ``[..., K]``: several groups at once). The std is the sample
    (unbiased, K − 1) one. A group whose rewards are all equal, or that has a single rollout, gets
    zeros: it carries no preference, and float rounding must not turn it into noise.

    ``scale="none"`` keeps R_i − mean R (the Dr. GRPO variant, not the paper's): a group whose rewards
    differ by 0.01 then pushes 1/100 as hard as one that differs by 1, instead of as hard.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    import torch

    out_dtype = torch.promote_types(rewards.dtype, torch.float32)
    rewards = rewards.double()  # a group with a tiny spread loses digits in float32 (r - mean is small)
    k = rewards.shape[-1]
    if k < 2:
        return torch.zeros_like(rewards, dtype=out_dtype)
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, unbiased=True, keepdim=True)
    flat = (rewards == rewards[..., :1]).all(dim=-1, keepdim=True)
    centred = rewards - mean
    scaled = centred / (std + eps) if scale == "std" else centred
    return torch.where(flat, torch.zeros_like(rewards), scaled).to(out_dtype)


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    token_weights: Tensor | None = None,
) -> Tensor:
    """PPO-style clipped surrogate with asymmetric clipping, aggregated as a sequence mean of token sums.

    Per token: u = exp(logp − old_logp) and −min(u·A, clip(u, 1 − clip_low, 1 + clip_high)·A);
    plus ``kl_coef`` × (exp(ref − logp) − (ref − logp) − 1), the low-variance (k3) estimator of
    KL(π‖π_ref), when ``ref_logp`` is given. The loss is the mean over the B sequences of each
    sequence's sum over its masked tokens (METHOD.md §4, "sequence mean of token sums"); a sequence
    with no masked token counts as 0 in the mean.

    Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask`` are ``[B, T]``; ``advantages`` is ``[B]``
    (one value per rollout) or ``[B, T]`` (per-token, e.g. ``A[:, None] + distill_advantages(...)``).
    ``token_weights`` ``[B, T]`` (constants) multiply each token's surrogate term, not the KL: the truncated
    importance weight of a sampler whose numerics differ from the learner's (``logp_check.tis_weights``).
    Gradients flow only through ``logp``; ``old_logp``, ``ref_logp`` and ``advantages`` are constants.
    """
    import torch

    old_logp = old_logp.detach()
    adv_B_T = advantages.detach().to(logp.dtype)
    if adv_B_T.dim() == 1:
        adv_B_T = adv_B_T[:, None]
    mask_B_T = _float_mask(mask, logp)
    ratio_B_T = torch.exp(logp - old_logp)
    clipped_B_T = ratio_B_T.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token_B_T = -torch.minimum(ratio_B_T * adv_B_T, clipped_B_T * adv_B_T)
    if token_weights is not None:
        per_token_B_T = per_token_B_T * token_weights.detach().to(logp.dtype)
    if ref_logp is not None and kl_coef:
        delta_B_T = ref_logp.detach() - logp
        per_token_B_T = per_token_B_T + kl_coef * (torch.exp(delta_B_T) - delta_B_T - 1.0)
    return (per_token_B_T * mask_B_T).sum(dim=-1).mean()


def grpo_clip_fractions(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> dict[str, float]:
    """Fractions of masked tokens where the clip is active (the gradient is cut), for metrics.

    ``low``: ratio below 1 − clip_low with a negative advantage; ``high``: ratio above 1 + clip_high
    with a positive advantage. These are exactly the tokens whose surrogate term ``grpo_loss`` clips.
    """
    import torch

    with torch.no_grad():
        adv_B_T = advantages.to(logp.dtype)
        if adv_B_T.dim() == 1:
            adv_B_T = adv_B_T[:, None].expand_as(logp)
        keep_B_T = mask.bool()
        ratio_B_T = torch.exp(logp - old_logp)
        low = (ratio_B_T < 1.0 - clip_low) & (adv_B_T < 0) & keep_B_T
        high = (ratio_B_T > 1.0 + clip_high) & (adv_B_T > 0) & keep_B_T
        n = max(int(keep_B_T.sum()), 1)
        return {"low": int(low.sum()) / n, "high": int(high.sum()) / n}


def _keep_count(n: int, top_frac: float) -> int:
    """ceil(top_frac · n) with a tolerance for binary rounding (0.1 × 30 -> 3, not 4)."""
    return min(n, max(1, math.ceil(top_frac * n - 1e-9))) if n else 0


def ved_selection(student_logp: Tensor, teacher_logp: Tensor, mask: Tensor, top_frac: float = 0.1) -> Tensor:
    """The VED token mask: per row, the ceil(top_frac · n) masked tokens with the largest
    |teacher − student| (n = the row's masked tokens; ties go to the earlier token). ``[B, T]`` bool."""
    import torch

    if not 0.0 < top_frac <= 1.0:
        raise ValueError(f"top_frac must be in (0, 1], got {top_frac}")
    with torch.no_grad():
        keep_B_T = mask.bool()
        gap_B_T = (teacher_logp.detach() - student_logp.detach()).abs().float()
        # Unmasked tokens sort last; a stable descending sort keeps token order among equal gaps.
        gap_B_T = gap_B_T.masked_fill(~keep_B_T, -1.0)
        order_B_T = torch.sort(gap_B_T, dim=-1, descending=True, stable=True).indices
        counts_B = torch.tensor([_keep_count(int(n), top_frac) for n in keep_B_T.sum(dim=-1)],
                                device=mask.device)
        rank_B_T = torch.arange(mask.shape[-1], device=mask.device).expand_as(order_B_T)
        chosen_B_T = rank_B_T < counts_B[:, None]
        return torch.zeros_like(keep_B_T).scatter(-1, order_B_T, chosen_B_T)


def ved_loss(
    student_logp: Tensor,
    teacher_logp: Tensor,
    old_logp: Tensor,
    mask: Tensor,
    *,
    top_frac: float = 0.1,
    rho_max: float = 2.0,
    clamp: float = 10.0,
    token_cap: float | None = None,
) -> Tensor:
    """Visual Experience Distillation, the paper's form (METHOD.md §4): a reverse-KL pull of the
    student towards the teacher on the tokens where they disagree most.

    Value per token: ℓ = clamp(s − t, −clamp, clamp) with s, t the student's and teacher's log-probs;
    k3 = exp(−ℓ) − 1 + ℓ (≥ 0, zero where the two agree); ρ = min(exp(s − old), rho_max), the
    importance weight of the sampled token; the term is ρ·k3, capped at ``token_cap`` when given.
    Per row only the ``ved_selection`` tokens are kept; the loss is the mean over all n kept tokens.
    Rows whose mask is all zero (no bundle passed the gate) contribute nothing.

    Gradient per kept token: ∂L/∂s = ρ·ℓ / n (0 where ``token_cap`` cuts the term). It has the sign
    of s − t, so a descent step always moves the student towards the teacher, and its size is at most
    rho_max·clamp / n. Inside the clamp and below ρ's cap this is exactly what autograd gives for
    ρ·k3 with ρ carrying gradient (ρ'·k3 + ρ·k3' = ρ·ℓ). Departure from a literal autograd of that
    product: outside the clamp k3's path is cut but ρ's is not, which gives ρ·k3(±clamp), the wrong
    sign for s < t and up to e^clamp in size; at ρ's cap the product gives ρ·(1 − e^−ℓ), up to
    rho_max·e^clamp. Both are artefacts of the clamps, not a pull the method asks for, so the
    gradient is set to ρ·ℓ in every regime (a straight-through surrogate; the value is unchanged).

    Shapes: all ``[B, T]``. Gradients flow through ``student_logp`` only; the teacher and the old
    policy are constants.
    """
    import torch

    teacher_logp, old_logp = teacher_logp.detach(), old_logp.detach()
    chosen_B_T = ved_selection(student_logp, teacher_logp, mask, top_frac)
    n = chosen_B_T.sum()
    if int(n) == 0:
        return (student_logp * 0.0).sum()
    s_B_T = student_logp.detach()
    ell_B_T = (s_B_T - teacher_logp).clamp(-clamp, clamp)
    rho_B_T = torch.exp(s_B_T - old_logp).clamp(max=rho_max)
    value_B_T = rho_B_T * (torch.exp(-ell_B_T) - 1.0 + ell_B_T)
    pull_B_T = rho_B_T * ell_B_T  # the per-token gradient (before the 1/n mean)
    if token_cap is not None:
        cut_B_T = value_B_T > token_cap
        value_B_T = value_B_T.clamp(max=token_cap)
        pull_B_T = pull_B_T.masked_fill(cut_B_T, 0.0)
    term_B_T = value_B_T + pull_B_T * (student_logp - s_B_T)  # value: ρ·k3; gradient: ρ·ℓ
    return term_B_T.masked_fill(~chosen_B_T, 0.0).sum() / n


def distill_advantages(
    student_logp: Tensor, teacher_logp: Tensor, mask: Tensor, *, coef: float = 1.0, clamp: float = 10.0
) -> Tensor:
    """Self-distillation as a per-token advantage: coef · clamp(teacher − student, ±clamp), detached,
    0 off the mask.

    Add it to the GRPO advantage, ``grpo_loss(logp, old, A[:, None] + distill_advantages(...), mask)``:
    a sampled token the teacher finds likelier than the student does gets pushed up, one it finds
    less likely gets pushed down. Through ``grpo_loss`` (outcome advantage 0, ratio u unclipped) a
    token's gradient is u · coef · clamp(student − teacher) / B: the sign of s − t, at most
    u · coef · clamp / B in size. The clamp (ours) bounds it as ``ved_loss``'s clamp bounds the KL
    form: a sampled token with a tiny unconstrained log-prob (common under a grammar) would otherwise
    push without limit. ``[B, T]`` in, ``[B, T]`` out; never carries gradient.
    """
    gap_B_T = (teacher_logp - student_logp).detach().clamp(-clamp, clamp)
    return coef * gap_B_T * _float_mask(mask, gap_B_T)


def gated_distill_advantages(
    student_logp: Tensor,
    teacher_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    coef: float = 0.1,
    scale: float = 1.0,
) -> Tensor:
    """A gated, bounded version of ``distill_advantages``, to add to the GRPO advantage.

    Per token: d = coef · tanh((teacher − student) / scale), kept only where d has the sign of the
    rollout's outcome advantage A (``advantages`` ``[B]``); 0 elsewhere and off the mask.

    Why this gate: naive GRPO + self-distillation was unstable in multi-turn agents (SDAR, 2026,
    cited in METHOD.md §4) because the teacher's token-level pull can outweigh, or fight, the
    outcome signal. Here the teacher can only redistribute credit *within* the direction the reward
    already chose: in a better-than-average rollout it boosts the tokens the teacher endorses most,
    in a worse one it pushes down the tokens the teacher disowns, and it never reverses the sign of
    the update. tanh bounds each token's extra advantage by ``coef``, so one token where the
    teacher's context changes the distribution a lot (an image id, a name) cannot dominate. A group
    with zero spread (A = 0) gets no distillation: there is nothing to gate on. This gate is our
    choice; SDAR's exact gate is not reproduced here.
    """
    import torch

    adv_B_1 = advantages.detach().to(student_logp.dtype)[:, None]
    d_B_T = coef * torch.tanh((teacher_logp - student_logp).detach() / scale)
    agree_B_T = (d_B_T * adv_B_1) > 0
    return d_B_T * agree_B_T.to(d_B_T.dtype) * _float_mask(mask, d_B_T)
