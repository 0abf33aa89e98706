"""Typed YAML for ``genevolve evolve --config``: ``model`` (as for SFT), ``env`` and ``evolve``.

Defaults are the paper's (METHOD.md sections 3-4): K = 6 rollouts for each of 8 requests per step,
reward alpha 0.5, actor lr 1e-6 with a cosine schedule and no warm-up, clip 0.20 / 0.28, KL off
(the paper's optional beta is 1e-3), lambda_VED 2.0 on the top 10 % tokens, rho capped at 2.0, l
clamped to 10, gap 0.20, at most 8 pairs a step, memory of 500 with a 0.84 cosine gate.
Sampling during RL: temperature 0.7, top-p 0.95.

Example (the CPU world; see ``configs/world-tiny.yaml`` and docs/training.md)::

    model: {path: runs/sft-tiny/final}
    env: runs/world/config.yaml          # tools, renderer, judge: a RunConfig file (its policy is ignored)
    evolve:
      data: runs/world/rl.jsonl
      out: runs/evolve-tiny
      program_judge: {kind: world-sufficiency, world: runs/world}
      steps: 30
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from genevolve.config import BackendSpec, RunConfig
from genevolve.evolve.lora_sync import LoraSyncConfig
from genevolve.evolve.train_config import ModelSpec, _Section, env_run_config, load_sections
from genevolve.evolve.workers import PoolConfig
from genevolve.registry import ConfigError


class VEDConfig(_Section):
    """How the teacher's signal enters the loss (METHOD.md section 4)."""

    form: Literal["kl", "advantage", "gated", "none"] = Field(
        "kl", description="kl: the paper's L_GRPO + lambda * L_VED; advantage: (teacher - student) added to "
                          "each token's advantage; gated: a bounded, sign-gated version of it; none: plain GRPO")
    lam: float = Field(2.0, ge=0, description="lambda_VED, the weight of L_VED (form kl)")
    top_frac: float = Field(0.1, gt=0, le=1, description="tokens kept per row by |teacher - student|")
    rho_max: float = Field(2.0, gt=0, description="cap of the importance weight rho")
    clamp: float = Field(10.0, gt=0, description="clamp of the student - teacher gap (forms kl and advantage)")
    token_cap: float | None = Field(None, gt=0, description="cap of each token's rho * k3 (c_tok; unset in the paper)")
    coef: float = Field(1.0, ge=0, description="scale of the per-token advantage (forms advantage and gated)")


class ExperienceConfig(_Section):
    """Pair selection, extraction and memory (METHOD.md section 3)."""

    extractor: BackendSpec = Field(default_factory=lambda: BackendSpec(kind="rules"),
                                   description="rules (offline) or llm (kind: llm, model, base_url, api_key_env, ...)")
    min_gap: float = Field(0.20, ge=0, description="least best-worst reward gap for a pair")
    max_pairs: int = Field(8, ge=0, description="most pairs (bundles) per step")
    capacity: int = Field(500, ge=1, description="memory size in bundles")
    threshold: float = Field(0.84, ge=-1, le=1, description="least cosine for a bundle to reach the teacher")
    visibility: Literal["same_step", "earlier_steps"] = Field(
        "same_step", description="whether a step's teacher sees bundles extracted in that same step")
    embedder: str | None = Field(None, description="sentence-transformers model for memory keys; null: MiniLM (offline)")


class EvalConfig(_Section):
    """A fixed set of requests scored before training and every ``every`` steps (``eval.jsonl``).

    Every evaluation samples its requests with the same seeds, so two evaluations differ only by the
    policy: the curve shows learning, not which requests a training step drew. Without ``data`` the
    requests are held out of ``evolve.data`` (a seeded choice, never trained on).
    """

    every: int = Field(0, ge=0, description="steps between evaluations; 0: no evaluation")
    requests: int = Field(16, ge=1, description="requests in the evaluation set")
    k: int = Field(2, ge=1, description="rollouts per request")
    data: str | None = Field(None, description="evaluation rows (with GT images); null: hold requests out of "
                                               "evolve.data")


