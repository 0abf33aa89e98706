"""Typed YAML sections for training: ``model`` (what to train) and ``sft`` (the cold start).

Example ``sft.yaml`` (a 2-layer Llama trained from scratch with the embedded SmolLM2 tokenizer)::

    model:
      path: embedded
      from_config: {model_type: llama, num_hidden_layers: 2, hidden_size: 128, intermediate_size: 256,
                    num_attention_heads: 4, num_key_value_heads: 2}
    sft:
      data: [runs/world/sft.jsonl]
      out: runs/sft-tiny
      lr: 1.0e-3

And the paper's setting on a real policy, a full fine-tune sharded over 8 GPUs: ``model: {path:
Qwen/Qwen3-VL-8B-Instruct, lora: null, fsdp: true, dtype: float32, fsdp_compute_dtype: bfloat16, device:
cuda}`` with the ``sft`` defaults (lr 1e-5, cosine, 2 % warm-up, 2 epochs); docs/training.md, "Full
fine-tuning sharded with FSDP".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genevolve.config import RunConfig, load_config, read_yaml
from genevolve.registry import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSpec(_Section):
    """A PEFT LoRA adapter on the policy; only the adapter's weights train and get saved."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | str = Field(
        "all-linear", description="module names to adapt, or 'all-linear' (every linear layer but the output head)")


class ModelSpec(_Section):
    """The policy model to train, and how."""

    path: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct, converted into $GENEVOLVE_CACHE), "
                                              "a local HF folder, or a hub id")
    from_config: dict[str, Any] | None = Field(
        None, description="train from scratch: HF config keys of a text LM (model_type first, e.g. "
                          "{model_type: llama, num_hidden_layers: 2, hidden_size: 128}); only the tokenizer of "
                          "`path` is used, and its size and special ids fill the config")
    lora: LoraSpec | None = Field(None, description="train a LoRA adapter; null: full fine-tune")
    adapter: str | None = Field(None, description="a LoRA adapter folder to start from (trained further)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype; auto: float32 on CPU, the checkpoint's dtype on accelerators")
    device: str = Field("cpu", description="cpu, cuda, cuda:N, mps, or auto (cuda when available)")
    trust_remote_code: bool = Field(False, description="allow model code shipped with the checkpoint")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, ~30 % slower")
    freeze_vision: bool = Field(True, description="VLMs: keep the vision tower frozen (the paper does)")
    seed: int = Field(0, description="seed of the random initialisation for from_config")
    fsdp: bool = Field(False, description="full fine-tune sharded over the launched processes with torch FSDP2: "
                                          "each GPU holds 1/N of the weights, gradients and AdamW state (an 8B "
                                          "policy needs it); needs several processes (torchrun or accelerate "
                                          "launch) and lora: null (genevolve.evolve.sharding)")
    fsdp_compute_dtype: Literal["bfloat16", "float32"] | None = Field(
        None, description="with fsdp: forward and backward in this dtype while the sharded weights and AdamW "
                          "state keep `dtype` (set dtype: float32 with bfloat16 here: at lr 1e-6 most updates "
                          "are below bfloat16's resolution); null: compute in `dtype`")

    autocast: Literal["bfloat16", "float16"] | None = Field(
        None, description="mixed precision: forward and backward under torch.autocast in this dtype, while weights, "
                          "gradients and AdamW state keep `dtype`. On a CPU with bfloat16 instructions (avx512_bf16, "
                          "AMX) a SmolLM2 SFT step runs about 2x faster (benchmarks/sft_speed.py). SFT only: "
                          "log-probs carry bfloat16 rounding (~1e-2 nats), which RL's learner-sampler check refuses")

    @model_validator(mode="after")
    def _sharding(self) -> ModelSpec:
        if self.fsdp and (self.lora is not None or self.adapter is not None):
            raise ValueError("model.fsdp shards a full fine-tune; LoRA (lora or adapter) is not supported with it "
                             "(an 8B model with LoRA fits one GPU unsharded)")
        if self.autocast is not None and self.fsdp:
            raise ValueError("model.autocast does not combine with fsdp: set model.fsdp_compute_dtype instead")
        if self.fsdp_compute_dtype is not None and not self.fsdp:
            raise ValueError("model.fsdp_compute_dtype applies with fsdp: true only")
        return self


