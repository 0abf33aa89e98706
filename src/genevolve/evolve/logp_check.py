"""The sampler's log-probs against the learner's: the check every RL framework runs, and what follows from it.

A policy records, for each token it samples, its own log-prob of it (``Turn.logprobs``; ``TokenView``
lays them over the sequence as ``sampled_logps``). The learner's old-policy pass scores the same tokens
with the same weights, so the two must agree to float noise. A gap means the learner scores something
the policy did not sample, or not in the context it sampled it in (a dropped image, a re-tokenised
turn), or that the sampler's numerics differ (a bf16 inference server).

``LogpGate`` decides, step by step, what the learner does with them (``evolve.sampler_logps``):
- a check step runs the old pass and measures the gap (``logp_gap_mean``, ``logp_gap_max``, the share of
  tokens over 1e-3);
- while the last check was within tolerance, the steps between checks use the sampler's log-probs as the
  old ones and skip the pass;
- after a check beyond tolerance, every step runs the pass and treats the sampler as the behaviour
  policy: the policy-gradient term of each token is weighted by min(exp(old - sampler), cap), a truncated
  importance weight (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
  training": the rollout/training mismatch correction).

Axis letters: ``T`` token positions of one row, ``B`` rows, as in ``losses``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from genevolve.evolve.tokens import TokenView

#: the gap the "share of tokens over" metric counts
GAP_MARK = 1e-3


def sampler_logps(view: TokenView) -> Tensor | None:
    """``[T]`` the sampler's log-probs over the view (NaN where unknown), or None when it has none."""
    import torch

    if not view.sampled_logps:
        return None
    return torch.tensor(view.sampled_logps, dtype=torch.float32)


def covers(view: TokenView) -> bool:
    """Whether the sampler's log-probs are known on every token the loss scores (mask 1)."""
    if not view.sampled_logps:
        return False
    return all(not math.isnan(x) for x, m in zip(view.sampled_logps, view.mask, strict=True) if m)


@dataclass
class GapStats:
    """|learner − sampler| over the scored tokens where both are known; sums, so processes can add them."""

    total: float = 0.0
    largest: float = 0.0
    over: int = 0
    tokens: int = 0

    def add(self, learner_T: Tensor, sampler_T: Tensor, mask_T: Tensor) -> None:
        import torch

        known_T = mask_T.bool() & ~torch.isnan(sampler_T)
        gap = (learner_T[known_T] - sampler_T[known_T]).abs()
        self.total += float(gap.sum())
        self.largest = max(self.largest, float(gap.max())) if gap.numel() else self.largest
        self.over += int((gap > GAP_MARK).sum())
        self.tokens += int(gap.numel())

    def metrics(self) -> dict[str, float | int | None]:
        if not self.tokens:
            return {"logp_gap_mean": None, "logp_gap_max": None, "logp_gap_frac_over_1e-3": None,
                    "logp_gap_tokens": 0}
        return {"logp_gap_mean": self.total / self.tokens, "logp_gap_max": self.largest,
                "logp_gap_frac_over_1e-3": self.over / self.tokens, "logp_gap_tokens": self.tokens}


class LogpGate:
    """Whether this step runs the old-policy pass, and whether the sampler is the behaviour policy.

    ``reuse``: the last check agreed within ``tolerance``, so until the next check (every ``check_every``
    calls of ``plan``) the sampler's log-probs stand in for the pass. A run's first step always checks;
    the state goes into checkpoints, so a resumed run checks on the same steps as an uninterrupted one."""

    def __init__(self, *, reuse: bool, tolerance: float, check_every: int) -> None:
        self.reuse, self.tolerance, self.check_every = reuse, tolerance, check_every
        self.agreed: bool | None = None  # the last check's verdict (None: no check yet)
        self.calls = 0
        self.last_pass_seconds = 0.0

    def plan(self, all_covered: bool) -> bool:
        """True: this step may skip the old pass and use the sampler's log-probs (every scored token has
        one, the last check agreed, no check is due). False: run the pass and compare what is known."""
        due = self.calls % self.check_every == 0
        self.calls += 1
        return bool(all_covered and self.reuse and self.agreed and not due)

    def record(self, stats: GapStats) -> None:
        """A check's verdict; no comparable token leaves the verdict as it was."""
        if stats.tokens:
            self.agreed = stats.largest <= self.tolerance

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to check on the same steps and reuse on the same others."""
        return {"agreed": self.agreed, "calls": self.calls, "last_pass_seconds": self.last_pass_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agreed, self.calls = state["agreed"], state["calls"]
        self.last_pass_seconds = state["last_pass_seconds"]

    @property
    def behaviour_differs(self) -> bool:
        """The last check found the sampler's numerics apart from the learner's: correct for it."""
        return self.agreed is False


def tis_weights(old_B_T: Tensor, behaviour_B_T: Tensor, cap: float) -> Tensor:
    """min(exp(old − behaviour), cap) per token; 1 where the behaviour log-prob is unknown (NaN)."""
    import torch

    known = ~torch.isnan(behaviour_B_T)
    ratio = torch.exp(old_B_T - torch.where(known, behaviour_B_T, old_B_T)).clamp(max=cap)
    return torch.where(known, ratio, torch.ones_like(ratio)).detach()


def largest_over_processes(accelerator: Any, value: float) -> float:
    """The maximum of ``value`` over processes (itself with one)."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    import torch

    gathered = accelerator.gather(torch.tensor([value], dtype=torch.float32, device=accelerator.device))
    return float(gathered.max())
