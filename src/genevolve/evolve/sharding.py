"""Full fine-tuning sharded over the launched processes with torch's FSDP2 (``fully_shard``), for a policy
whose weights, gradients and AdamW state do not fit one GPU (an 8B model with float32 weights and Adam:
16 bytes a parameter, 128 GB). ``model.fsdp: true`` turns it on for SFT and the RL learner.

Why torch's ``fully_shard`` and not accelerate's FSDP plugin: SFT and the learner weight each micro-batch's
loss by step-wide totals and add the processes' gradients up themselves (``parallel.py``), so that processes
may hold different numbers of micro-batches; the plugin wants the model, optimizer and loss to go through
``accelerator.prepare`` and ``accelerator.backward``. accelerate still starts the process group.

What sharding changes, against the replicated processes of ``parallel.py``:

- **FSDP sums the gradients.** Each backward reduce-scatters the gradients, and FSDP divides the sum by
  the number of processes by default, which would shrink our step-wide-weighted shares N-fold.
  ``shard_model`` sets the divide factor to 1 with plain sums on the wire, so each shard holds the sum
  over processes, what ``sum_gradients`` gives unsharded (it skips sharded parameters, which it would
  otherwise reduce a second time).
- **Every process runs the same passes.** A forward all-gathers each block's weights and a backward
  reduce-scatters their gradients: collectives that every process must enter equally often. Rows and
  micro-batches are dealt round-robin, and a row without scored tokens skips its forward, so after
  each phase (old-policy scores, teacher scores, reference scores, one optimizer step's
  micro-batches) every process runs as many forwards as the busiest: ``begin_passes`` agrees on the
  count before the phase (an agreement in the middle would itself be a collective, met by another
  process's all-gather) and ``end_passes`` runs zero-weight passes on a two-token row up to it. A
  zero-weight backward adds exact zeros: the update is the one-process update.
- **State is gathered.** Checkpoints hold full tensors, written by the main process in the layout of
  an unsharded run; each process loads the file and keeps its shard. The final model folder is
  written from the gathered weights.

Vision towers stay in the root unit (not sharded block by block), so a text-only row on one process and
an image row on another still run the same collectives.
"""

from __future__ import annotations

import copy
from typing import Any

from genevolve.evolve.parallel import world_of
from genevolve.registry import ConfigError

_PASSES = "_genevolve_passes"


class _Passes:
    """Counts a sharded model's forward passes in the current phase (a forward pre-hook)."""

    def __init__(self, device: Any) -> None:
        self.n = 0
        self.target: int | None = None  # the phase's agreed number of passes (begin_passes)
        self.device = device

    def __call__(self, module: Any, args: Any) -> None:
        self.n += 1


def is_sharded(model: Any) -> bool:
    return hasattr(model, _PASSES)


def shard_units(model: Any) -> list[Any]:
    """The transformer blocks to shard one by one (the classes HF lists in ``_no_split_modules``), vision
    tower blocks excepted: those stay in the root unit, all-gathered by every forward."""
    from genevolve.evolve.model import VISION_PARTS

    classes = set(getattr(model, "_no_split_modules", None) or [])
    units = [m for name, m in model.named_modules()
             if type(m).__name__ in classes and not any(part in f".{name}." for part in VISION_PARTS)]
    if not units:
        raise ConfigError(f"model.fsdp: found no transformer blocks to shard in {type(model).__name__} "
                          f"(_no_split_modules: {sorted(classes)})")
    return units


