"""Data parallelism over processes started by ``accelerate launch`` or ``torchrun``, shared by SFT and the
RL learner.

Every process holds the whole model (``model.fsdp`` shards it instead: ``sharding.py``). Each computes the
gradient of its part of a step's loss, already weighted by step-wide totals, so the step's gradient is the
plain sum over processes (``sum_gradients``); logged sums are added up the same way (``sum_values``). Summing
by hand rather than through a DDP wrapper lets processes hold different numbers of micro-batches in a step.
With no accelerator, or one process, every helper is the identity.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any


def launched_accelerator(timeout_s: float = 7200.0) -> Any:
    """An ``Accelerator`` when ``accelerate launch`` or ``torchrun`` started several processes, else None.

    ``timeout_s`` bounds a collective: in RL the other processes wait in one while the main one samples.
    Without CUDA the processes join over gloo on the CPU (accelerate needs ``cpu=True`` for that; its own
    ``launch --cpu`` starts a single process, so on CPUs start them with ``torchrun --nproc_per_node N``).
    Raises when the processes did not join one group: they would otherwise each train alone and write
    the same run folder."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    from datetime import timedelta

    import torch
    from accelerate import Accelerator, InitProcessGroupKwargs

    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))])
    if accelerator.num_processes != world:
        raise RuntimeError(f"WORLD_SIZE is {world} but accelerate set up {accelerator.num_processes} process(es) "
                           f"({accelerator.distributed_type}); start the processes with accelerate launch or torchrun")
    return accelerator


@contextlib.contextmanager
def launched_processes(timeout_s: float = 7200.0) -> Iterator[Any]:
    """``launched_accelerator()`` for the duration of a command; on the way out every process waits for the
    others (when the command succeeded) and the process group is taken down, so no process exits with
    collective threads still running (which aborts it)."""
    accelerator = launched_accelerator(timeout_s)
    try:
        yield accelerator
        wait_for_everyone(accelerator)
    finally:
        if accelerator is not None:
            accelerator.end_training()


def leave_launched_process(accelerator: Any) -> None:
    """End this process of a multi-process launch, once ``launched_processes`` has taken the group down and
    the command's output is written: Python's exit handlers run and the streams are flushed, then the
    process exits with status 0 without running C++ static destructors. A process that exits the usual way
    now and then aborts in those destructors (SIGABRT, "terminate called without an active exception", with
    no Python frame left: a distributed-runtime thread still joinable while its peers are still connected),
    and torchrun then reports a finished, saved run as failed. Nothing happens without an accelerator."""
    if accelerator is None:
        return
    import atexit
    import logging
    import sys

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def process_model_spec(spec: Any, accelerator: Any) -> Any:
    """``spec`` on this process's own accelerator device (one GPU a process); CPU specs are left as they are.
    A sharded model (``fsdp``) loads in CPU memory (``dtype: auto`` is then float32) and ``fully_shard`` moves
    each process's shard to its GPU, so no GPU ever holds the whole model."""
    if accelerator is None or spec.device == "cpu":
        return spec
    if spec.fsdp:
        return spec.model_copy(update={"device": "cpu"})
    return spec.model_copy(update={"device": str(accelerator.device)})


def world_of(accelerator: Any) -> tuple[int, int]:
    """(this process's index, number of processes)."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def sum_gradients(accelerator: Any, params: Iterable[Any]) -> None:
    """Replace each parameter's gradient by its sum over processes (a missing gradient counts as zeros).
    Parameters sharded by FSDP (``sharding.py``, DTensors) are left alone: FSDP's reduce-scatter already
    summed their gradients, and summing again would multiply them by the number of processes."""
    if world_of(accelerator)[1] == 1:
        return
    import torch
    from torch.distributed.tensor import DTensor

    for param in params:
        if isinstance(param, DTensor):
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        param.grad = accelerator.reduce(param.grad, reduction="sum")


def sum_values(accelerator: Any, values: Sequence[float]) -> list[float]:
    """``values`` added up element-wise over processes (float64), on every process."""
    if world_of(accelerator)[1] == 1:
        return [float(v) for v in values]
    import torch

    local = torch.tensor([float(v) for v in values], dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(local, reduction="sum").tolist()


def wait_for_everyone(accelerator: Any) -> None:
    if world_of(accelerator)[1] > 1:
        accelerator.wait_for_everyone()
