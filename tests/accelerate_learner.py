"""One Learner step on fixed rows, run by tests/test_evolve_accelerate.py in one process or under
``torchrun --nproc_per_node 2``. Writes the step's metrics and the updated parameters."""

from __future__ import annotations

import json
import sys

import torch


def rows():
    """Six rollouts of different lengths: a context, then assistant tokens; the teacher sees another
    context before the same assistant tokens (rows 0, 2, 3 have a bundle)."""
    from genevolve.evolve.learner import Row
    from genevolve.evolve.tokens import TokenView

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(6):
        context = torch.randint(3, 300, (5 + i,), generator=g).tolist()
        answer = torch.randint(3, 300, (4 + 2 * i,), generator=g).tolist()
        view = TokenView(context + answer, [0] * len(context) + [1] * len(answer), [(len(context), len(context) + len(answer))], [2])
        teacher = None
        if i in (0, 2, 3):
            guide = torch.randint(3, 300, (3,), generator=g).tolist() + context
            teacher = TokenView(guide + answer, [0] * len(guide) + [1] * len(answer),
                                [(len(guide), len(guide) + len(answer))], [2])
        out.append(Row(view, teacher, advantage=[1.0, -0.5, 0.3, -1.2, 0.8, -0.4][i]))
    return out


def main(out: str, accelerate: bool) -> None:
    import transformers

    from genevolve.evolve.learner import Learner
    from genevolve.evolve.model import TrainModel
    from genevolve.evolve.rl_config import EvolveConfig
    from genevolve.evolve.train_config import ModelSpec

    accelerator = None
    if accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config)

    class Tok:
        pad_token_id = 0
        eos_token_id = 1

    tm = TrainModel(model, Tok(), None, ModelSpec())
    cfg = EvolveConfig(data="unused", lr=1e-3, mini_batches=2, micro_batch=1, steps=4, kl_coef=0.0)
    learner = Learner(tm, cfg, accelerator=accelerator)
    metrics = learner.step(rows())
    if accelerator is None or accelerator.is_main_process:
        keep = {k: metrics[k] for k in ("loss", "grad_norm")} | {"processes": learner.world}
        torch.save({"metrics": keep, "params": {n: p.detach() for n, p in model.named_parameters()}}, out)
        print(json.dumps(keep))
    if accelerator is not None:  # every process waits, the group goes down and the process leaves as the CLI's do
        from genevolve.evolve.parallel import leave_launched_process

        accelerator.wait_for_everyone()
        accelerator.end_training()
        leave_launched_process(accelerator)


if __name__ == "__main__":
    main(sys.argv[1], accelerate=len(sys.argv) > 2 and sys.argv[2] == "accelerate")