def shard_model(model: Any, accelerator: Any, compute_dtype: str | None = None) -> Any:
    """Shard ``model`` in place over the launched processes: each block, then the root; gradients summed
    (module docstring). ``compute_dtype``: weights are all-gathered in it for forward and backward,
    while the shards (and AdamW's state) keep the model's dtype and gradients reduce in float32."""
    _, world = world_of(accelerator)
    if world < 2:
        raise ConfigError("model.fsdp shards the model over the processes that torchrun or accelerate launch "
                          "started; this run has one process (set fsdp: false, or launch several)")
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(accelerator.device.type, (world,))
    mp = MixedPrecisionPolicy()
    if compute_dtype is not None:
        mp = MixedPrecisionPolicy(param_dtype=getattr(torch, compute_dtype), reduce_dtype=torch.float32)
    for block in shard_units(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum, not FSDP's default mean
            module.set_force_sum_reduction_for_comms(True)  # SUM on the wire (gloo has no PREMUL_SUM)
    model.set_reduce_scatter_unused_params(True)  # e.g. a trainable vision tower that saw no image here
    passes = _Passes(accelerator.device)
    model.register_forward_pre_hook(passes)
    setattr(model, _PASSES, passes)
    return model


def shard_train_model(tm: Any, accelerator: Any, *, reference: bool = False) -> Any:
    """Shard ``tm.model`` as ``tm.spec`` says; call it before building the optimizer (the parameters
    become sharded ones). With ``reference``, first copy the starting weights as a frozen reference
    policy (the RL KL term), sharded the same way, and return it (else None)."""
    if tm.is_lora:
        raise ConfigError("model.fsdp shards a full fine-tune; this model carries a LoRA adapter (model.path or "
                          "evolve.init_from names an adapter folder): set fsdp: false")
    ref = copy.deepcopy(tm.model).eval().requires_grad_(False) if reference else None
    shard_model(tm.model, accelerator, tm.spec.fsdp_compute_dtype)
    if ref is not None:
        shard_model(ref, accelerator, tm.spec.fsdp_compute_dtype)
    return ref


def begin_passes(model: Any, planned: int) -> int:
    """Start a phase in which this process plans ``planned`` forward passes (at most: a row without
    scored tokens skips its forward). The processes agree on the largest plan, here at the start of the
    phase while none is inside a forward; returns it. Every process must call it at the same points,
    paired with ``end_passes``. A no-op for an unsharded model."""
    passes = getattr(model, _PASSES, None)
    if passes is None:
        return planned
    import torch
    import torch.distributed as dist

    most = torch.tensor([planned], device=passes.device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    passes.n, passes.target = 0, int(most.item())
    return passes.target


def end_passes(model: Any, pad_id: int, *, backward: bool) -> int:
    """End the phase: run zero-weight passes on a two-token row (with ``backward``: forward and backward)
    until this process has run the agreed number; returns how many it ran."""
    passes = getattr(model, _PASSES, None)
    if passes is None:
        return 0
    if passes.target is None or passes.n > passes.target:
        raise RuntimeError(f"FSDP pass balancing: {passes.n} forward passes against a plan of {passes.target} "
                           "(every forward of a sharded model must lie between begin_passes and end_passes)")
    import torch

    from genevolve.evolve.tokens import TokenView, collate, token_logps

    missing = passes.target - passes.n
    batch = collate([TokenView([pad_id, pad_id], [0, 1], [(1, 2)], [0])], pad_id)
    for _ in range(missing):
        with torch.set_grad_enabled(backward):
            logp_B_T = token_logps(model, batch)
            if backward:
                (logp_B_T.sum() * 0.0).backward()
    passes.n, passes.target = 0, None
    return missing


def is_main_process(model: Any) -> bool:
    """Whether this process writes what a sharded model gathers (always, for an unsharded one)."""
    if not is_sharded(model):
        return True
    import torch.distributed as dist

    return dist.get_rank() == 0


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: Any) -> dict[str, Any]:
    """Every weight as a full CPU tensor, gathered (every process calls it; the main one gets them)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def trainable_state(model: Any) -> dict[str, Any]:
    """The trainable weights by name, as full CPU tensors. Sharded: gathered, every process calls it and
    only the main one gets the tensors (the others an empty dict)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not is_sharded(model):
        params = dict(model.named_parameters())
        return {n: params[n].detach().cpu() for n in names}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True))
    return {n: full[n] for n in names if n in full}


def load_trainable_state(model: Any, state: dict[str, Any]) -> None:
    """Load ``trainable_state``'s output (full tensors; every process passes the whole dict)."""
    import torch

    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ValueError(f"checkpoint holds parameters this model lacks: {missing[:3]}...")
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state, options=_options(strict=False))
        return
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))


def optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """``optimizer.state_dict()``; sharded: the full state gathered, keyed by parameter name (every
    process calls it; the main one gets it)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Load ``optimizer_state``'s output; sharded, each process keeps its shard of the full state."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())
