"""Token views in batches, and the log-probs the losses use.

Views are built by ``genevolve.policy.chat_tokens`` (re-exported here): the same encoder the local
policy generates from, so the learner scores what was sampled, in the context it was sampled in.

The teacher of Visual Experience Distillation scores the *student's* assistant tokens under another
system prompt: ``with_system`` builds that conversation, ``aligned_positions`` pairs the two views'
assistant tokens (asserting they are the same ids) and ``teacher_logps`` returns teacher log-probs in
the student's layout (the learner's ``score`` runs it).

Axis letters: ``B`` sequences, ``T`` token positions (right-padded), ``V`` vocabulary, ``P`` scored
positions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genevolve.policy.chat_tokens import (  # noqa: F401  (the encoder's names, for the training code)
    END_OF_TURN_CANDIDATES,
    ChatEncoder,
    TokenView,
    TokenViewError,
    with_system,
)

if TYPE_CHECKING:
    from torch import Tensor


# -- batches and log-probs -----------------------------------------------------------------------


@dataclass
class TokenBatch:
    """Right-padded tensors for several views: ``input_ids_B_T``, ``attention_B_T``, ``mask_B_T``
    and the model's extra inputs (pixel tensors concatenated over the batch)."""

    input_ids_B_T: Any
    attention_B_T: Any
    mask_B_T: Any
    extra: dict[str, Any]
    lengths: list[int]


def collate(views: Sequence[TokenView], pad_id: int) -> TokenBatch:
    import torch

    if not views:
        raise ValueError("collate needs at least one view")
    t = max(len(v) for v in views)
    ids = torch.full((len(views), t), pad_id, dtype=torch.long)
    attention = torch.zeros((len(views), t), dtype=torch.long)
    mask = torch.zeros((len(views), t), dtype=torch.long)
    for b, v in enumerate(views):
        ids[b, : len(v)] = torch.tensor(v.input_ids, dtype=torch.long)
        attention[b, : len(v)] = 1
        mask[b, : len(v)] = torch.tensor(v.mask, dtype=torch.long)
    extra: dict[str, Any] = {}
    for key in {k for v in views for k in v.extra}:
        values = [v.extra.get(key) for v in views]
        sample = next(x for x in values if x is not None)
        if key.endswith("_ids") and sample.dim() == 2:
            padded = torch.zeros((len(views), t), dtype=sample.dtype)
            for b, x in enumerate(values):
                if x is not None:
                    padded[b, : x.shape[1]] = x[0]
            extra[key] = padded
        else:
            extra[key] = torch.cat([x for x in values if x is not None], dim=0)
    return TokenBatch(ids, attention, mask, extra, [len(v) for v in views])


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def token_logps(model: Any, batch: TokenBatch, *, temperature: float = 1.0) -> Tensor:
    """log π(token_t | tokens_<t) for every masked token, as ``[B, T]`` (0 where the mask is 0).

    Differentiable: wrap in ``torch.no_grad()`` for old-policy and teacher passes. Only the
    positions that predict a masked token go through the output layer (``logits_to_keep``), which
    keeps the ``[B, P, V]`` logits far smaller than ``[B, T, V]`` on long tool-response contexts.
    ``temperature`` divides the logits, for scoring samples drawn at that temperature.
    """
    import torch

    param = next(model.parameters())
    mask_B_T = batch.mask_B_T.to(param.device)
    ids_B_T = batch.input_ids_B_T.to(param.device)
    targets_P = mask_B_T[:, 1:].any(dim=0).nonzero().flatten()  # position p predicts token p + 1
    logp_B_T = torch.zeros(mask_B_T.shape, dtype=torch.float32, device=param.device)
    if targets_P.numel() == 0:
        return logp_B_T.requires_grad_(torch.is_grad_enabled())  # nothing to score; backward still works
    extra = {k: v.to(param.device, dtype=param.dtype) if v.is_floating_point() else v.to(param.device)
             for k, v in batch.extra.items()}
    kw: dict[str, Any] = {"logits_to_keep": targets_P} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=ids_B_T, attention_mask=batch.attention_B_T.to(param.device), use_cache=False,
                   **extra, **kw).logits
    logits_B_P_V = logits if kw else logits[:, targets_P]
    logits_B_P_V = logits_B_P_V.float() / temperature
    next_B_P = ids_B_T[:, targets_P + 1]
    picked_B_P = logits_B_P_V.gather(-1, next_B_P[..., None]).squeeze(-1) - logits_B_P_V.logsumexp(-1)
    logp_B_T = logp_B_T.index_copy(1, targets_P + 1, picked_B_P)
    return logp_B_T * mask_B_T


def aligned_positions(student: TokenView, teacher: TokenView) -> tuple[list[int], list[int]]:
    """Positions of the assistant tokens in each view, paired in order. The two views must hold the
    same assistant token ids (the teacher re-scores the student's own tokens); anything else raises."""
    s_pos = [t for t, m in enumerate(student.mask) if m]
    t_pos = [t for t, m in enumerate(teacher.mask) if m]
    if [student.input_ids[t] for t in s_pos] != [teacher.input_ids[t] for t in t_pos]:
        raise TokenViewError("student and teacher views differ in their assistant tokens; the teacher "
                             "context may only change the system message")
    return s_pos, t_pos


def teacher_logps(score: Callable[[list[TokenView]], list[Tensor]], students: Sequence[TokenView],
                  teachers: Sequence[TokenView | None]) -> list[Tensor | None]:
    """Teacher log-probs of the students' assistant tokens, each ``[len(student)]`` in the student's layout
    (0 off its mask).

    ``teachers[b]`` is student b's conversation under the teacher's system prompt, or None for a row
    without an experience bundle (its entry is None: such rows add no distillation signal).
    ``score(views)`` returns each view's no-grad log-probs ``[len(view)]`` (``token_logps`` in micro-batches:
    the learner's own pass); it is called once, with the teacher views, even when there are none, so that
    every process of a sharded model runs its passes.
    """
    import torch

    rows = [b for b, v in enumerate(teachers) if v is not None]
    scored = score([teachers[b] for b in rows])  # type: ignore[misc]
    out: list[Tensor | None] = [None] * len(students)
    for b, t_logp in zip(rows, scored, strict=True):
        s_pos, t_pos = aligned_positions(students[b], teachers[b])  # type: ignore[arg-type]
        out[b] = torch.zeros(len(students[b]), dtype=torch.float32)
        out[b][s_pos] = t_logp[t_pos].float()  # type: ignore[index]
    return out
