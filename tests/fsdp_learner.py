"""Two Learner steps with a checkpoint between them, run by tests/test_evolve_fsdp.py in one process or
under ``torchrun --nproc_per_node 2`` with the model sharded by FSDP (``model.fsdp``). After the first step
the learner's state is saved; a fresh learner loads it and takes the second step again, as a resumed run
would. Writes both steps' metrics, the last optimizer step's gradients, and the weights of the straight
and the resumed run (the main process, from gathered shards)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import torch

from tests.accelerate_learner import rows

#: a short collective timeout: a process left waiting in a collective fails the test instead of hanging it
TIMEOUT = timedelta(seconds=120)


def second_rows():
    """The first step's rollouts with other advantages (a second step's batch)."""
    out = rows()
    for row, adv in zip(out, [-0.7, 1.1, 0.2, 0.9, -1.3, 0.4], strict=True):
        row.advantage = adv
    return out


def main(out: str, fsdp: bool) -> None:
    """Under torchrun (``fsdp``) the run sits inside ``launched_processes`` and ends with
    ``leave_launched_process``, as the CLI's commands do (a process leaving the usual way aborted now and then
    at exit, failing the launch after a good run)."""
    import contextlib

    from genevolve.evolve.parallel import launched_processes, leave_launched_process

    with launched_processes(TIMEOUT.total_seconds()) if fsdp else contextlib.nullcontext() as accelerator:
        run(out, fsdp, accelerator)
    leave_launched_process(accelerator)


def run(out: str, fsdp: bool, accelerator) -> None:
    import transformers

    from genevolve.evolve.learner import Learner
    from genevolve.evolve.model import TrainModel
    from genevolve.evolve.rl_config import EvolveConfig
    from genevolve.evolve.sharding import trainable_state
    from genevolve.evolve.train_config import ModelSpec

    main_process = accelerator is None or accelerator.is_main_process
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    # micro_batch 1 over 6 rows in 2 mini-batches of 3: one process runs 2 passes where the other runs 1,
    # and rows 0 and 2 (process 0) but only row 3 (process 1) have a teacher; kl_coef > 0 adds the reference.
    cfg = EvolveConfig(data="unused", lr=1e-3, mini_batches=2, micro_batch=1, steps=4, kl_coef=0.1)

    class Tok:
        pad_token_id = 0
        eos_token_id = 1

    def fresh() -> tuple[TrainModel, Learner]:
        torch.manual_seed(0)
        tm = TrainModel(transformers.LlamaForCausalLM(config), Tok(), None, ModelSpec(fsdp=fsdp))
        return tm, Learner(tm, cfg, accelerator=accelerator)

    tm, learner = fresh()
    first = learner.step(rows())
    state = learner.state_dict()
    checkpoint = f"{out}.learner.pt"
    if main_process:
        torch.save(state, checkpoint)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    second = learner.step(second_rows())
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
             for n, p in tm.model.named_parameters() if p.grad is not None}
    straight = trainable_state(tm.model)
    tm2, resumed = fresh()
    resumed.load_state_dict(torch.load(checkpoint, weights_only=False))
    again = resumed.step(second_rows())
    after_resume = trainable_state(tm2.model)
    if main_process:
        keys = ("loss", "grpo_loss", "ved_loss", "grad_norm", "teacher_student_gap")
        metrics = [{k: m[k] for k in keys} for m in (first, second, again)]
        torch.save({"metrics": metrics, "processes": learner.world, "grads": grads, "params": straight,
                    "resumed": after_resume}, out)
        print(json.dumps(metrics))


if __name__ == "__main__":
    main(sys.argv[1], fsdp=len(sys.argv) > 2 and sys.argv[2] == "fsdp")
