"""The learner side of a GRPO + VED step: score tokens (no grad), then the loss and the update.

Rows are rollouts ready for the loss: the student's token view, the teacher's view of the same
conversation under the decision-guide system prompt (``None`` without a bundle), and the rollout's
group advantage. Everything here is one model's numerics, so student, teacher, old and reference
log-probs are comparable (DESIGN.md: the teacher pass runs in the learner, not the server).

Order within ``Learner.step(rows)``:

1. ``score``: old-policy log-probs of every row, teacher log-probs of the rows with a bundle, and
   reference log-probs when the KL term is on. The reference is the policy the run started from
   (full fine-tune: a frozen copy made at start; LoRA: the adapter weights at start, swapped in for
   the pass, which is the SFT adapter a run initialised from one, and the base model for a fresh
   adapter). All no-grad, in micro-batches.
2. ``update``: the rows are split into ``mini_batches`` shares, one optimizer step each; inside a
   share, micro-batches accumulate gradients. Each micro-batch's loss is weighted so that the
   accumulated gradient equals that of the share's loss computed at once: GRPO's "sequence mean of
   token sums" by rows, VED's "mean over kept tokens" by kept tokens (how many a row keeps depends
   only on its length, so the share's total is known before the first forward).
With one mini-batch the policy being updated is the old policy, so the ratio is 1 and nothing is
clipped; more mini-batches make the later ones off-policy, which the clip then bounds.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from genevolve.evolve import losses
from genevolve.evolve.logp_check import (
    GapStats,
    LogpGate,
    covers,
    largest_over_processes,
    sampler_logps,
    tis_weights,
)
from genevolve.evolve.model import TrainModel
from genevolve.evolve.parallel import sum_gradients, sum_values, world_of
from genevolve.evolve.rl_config import EvolveConfig
from genevolve.evolve.sharding import (
    begin_passes,
    end_passes,
    load_optimizer_state,
    load_trainable_state,
    optimizer_state,
    shard_train_model,
    trainable_state,
)
from genevolve.evolve.tokens import TokenView, collate, teacher_logps, token_logps
from genevolve.runfolder import lr_schedule


@dataclass
class Row:
    """One sequence to train on. ``weight``: its share of a rollout, 1 unless the rollout's contexts
    needed several sequences (``ChatEncoder.views``): GRPO's sequence mean then counts the rollout once."""

    view: TokenView
    teacher: TokenView | None
    advantage: float
    weight: float = 1.0


@dataclass
class Scored:
    """Per-row no-grad log-probs, each ``[len(view)]`` in the student's layout (0 off the mask)."""

    old: list[Any]
    teacher: list[Any | None]
    ref: list[Any | None]
    seconds: dict[str, float]
    disagreement: float | None = None  # mean |teacher - student| over the assistant tokens of rows with a bundle
    behaviour: list[Any | None] = field(default_factory=list)  # the sampler's log-probs, where they differ
    logp: dict[str, Any] = field(default_factory=dict)  # the learner-sampler gap check (logp_check)


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _pad(rows: Sequence[Any], t: int, fill: float = 0.0) -> Any:
    import torch

    out = torch.full((len(rows), t), fill, dtype=torch.float32)
    for b, x in enumerate(rows):
        if x is not None:
            out[b, : x.shape[0]] = x
    return out


