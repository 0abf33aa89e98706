"""Training: token views of trajectories, SFT cold start, GRPO with Visual Experience Distillation.

Modules (each imports torch/transformers lazily, so ``import genevolve.evolve`` stays light):

- ``tokens``: a trajectory as model tokens with an assistant mask and per-turn spans; token log-probs.
- ``losses``: pure loss functions (``sft_loss``, ``group_advantages``, ``grpo_loss``, ``ved_loss`` and
  the distillation-as-advantage options).
- ``model``: load the policy model to train (HF folder, the embedded SmolLM2, or a tiny model from config).
- ``sft``: supervised cold start on GenEvolve-Data SFT rows (``genevolve sft --config``).
- ``workers``: ``RolloutPool``, a step's rollout groups over in-process workers or Ray actors.
- ``lora_sync``: publish each new LoRA adapter to the vLLM/SGLang servers that sample the rollouts.
"""
