"""Supervised cold start (METHOD.md §5): next-token loss on the assistant tokens of expert trajectories.

``run_sft(config)`` reads GenEvolve-Data SFT rows, holds out an eval split, and trains the policy
(LoRA or full) with AdamW, gradient accumulation and a cosine schedule with linear warm-up. Each
optimizer step's loss is the token mean over all assistant tokens of its micro-batches, so
accumulation gives the same update as one big batch.

Run folder (``sft.out``, laid out and resumed by ``genevolve.runfolder``): ``config.yaml`` (resolved),
``data.json`` (rows used and skipped, with reasons), ``metrics.jsonl`` (one line per step, plus eval
lines), ``checkpoints/step-NNNNNN/`` (weights, optimizer, scheduler, RNG states; NNNNNN counts the steps
done) and ``final/`` (adapter or model + tokenizer, loadable by ``HFPolicy``/``EmbeddedPolicy``). Rerunning
the same command resumes from the newest checkpoint and continues exactly as the uninterrupted run would
have: the data order is a function of (seed, epoch), the RNG states are restored, and metrics lines
written after that checkpoint are dropped so no step appears twice. A changed config is refused, except
for ``RESUMABLE_CHANGES``.

Several processes (``accelerate launch`` or ``torchrun`` ... ``genevolve sft``, given as
``accelerator``): each optimizer step's micro-batches are dealt out round-robin, each process
backpropagates its micro-batches' shares of the step-wide token mean, and the gradients are summed
(``genevolve.evolve.parallel``), so the update is the one-process update; ``grad_accum`` a multiple of
the process count keeps every process busy. The main process writes the run folder; every process resumes
from the same checkpoint. With ``model.fsdp`` the model is sharded instead (``sharding.py``): FSDP sums the
gradients, a process with fewer micro-batches in a step runs zero-weight passes so that every process runs
the same collectives, and checkpoints and ``final/`` are gathered onto the main process.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genevolve.display import Progress
from genevolve.evolve.losses import sft_loss
from genevolve.evolve.parallel import (
    process_model_spec,
    sum_gradients,
    sum_values,
    wait_for_everyone,
    world_of,
)
from genevolve.evolve.sft_data import SFTExample, load_examples, micro_batches, split
from genevolve.evolve.sharding import (
    begin_passes,
    end_passes,
    load_optimizer_state,
    load_trainable_state,
    optimizer_state,
    shard_train_model,
    trainable_state,
)
from genevolve.evolve.tokens import ChatEncoder, TokenView, collate, token_logps
from genevolve.evolve.train_config import SFTFile
from genevolve.registry import ConfigError
from genevolve.runfolder import (
    CONFIG,
    JsonlLog,
    check_config,
    latest_checkpoint,
    load_checkpoint,
    lr_schedule,
    save_checkpoint,
    save_config,
)
from genevolve.types import write_text_atomic

#: config keys that may change between a run and its resumption: they cannot change the result
#: (``max_steps`` can: the cosine schedule spans it)
RESUMABLE_CHANGES = ("sft.out", "sft.eval_every", "sft.save_every", "sft.keep_checkpoints")


@dataclass
class SFTResult:
    out: Path
    steps: int
    final: Path
    train_loss: float | None
    eval_loss: float | None
    resumed_from: int


def run_sft(cfg: SFTFile, *, fresh: bool = False, progress: bool = True, config_dir: Path | None = None,
            accelerator: Any = None) -> SFTResult:
    """Train, or resume the run in ``cfg.sft.out``; return where the final weights are. ``config_dir``:
    where a relative ``env`` path is also looked for (the config file's folder), as evolve does.
    ``accelerator``: several processes train data-parallel (module docstring)."""
    import torch

    from genevolve.evolve.model import load_model, save_model

    s = cfg.sft
    out = Path(s.out)
    rank, world = world_of(accelerator)
    main = rank == 0
    if main:
        _prepare_folder(out, cfg, fresh)
    wait_for_everyone(accelerator)
    tm = load_model(process_model_spec(cfg.model, accelerator))
    if cfg.model.fsdp:
        shard_train_model(tm, accelerator)
    sharded = cfg.model.fsdp  # then saving gathers the weights: every process takes part
    encoder = ChatEncoder(tm.tokenizer, tm.processor)
    examples, skipped = load_examples(s.data, encoder, s.max_tokens, skip_failed=s.skip_failed,
                                      system=cfg.system_prompt(config_dir))
    if not examples:
        raise ConfigError(f"no usable SFT rows in {', '.join(s.data)} ({len(skipped)} skipped; see {out / 'data.json'})")
    train, held = split(examples, s.eval_frac, s.seed)
    if main:
        _write_json(out / "data.json", {"n_train": len(train), "n_eval": len(held), "n_skipped": len(skipped),
                                        "processes": world, "eval_ids": [e.id for e in held], "skipped": skipped})
    batches = micro_batches(len(train), s.batch_size, s.epochs, s.seed)
    rows_before = [0, *itertools.accumulate(len(mb) for mb in batches)]  # rows seen after n micro-batches
    total = math.ceil(len(batches) / s.grad_accum)
    total = min(total, s.max_steps) if s.max_steps else total

    params = tm.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    scheduler = lr_schedule(optimizer, total, s.warmup_frac, s.min_lr_frac)
    random.seed(s.seed)
    torch.manual_seed(s.seed)
    start = _resume(out, tm, optimizer, scheduler)
    metrics = JsonlLog(out / "metrics.jsonl") if main else None
    if metrics is not None:
        metrics.keep_steps(start)  # lines written after the checkpoint: those steps run again

    def view_of(example: SFTExample) -> TokenView:
        if example.has_images and encoder.accepts_images:  # pixels were dropped after the first pass
            return encoder.view_sft_row(example.row, example.root, system=example.system)
        return example.view

    train_loss = eval_loss = None
    with Progress(progress and main) as display:
        bar = display.task("sft", total=total, completed=start)
        for step in range(start, total):
            t0 = time.perf_counter()
            step_batches = batches[step * s.grad_accum:(step + 1) * s.grad_accum]
            # this process's micro-batches get full views (pixels); the others only count tokens
            step_views = [[view_of(train[i]) if m % world == rank else train[i].view for i in mb]
                          for m, mb in enumerate(step_batches)]
            lr = scheduler.get_last_lr()[0]
            train_loss, grad_norm, n_tokens, context_loss = _train_step(
                tm, step_views, s.max_grad_norm, optimizer, params,
                context=(s.context_loss, s.context_frac, s.seed * 1_000_003 + step), accelerator=accelerator)
            scheduler.step()
            seconds = time.perf_counter() - t0
            done = step + 1
            if metrics is not None:
                metrics.append({"step": done, "kind": "train", "loss": train_loss,
                               **({"context_loss": context_loss} if context_loss is not None else {}),
                               "lr": lr, "grad_norm": grad_norm, "tokens": n_tokens,
                               "epoch": round(rows_before[min(done * s.grad_accum, len(batches))] / len(train), 4),
                               "seconds": round(seconds, 3), "tokens_per_s": round(n_tokens / seconds, 1)})
            if held and (done % s.eval_every == 0 or done == total):
                eval_loss = evaluate(tm, [view_of(e) for e in held[rank::world]], s.batch_size, accelerator)
                if metrics is not None:
                    metrics.append({"step": done, "kind": "eval", "eval_loss": eval_loss})
            if (main or sharded) and (done % s.save_every == 0 or done == total):
                _save(out, done, tm, optimizer, scheduler, s.keep_checkpoints, main)
            display.advance(bar, info=f"loss {train_loss:.4f}"
                            + (f" · eval {eval_loss:.4f}" if eval_loss is not None else ""))
    final = out / "final"
    if main or sharded:
        final = save_model(tm, final)
    wait_for_everyone(accelerator)
    return SFTResult(out, total, final, train_loss, eval_loss, start)


def _train_step(tm: Any, step_views: list[list[TokenView]], max_grad_norm: float | None,
                optimizer: Any, params: list[Any], context: tuple[float, float, int] = (0.0, 0.0, 0),
                accelerator: Any = None) -> tuple[float, float, int, float | None]:
    """One optimizer step over several micro-batches; the loss is the token mean over all of them.

    ``context = (weight, frac, seed)``: with weight > 0, each micro-batch also scores a seeded
    sample of ``frac`` of its positions on context tokens (requests, tool responses, the prompt),
    shared by its rows so the output layer sees only those, and adds ``weight`` × their token-mean
    NLL. Returns (assistant NLL, grad norm, assistant tokens, context NLL or None).

    With several processes each runs micro-batches ``rank, rank + world, ...`` (every process sees all
    of the step's views, to count the totals that weight the shares); gradients and losses are summed."""
    import torch

    rank, world = world_of(accelerator)
    weight, frac, seed = context
    n_tokens = sum(v.n_assistant_tokens for views in step_views for v in views)
    batches, context_masks = [], []
    for micro, views in enumerate(step_views):
        batch = collate(views, tm.pad_id)
        ctx_B_T = None
        if weight > 0:
            picked_T = torch.rand(batch.mask_B_T.shape[1], generator=torch.Generator().manual_seed(seed * 1009 + micro))
            ctx_B_T = (batch.attention_B_T.bool() & ~batch.mask_B_T.bool() & (picked_T < frac)[None, :]).long()
            ctx_B_T[:, 0] = 0  # the first token has no context to be predicted from
        batches.append(batch)
        context_masks.append(ctx_B_T)
    n_context = sum(int(m.sum()) for m in context_masks if m is not None)
    total, context_total = 0.0, 0.0
    begin_passes(tm.model, len(range(rank, len(batches), world)))  # FSDP: sharding.py
    for micro, (batch, ctx_B_T) in enumerate(zip(batches, context_masks, strict=True)):
        if micro % world != rank:
            continue
        mask_B_T = batch.mask_B_T
        if ctx_B_T is not None:
            batch.mask_B_T = mask_B_T | ctx_B_T  # one forward scores both kinds of position
        with tm.autocast():
            logp_B_T = token_logps(tm.model, batch)
        loss = sft_loss(logp_B_T, mask_B_T, n_tokens=n_tokens)  # this micro-batch's share of the step's mean
        total += float(loss.detach())
        if ctx_B_T is not None and n_context:
            ctx_loss = sft_loss(logp_B_T, ctx_B_T, n_tokens=n_context)
            context_total += float(ctx_loss.detach())
            loss = loss + weight * ctx_loss
        loss.backward()
    end_passes(tm.model, tm.pad_id, backward=True)  # FSDP: zero-weight passes up to the busiest process's count
    sum_gradients(accelerator, params)
    total, context_total = sum_values(accelerator, [total, context_total])
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, float(norm), n_tokens, (context_total if weight > 0 else None)


def evaluate(tm: Any, views: list[TokenView], batch_size: int, accelerator: Any = None) -> float:
    """Token-mean NLL of the assistant tokens of ``views`` (no gradient); with several processes, of all
    processes' views together."""
    import torch

    was_training = tm.model.training
    tm.model.eval()
    n_tokens = max(sum_values(accelerator, [sum(v.n_assistant_tokens for v in views)])[0], 1)
    nll = 0.0
    begin_passes(tm.model, math.ceil(len(views) / batch_size))  # FSDP: sharding.py
    with torch.no_grad():
        for i in range(0, len(views), batch_size):
            batch = collate(views[i:i + batch_size], tm.pad_id)
            with tm.autocast():
                logp_B_T = token_logps(tm.model, batch)
            nll += float(sft_loss(logp_B_T, batch.mask_B_T, n_tokens=n_tokens))
        end_passes(tm.model, tm.pad_id, backward=False)
    tm.model.train(was_training)
    return sum_values(accelerator, [nll])[0]


# -- run folder -------------------------------------------------------------------------------------


def _snapshot(cfg: SFTFile) -> dict[str, Any]:
    return json.loads(cfg.model_dump_json())


def _prepare_folder(out: Path, cfg: SFTFile, fresh: bool) -> None:
    """Save the resolved config; refuse to resume a run whose result-changing settings differ."""
    if fresh:
        for name in ("checkpoints", "final"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    elif latest_checkpoint(out) is not None:
        check_config(out / CONFIG, _snapshot(cfg), command="SFT", resumable=RESUMABLE_CHANGES,
                     normalise=lambda saved: _snapshot(SFTFile.model_validate(saved)),
                     hint="rerun with --fresh, or choose another --out")
    save_config(out, _snapshot(cfg))


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _save(out: Path, step: int, tm: Any, optimizer: Any, scheduler: Any, keep: int, main: bool) -> None:
    """A checkpoint after ``step`` steps. A sharded model's weights and optimizer state are gathered first
    (every process calls this; the main one writes)."""
    from genevolve.evolve.model import save_model

    state = {"trainable": trainable_state(tm.model), "optimizer": optimizer_state(tm.model, optimizer),
             "scheduler": scheduler.state_dict()}
    save_checkpoint(out, step, state, keep=keep, write_model=lambda folder: save_model(tm, folder), main=main)


def _resume(out: Path, tm: Any, optimizer: Any, scheduler: Any) -> int:
    """Load the newest checkpoint into the live objects (and the RNG states); return its step (0 if none)."""
    folder = latest_checkpoint(out)
    if folder is None:
        return 0
    state = load_checkpoint(folder)
    load_trainable_state(tm.model, state["trainable"])
    load_optimizer_state(tm.model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])