class SamplerLogpsConfig(_Section):
    """What the learner does with the log-probs the sampler recorded for its own tokens (``Turn.logprobs``).

    Every check step the learner's old-policy pass is compared with them token by token (``logp_gap_*`` in
    metrics.jsonl): the same weights scoring the same tokens in the same context must agree to float noise,
    so a gap names a bug (a context the policy never saw, a re-tokenisation) or a sampler with other
    numerics (a bf16 server). Within ``tolerance`` the sampler's log-probs serve as the old ones and the
    pass is skipped until the next check; beyond it they are the behaviour policy of a truncated
    importance weight on the policy-gradient term, min(exp(old - sampler), tis_cap) per token (the usual
    rollout correction for a sampler whose numerics differ from the learner's).
    """

    reuse: bool = Field(True, description="skip the old-policy pass between checks while the gap is within "
                                          "tolerance (every step checks when false)")
    tolerance: float = Field(1e-3, gt=0, description="largest |learner - sampler| log-prob gap still treated as equal")
    check_every: int = Field(10, ge=1, description="steps between checks while reusing (the first step always checks)")
    tis_cap: float = Field(2.0, ge=1, description="cap of the truncated importance weight beyond tolerance")


class RolloutConfig(_Section):
    """Where rollouts come from.

    ``learner``: the model being trained samples them in this process (CPU and single-GPU runs; the
    env's policy is ignored). ``server``: the env's policy (an ``openai`` client pointed at vLLM or
    SGLang) samples them through a worker pool (local or Ray actors); with ``lora_sync`` the learner
    publishes its LoRA adapter to the servers after every step and the workers switch to it.
    """

    backend: Literal["learner", "server"] = Field(
        "learner", description="learner: the trained model samples in this process; server: env.policy (kind "
                               "openai, pointed at vLLM or SGLang) samples through the worker pool")
    pool: PoolConfig = Field(default_factory=PoolConfig, description="the rollout workers (backend server): local "
                                                                     "or Ray, how many, Ray resources")
    lora_sync: LoraSyncConfig | None = Field(None, description="publish the LoRA adapter to the inference servers "
                                                               "after every step; null: the servers keep their weights")


class EvolveConfig(_Section):
    """The RL loop: sample -> score -> select -> extract -> score tokens -> loss -> update."""

    data: str = Field(description="training requests with GT images (GenEvolve-Bench/RL rows, e.g. a world's rl.jsonl)")
    init_from: str | None = Field(None, description="a folder written by `genevolve sft` (its final/ or a checkpoint's "
                                                    "model/): the policy starts from it, full model or LoRA adapter")
    out: str = Field("runs/evolve", description="run folder: config, trajectories, images, experience, metrics, checkpoints")
    program_judge: BackendSpec | None = Field(
        None, description="program-sufficiency judge (kind: sufficiency, or world-sufficiency); needed when alpha > 0")
    steps: int = Field(200, ge=1, description="optimizer steps (the paper: about 200)")
    requests_per_step: int = Field(8, ge=1, description="requests sampled per step, K rollouts each (the paper: 8)")
    k: int = Field(6, ge=2, description="rollouts per request")
    alpha: float = Field(0.5, ge=0, le=1, description="reward weight of the program score")
    lr: float = Field(1e-6, gt=0, description="actor learning rate (cosine decay, no warm-up)")
    warmup_frac: float = Field(0.0, ge=0, lt=1, description="share of the steps with a linear warm-up of the "
                                                             "learning rate (the paper: none)")
    min_lr_frac: float = Field(0.0, ge=0, le=1, description="where the cosine decay ends, as a share of lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float | None = Field(1.0, description="gradient norm clip per update; null: no clipping")
    clip_low: float = Field(0.2, ge=0, description="PPO ratio clip below 1 (epsilon_low; the paper: 0.20)")
    clip_high: float = Field(0.28, ge=0, description="PPO ratio clip above 1 (epsilon_high, DAPO's clip-higher; "
                                                     "the paper: 0.28)")
    kl_coef: float = Field(0.0, ge=0, description="weight of the k3 KL to the reference policy (paper option: 1e-3)")
    advantage_scale: Literal["std", "none"] = Field(
        "std", description="std: (r - mean) / std of the group (GRPO, the paper); none: r - mean only (Dr. GRPO), so "
                           "near-tied groups push less (advantages shrink to the reward scale, so kl_coef and "
                           "ved.lam weigh relatively more)")
    mask_forced: bool = Field(True, description="leave tokens a decoding grammar forced out of every loss (they had "
                                                 "no choice; rollouts record them with structured decoding)")
    mini_batches: int = Field(1, ge=1, description="optimizer updates per step, each on a share of the rollouts")
    micro_batch: int = Field(2, ge=1, description="sequences per forward pass (gradient accumulation inside an update)")
    temperature: float = Field(0.7, gt=0, description="rollout sampling temperature (log-probs use the same)")
    top_p: float = Field(0.95, gt=0, le=1, description="rollout nucleus sampling (the paper: 0.95)")
    max_new_tokens: int | None = Field(None, ge=16, description="per policy call; null: the env's agent setting")
    think_max_chars: int | None = Field(None, ge=1, description="with structured decoding: the grammar's bound on "
                                                                "<think> text; null: the grammar's default (400)")
    prompt_max_chars: int | None = Field(None, ge=1, description="with structured decoding: the grammar's bound on "
                                                                 "the answer's gen_prompt; null: the grammar's "
                                                                 "default (500). Shorter rows cost less to sample "
                                                                 "and to train on")
    concurrency: int = Field(4, ge=1, description="rollouts in flight at once; with local rollouts also the "
                                                  "generate threads sharing the model (one per core is a good "
                                                  "start, with OMP_NUM_THREADS=1 for a tiny model)")
    sample_threads: int | None = Field(
        None, ge=1, description="torch threads of each local generate thread (the learner keeps the process's "
                                "setting); a tiny model decodes several times faster with 1; null: the process's")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="where rollouts come from: the "
                                                                              "learner itself or inference servers")
    ved: VEDConfig = Field(default_factory=VEDConfig, description="how the teacher's signal enters the loss")
    sampler_logps: SamplerLogpsConfig = Field(default_factory=SamplerLogpsConfig,
                                              description="what the learner does with the sampler's log-probs")
    experience: ExperienceConfig = Field(default_factory=ExperienceConfig,
                                         description="best-worst pairs, experience extraction and memory")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="a fixed request set scored every N steps")
    save_every: int = Field(10, ge=1, description="steps between checkpoints (and one at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept; older ones are deleted")
    tensorboard: bool = Field(True, description="also write TensorBoard scalars (needs the tensorboard package)")
    seed: int = Field(0, description="request order, rollout seeds")