class SFTConfig(_Section):
    """Supervised cold start on GenEvolve-Data SFT rows; defaults are the paper's (METHOD.md §5)."""

    data: list[str] = Field(description="SFT row files (.jsonl/.parquet) or folders of them, e.g. a world's DIR/sft.jsonl")
    out: str = Field("runs/sft", description="run folder: config, metrics.jsonl, checkpoints/, final/")
    epochs: float = Field(2.0, gt=0, description="passes over the training split (fractions allowed)")
    lr: float = Field(1e-5, gt=0, description="peak learning rate (paper: 1e-5 for an 8B policy; tiny models from "
                                              "scratch want ~1e-3)")
    warmup_frac: float = Field(0.02, ge=0, lt=1, description="fraction of steps of linear warm-up before the cosine decay")
    min_lr_frac: float = Field(0.0, ge=0, le=1, description="the cosine decays to lr × this")
    batch_size: int = Field(1, ge=1, description="trajectories per forward pass (micro-batch)")
    grad_accum: int = Field(8, ge=1, description="micro-batches per optimizer step; step batch = batch_size × grad_accum")
    skip_failed: bool = Field(True, description="skip rows marked \"ok\": false (expert rollouts without a valid program)")
    max_tokens: int = Field(8192, ge=16, description="longer trajectories are skipped (counted in data.json), never cut")
    eval_frac: float = Field(0.05, ge=0, lt=1, description="held-out fraction of rows for the eval loss")
    eval_every: int = Field(50, ge=1, description="optimizer steps between eval losses (and one at the end)")
    save_every: int = Field(100, ge=1, description="optimizer steps between checkpoints (and one at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float | None = Field(1.0, description="gradient clipping norm; null: no clipping")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (smoke runs)")
    seed: int = Field(0, description="data order, eval split and dropout")
    context_loss: float = Field(
        0.0, ge=0, description="weight of an auxiliary next-token loss on context tokens (requests, tool responses); "
                               "for policies trained from scratch, which must learn to copy names from the request "
                               "and tool results into their calls: tool responses echo the policy's own queries, so "
                               "predicting them teaches copying. 0: the paper's assistant-only loss")
    context_frac: float = Field(0.25, gt=0, le=1, description="fraction of positions, sampled per micro-batch, that the "
                                                             "context loss scores (it bounds the output layer's cost)")
    system: Literal["row", "env"] = Field(
        "row", description="the system message trained on: each row's own, or `env`: the prompt the rollout agent "
                           "of this file's `env` section shows (its tools, budgets and prompt style), so the cold "
                           "start matches what evolve and bench run with")


def env_run_config(env: str | dict[str, Any] | None, base: Path | None = None) -> RunConfig:
    """A training file's ``env`` section as a RunConfig: a path, a mapping, or a mapping with ``from: PATH``
    whose other keys override that file; a relative path is read relative to ``base`` when not found."""
    env = {"from": env} if isinstance(env, str) else dict(env or {})
    source = env.pop("from", None)
    path = None
    if source is not None:
        path = Path(source)
        if base is not None and not path.is_absolute() and not path.exists():
            path = base / path
    return load_config(path, env)


class SFTFile(_Section):
    """A ``genevolve sft --config`` file."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    env: str | dict[str, Any] | None = Field(None, description="the rollout environment (as in evolve files); "
                                                               "read only for `sft.system: env`")
    sft: SFTConfig

    def system_prompt(self, base: Path | None = None) -> str | None:
        """The system message every row is trained with, or None to keep each row's own."""
        if self.sft.system == "row":
            return None
        if self.env is None:
            raise ConfigError("sft.system: env needs an `env` section (the rollout environment) in the same file")
        from genevolve.agent import agent_system_prompt
        from genevolve.tools import build_tools

        cfg = env_run_config(self.env, base)
        tools = build_tools(search=cfg.search, image_search=cfg.image_search, knowledge=cfg.knowledge,
                            download=cfg.download)
        return agent_system_prompt(tools, cfg.agent)


def load_sections(cls: type[_Section], path: str | Path, overrides: dict[str, Any] | None, *,
                  ignore: tuple[str, ...], label: str) -> Any:
    """Validate a training YAML as ``cls``: sections named in ``ignore`` belong to the other stage (one
    file may configure both, e.g. configs/world-tiny.yaml); ``overrides`` replace keys of sections."""
    data = read_yaml(path)
    for section in ignore:
        data.pop(section, None)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {label} config {path}: {exc}") from exc


def load_sft_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SFTFile:
    """Read an SFT config; ``overrides`` (e.g. ``{"sft": {"out": ...}}``) replace keys of its sections."""
    return load_sections(SFTFile, path, overrides, ignore=("evolve",), label="SFT")