class Learner:
    """Owns the optimizer and schedule of an RL run over ``tm``'s trainable parameters."""

    def __init__(self, tm: TrainModel, cfg: EvolveConfig, *, accelerator: Any = None) -> None:
        import torch

        self.tm, self.cfg = tm, cfg
        self.accelerator = accelerator
        self.rank, self.world = world_of(accelerator)
        # model.fsdp: shard here, before the optimizer sees the parameters; the KL reference is copied
        # from the starting weights first and sharded the same way (sharding.py)
        self.sharded = tm.spec.fsdp
        sharded_reference = shard_train_model(tm, accelerator, reference=cfg.kl_coef > 0) if self.sharded else None
        params = tm.trainable_parameters()
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = lr_schedule(self.optimizer, cfg.steps * cfg.mini_batches, cfg.warmup_frac, cfg.min_lr_frac)
        lp = cfg.sampler_logps
        self.gate = LogpGate(reuse=lp.reuse, tolerance=lp.tolerance, check_every=lp.check_every)
        self.reference = None
        self.reference_weights: dict[str, Any] | None = None
        if cfg.kl_coef > 0 and tm.is_lora:
            self.reference_weights = {n: p.detach().clone() for n, p in tm.model.named_parameters() if p.requires_grad}
        elif cfg.kl_coef > 0:
            self.reference = (sharded_reference if sharded_reference is not None
                              else copy.deepcopy(tm.model).eval().requires_grad_(False))

    # -- scoring ------------------------------------------------------------------------------------

    def _logps(self, model: Any, views: Sequence[TokenView]) -> list[Any]:
        import torch

        out: list[Any] = []
        chunks = _chunks(len(views), self.cfg.micro_batch)
        begin_passes(model, len(chunks))  # FSDP: every process runs as many forwards as the busiest (sharding.py)
        with torch.no_grad():
            for chunk in chunks:
                batch = collate([views[i] for i in chunk], self.tm.pad_id)
                scored = token_logps(model, batch, temperature=self.cfg.temperature).cpu()
                out += [scored[j, : len(views[i])] for j, i in enumerate(chunk)]
            end_passes(model, self.tm.pad_id, backward=False)
        return out

    def local(self, n: int) -> list[int]:
        """The row indices this process scores and trains on (all of them in a single process)."""
        return list(range(self.rank, n, self.world))

    def score(self, rows: Sequence[Row]) -> Scored:
        import torch

        model = self.tm.model
        model.eval()
        mine = self.local(len(rows))
        t0 = time.perf_counter()
        old, behaviour, logp_metrics = self._old_logps(rows, mine)
        t1 = time.perf_counter()
        teacher: list[Any | None] = [None] * len(rows)
        # every process scores (FSDP: each takes part in the teacher passes, sharding.py)
        mine_teacher = teacher_logps(lambda views: self._logps(model, views), [rows[i].view for i in mine],
                                     [rows[i].teacher for i in mine])
        for i, t_logp in zip(mine, mine_teacher, strict=True):
            teacher[i] = t_logp
        with_bundle = [i for i in mine if teacher[i] is not None]
        t2 = time.perf_counter()
        gaps = [(teacher[i] - old[i]).abs()[torch.tensor(rows[i].view.mask, dtype=torch.bool)] for i in with_bundle]
        gap_sum, gap_n = sum_values(self.accelerator, [sum(float(g.sum()) for g in gaps), sum(g.numel() for g in gaps)])
        disagreement = gap_sum / gap_n if gap_n else None  # over every process's rows
        ref: list[Any | None] = [None] * len(rows)
        if self.cfg.kl_coef > 0:
            if self.reference is not None:
                scored_ref = self._logps(self.reference, [rows[i].view for i in mine])
            else:
                with self._reference_adapter():
                    scored_ref = self._logps(model, [rows[i].view for i in mine])
            for i, logp in zip(mine, scored_ref, strict=True):
                ref[i] = logp
        seconds = {"old": t1 - t0, "teacher": t2 - t1, "reference": time.perf_counter() - t2}
        if logp_metrics["logp_reused"]:
            seconds["old_saved"] = self.gate.last_pass_seconds
        else:
            self.gate.last_pass_seconds = t1 - t0
        return Scored(old, teacher, ref, seconds, disagreement, behaviour, logp_metrics)

    def _old_logps(self, rows: Sequence[Row], mine: list[int]) -> tuple[list[Any], list[Any | None], dict[str, Any]]:
        """The old policy's log-probs of this process's rows: the learner's own pass, checked against the
        sampler's log-probs, or (while they agree, between checks) the sampler's. Also the behaviour
        log-probs for the truncated importance weight (only after a check found the two apart) and the
        gap metrics. Every decision is taken from all processes' rows, so all processes run the same passes."""
        import torch

        uncovered = sum_values(self.accelerator, [sum(not covers(rows[i].view) for i in mine)])[0]
        sampled = {i: sampler_logps(rows[i].view) for i in mine}
        old: list[Any] = [None] * len(rows)
        if self.gate.plan(all_covered=uncovered == 0):
            for i in mine:
                old[i] = torch.nan_to_num(sampled[i], nan=0.0) * torch.tensor(rows[i].view.mask)
            return old, [None] * len(rows), {"logp_reused": True}
        stats = GapStats()
        for i, logp in zip(mine, self._logps(self.tm.model, [rows[i].view for i in mine]), strict=True):
            old[i] = logp
            if sampled[i] is not None:
                stats.add(logp, sampled[i], torch.tensor(rows[i].view.mask))
        stats.total, stats.over, stats.tokens = sum_values(self.accelerator, [stats.total, stats.over, stats.tokens])
        stats.tokens, stats.over = int(stats.tokens), int(stats.over)
        stats.largest = largest_over_processes(self.accelerator, stats.largest)
        self.gate.record(stats)
        behaviour = [sampled.get(i) if self.gate.behaviour_differs else None for i in range(len(rows))]
        return old, behaviour, {"logp_reused": False, **stats.metrics()}

    @contextlib.contextmanager
    def _reference_adapter(self) -> Any:
        """The LoRA weights the run started from, in place of the current ones, for the duration."""
        import torch

        assert self.reference_weights is not None
        params = dict(self.tm.model.named_parameters())
        current = {n: params[n].detach().clone() for n in self.reference_weights}
        with torch.no_grad():
            for name, value in self.reference_weights.items():
                params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in current.items():
                    params[name].copy_(value)

    # -- the update ---------------------------------------------------------------------------------

    def step(self, rows: Sequence[Row]) -> dict[str, Any]:
        """Score, then update; returns the step's learner metrics."""
        scored = self.score(rows)
        metrics = self.update(rows, scored)
        metrics["seconds"] = {**scored.seconds, **metrics.pop("seconds")}
        metrics["teacher_student_gap"] = scored.disagreement
        metrics.update(scored.logp)
        if any(r.teacher is not None for r in rows) and metrics["seconds"]["update"]:  # steps with bundles only
            metrics["teacher_cost_ratio"] = scored.seconds["teacher"] / metrics["seconds"]["update"]
        return metrics

    def update(self, rows: Sequence[Row], scored: Scored) -> dict[str, Any]:
        import torch

        cfg, model = self.cfg, self.tm.model
        model.train()
        sums = {"loss": 0.0, "grpo": 0.0, "ved": 0.0, "clip_low": 0.0, "clip_high": 0.0, "tokens": 0}
        grad_norms: list[float] = []
        t0 = time.perf_counter()
        order = list(range(len(rows)))
        shares = [order[i::cfg.mini_batches] for i in range(cfg.mini_batches)]
        for share in (s for s in shares if s):
            self.optimizer.zero_grad(set_to_none=True)
            kept_total = sum(self._kept(rows[i]) for i in share)
            mine = [i for i in share if i % self.world == self.rank]
            begin_passes(model, len(_chunks(len(mine), cfg.micro_batch)))  # FSDP: agree on the passes (sharding.py)
            for chunk in _chunks(len(mine), cfg.micro_batch):
                idx = [mine[j] for j in chunk]
                parts = self._micro_loss(rows, scored, idx, sum(rows[i].weight for i in share), kept_total)
                parts["loss"].backward()
                for key in ("grpo", "ved", "clip_low", "clip_high"):
                    sums[key] += float(parts[key])
                sums["loss"] += float(parts["loss"].detach())
                sums["tokens"] += int(parts["tokens"])
            end_passes(model, self.tm.pad_id, backward=True)  # FSDP: zero-weight passes up to the agreed count
            sum_gradients(self.accelerator, self.tm.trainable_parameters())
            if cfg.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(self.tm.trainable_parameters(), cfg.max_grad_norm)
                grad_norms.append(float(norm))
            self.optimizer.step()
            self.scheduler.step()
        model.eval()
        seconds = time.perf_counter() - t0
        keys = sorted(sums)
        sums = dict(zip(keys, sum_values(self.accelerator, [sums[k] for k in keys]), strict=True))
        sums["tokens"] = int(sums["tokens"])
        n_shares = sum(1 for s in shares if s)
        n_rows = max(len(rows), 1)
        return {
            "loss": sums["loss"] / n_shares, "grpo_loss": sums["grpo"] / n_shares, "ved_loss": sums["ved"] / n_shares,
            "clip_frac_low": sums["clip_low"] / n_rows, "clip_frac_high": sums["clip_high"] / n_rows,
            "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else None,
            "lr": self.scheduler.get_last_lr()[0], "assistant_tokens": sums["tokens"],
            "tokens_per_s": sums["tokens"] / seconds if seconds else 0.0,
            "seconds": {"update": seconds},
        }

    def _kept(self, row: Row) -> int:
        """Tokens VED keeps in this row (0 without a bundle, or when VED is not the kl form). The count
        depends only on the row's assistant tokens, so every process knows every row's."""
        if self.cfg.ved.form != "kl" or row.teacher is None:
            return 0
        import torch

        mask = torch.tensor(row.view.mask)[None]
        zeros = torch.zeros(mask.shape)
        return int(losses.ved_selection(zeros, zeros, mask, self.cfg.ved.top_frac).sum())

    def _micro_loss(self, rows: Sequence[Row], scored: Scored, idx: list[int], share_rows: float,
                    kept_total: int) -> dict[str, Any]:
        import torch

        cfg, ved = self.cfg, self.cfg.ved
        views = [rows[i].view for i in idx]
        batch = collate(views, self.tm.pad_id)
        t = batch.mask_B_T.shape[1]
        logp_B_T = token_logps(self.tm.model, batch, temperature=cfg.temperature)
        mask_B_T = batch.mask_B_T.to(logp_B_T.device).float()
        old_B_T = _pad([scored.old[i] for i in idx], t).to(logp_B_T.device)
        has_teacher_B = torch.tensor([scored.teacher[i] is not None for i in idx], device=logp_B_T.device)
        teacher_B_T = _pad([scored.teacher[i] for i in idx], t).to(logp_B_T.device)
        ved_mask_B_T = mask_B_T * has_teacher_B[:, None].float()
        adv_B = torch.tensor([rows[i].advantage for i in idx], dtype=torch.float32, device=logp_B_T.device)
        adv: Any = adv_B
        if ved.form == "advantage":
            adv = adv_B[:, None] + losses.distill_advantages(old_B_T, teacher_B_T, ved_mask_B_T, coef=ved.coef,
                                                             clamp=ved.clamp)
        elif ved.form == "gated":
            adv = adv_B[:, None] + losses.gated_distill_advantages(old_B_T, teacher_B_T, adv_B, ved_mask_B_T,
                                                                   coef=ved.coef)
        ref_B_T = None
        if cfg.kl_coef > 0:
            ref_B_T = _pad([scored.ref[i] for i in idx], t).to(logp_B_T.device)
        weights_B_T = None
        if scored.behaviour and any(scored.behaviour[i] is not None for i in idx):
            behaviour_B_T = _pad([scored.behaviour[i] for i in idx], t, fill=math.nan).to(logp_B_T.device)
            weights_B_T = tis_weights(old_B_T, behaviour_B_T, cfg.sampler_logps.tis_cap)
        grpo = losses.grpo_loss(logp_B_T, old_B_T, adv, mask_B_T, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                ref_logp=ref_B_T, kl_coef=cfg.kl_coef, token_weights=weights_B_T) * (len(idx) / share_rows)
        loss = grpo
        ved_part = torch.zeros((), device=logp_B_T.device)
        if ved.form == "kl" and ved.lam > 0 and kept_total > 0:
            kept_here = int(losses.ved_selection(logp_B_T, teacher_B_T, ved_mask_B_T, ved.top_frac).sum())
            if kept_here:
                ved_part = losses.ved_loss(logp_B_T, teacher_B_T, old_B_T, ved_mask_B_T, top_frac=ved.top_frac,
                                           rho_max=ved.rho_max, clamp=ved.clamp,
                                           token_cap=ved.token_cap) * (kept_here / kept_total)
                loss = loss + ved.lam * ved_part
        fractions = losses.grpo_clip_fractions(logp_B_T, old_B_T, adv, mask_B_T, clip_low=cfg.clip_low,
                                               clip_high=cfg.clip_high)
        return {"loss": loss, "grpo": grpo.detach(), "ved": ved_part.detach(),
                "clip_low": fractions["low"] * len(idx), "clip_high": fractions["high"] * len(idx),
                "tokens": int(mask_B_T.sum())}

    # -- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Trainable weights, optimizer and schedule. Sharded (FSDP): gathered into full tensors, so every
        process must call it, and only the main process gets the weights and optimizer state."""
        return {"trainable": trainable_state(self.tm.model), "optimizer": optimizer_state(self.tm.model, self.optimizer),
                "scheduler": self.scheduler.state_dict(), "logp_gate": self.gate.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``state_dict``'s output, on every process (sharded: each keeps its shard)."""
        load_trainable_state(self.tm.model, state["trainable"])
        load_optimizer_state(self.tm.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "logp_gate" in state:  # checkpoints written before the gate existed start it unsure
            self.gate.load_state_dict(state["logp_gate"])