class EvolveFile(_Section):
    """A ``genevolve evolve --config`` file."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="the policy model to train (evolve.init_from "
                                                                   "replaces its path or adapter)")
    env: str | dict[str, Any] = Field(default_factory=dict, description="a RunConfig: tools, renderer, judge, agent "
                                                                        "budgets; a path, a mapping, or a mapping with "
                                                                        "`from: PATH` whose other keys override that file")
    evolve: EvolveConfig = Field(description="the RL loop")

    @model_validator(mode="after")
    def _consistent(self) -> EvolveFile:
        ev = self.evolve
        if ev.alpha > 0 and ev.program_judge is None:
            raise ValueError("evolve.alpha > 0 weighs the program score: set evolve.program_judge "
                             "(or alpha: 0 for an image-only reward)")
        if ev.eval.every and ev.rollout.backend == "server":
            raise ValueError("evolve.eval runs with rollout.backend 'learner' only; set eval.every: 0")
        return self

    @model_validator(mode="after")
    def _sharded_sampling(self) -> EvolveFile:
        if self.model.fsdp and self.evolve.rollout.backend == "learner":
            raise ValueError("model.fsdp needs evolve.rollout.backend: server: with `learner` the main process "
                             "samples from the policy alone, and a sharded policy needs every process in each "
                             "forward pass")
        return self

    def model_spec(self) -> ModelSpec:
        """``model``, or where ``evolve.init_from`` is set, the model that SFT wrote there."""
        if self.evolve.init_from is None:
            return self.model
        folder = Path(self.evolve.init_from)
        info_path = folder / "model.json"
        if not info_path.is_file():
            raise ConfigError(f"evolve.init_from: {folder} holds no model.json (expected a `genevolve sft` output "
                              "folder such as OUT/final); run the SFT stage first")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("kind") == "lora":
            return self.model.model_copy(update={"adapter": str(folder), "lora": None})
        return self.model.model_copy(update={"path": str(folder), "from_config": None, "adapter": None})

    def run_config(self, base: Path | None = None) -> RunConfig:
        """The environment as a RunConfig; a relative ``env`` path is read relative to ``base``."""
        cfg = env_run_config(self.env, base)
        if cfg.renderer is None or cfg.judge is None:
            raise ConfigError("evolve needs a renderer and a judge in `env` (the reward renders and judges every rollout)")
        return cfg


def load_evolve_config(path: str | Path, overrides: dict[str, Any] | None = None) -> EvolveFile:
    """Read an evolve config; ``overrides`` (e.g. ``{"evolve": {"out": ...}}``) replace keys of its sections."""
    return load_sections(EvolveFile, path, overrides, ignore=("sft",), label="evolve")
