"""Load the policy model to train: an HF folder or hub id, the embedded SmolLM2, or a fresh model
built from a config around a given tokenizer; optionally with a LoRA adapter (PEFT).

A tiny model trained from scratch is how learning experiments fit on a CPU: the embedded SmolLM2
tokenizer (and its chat template) with a 2–4 layer Llama learns the protocol from the offline world's
expert trajectories in minutes. Real policies load pretrained, usually with LoRA.

``save_model`` writes a folder that the rollout side loads back: the full model and tokenizer, or the
adapter (``HFPolicy(base, adapter=folder)``, ``EmbeddedPolicy(adapter=folder)``); ``model.json`` in it
says which, and from what base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genevolve.evolve.train_config import ModelSpec
from genevolve.registry import ConfigError, require

#: parameter-name fragments of vision towers (LLaVA, Qwen2/2.5/3-VL, Idefics/SigLIP-based VLMs)
VISION_PARTS = (".vision_tower.", ".visual.", ".vision_model.")
_VISION_REGEX = r".*(vision_tower|visual|vision_model).*"


@dataclass
class TrainModel:
    """The model being trained and what encodes its inputs. ``processor`` is None for text LMs."""

    model: Any
    tokenizer: Any
    processor: Any
    spec: ModelSpec

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def trainable_parameters(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def autocast(self) -> Any:
        """The mixed-precision context of ``spec.autocast`` for forward passes (a no-op when unset)."""
        import contextlib

        import torch

        if self.spec.autocast is None:
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=getattr(torch, self.spec.autocast))


def resolve_path(path: str) -> str:
    """``embedded`` -> the converted SmolLM2 folder in the cache (converting once); else unchanged."""
    if path == "embedded":
        from genevolve.policy.embedded import converted_model_dir

        return str(converted_model_dir())
    return path


def load_model(spec: ModelSpec) -> TrainModel:
    """Build the model ``spec`` describes, on its device, in train mode."""
    torch = require("torch", "local")
    transformers = require("transformers", "local")
    transformers.utils.logging.disable_progress_bar()
    if spec.lora is not None and spec.adapter is not None:
        raise ConfigError("model: set `lora` (a new adapter) or `adapter` (continue one), not both")
    spec = _adapter_folder_as_base(spec)
    device = spec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    source = resolve_path(spec.path)
    if spec.from_config is not None:
        model, tokenizer, processor = _from_config(spec, source, torch, transformers)
        model = model.to(device)
    else:
        from genevolve.policy.hf import _load

        loaded = _load(source, device=device, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code,
                       gguf_file=None)
        model, tokenizer, processor = loaded.model, loaded.tokenizer, loaded.processor
    vlm = processor is not None
    if spec.freeze_vision and vlm and spec.lora is None and spec.adapter is None:
        for name, param in model.named_parameters():
            if any(part in f".{name}" for part in VISION_PARTS):
                param.requires_grad_(False)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model = _with_adapter(model, spec, vlm)
    return TrainModel(model.train(), tokenizer, processor, spec)


def _adapter_folder_as_base(spec: ModelSpec) -> ModelSpec:
    """``path`` naming an adapter folder (an SFT run's ``final/`` with LoRA) means: its base model
    with that adapter, trained further."""
    folder = Path(spec.path)
    if not (folder / "adapter_config.json").is_file():
        return spec
    if spec.lora is not None or spec.adapter is not None or spec.from_config is not None:
        raise ConfigError(f"model.path {spec.path!r} is a LoRA adapter folder: leave lora, adapter and from_config unset")
    info = json.loads((folder / "model.json").read_text(encoding="utf-8")) if (folder / "model.json").is_file() else {}
    base = info.get("base") or json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get(
        "base_model_name_or_path")
    if not base:
        raise ConfigError(f"{folder}: the adapter does not say which base model it belongs to")
    return spec.model_copy(update={"path": base, "adapter": str(folder)})


def _from_config(spec: ModelSpec, source: str, torch: Any, transformers: Any) -> tuple[Any, Any, None]:
    settings = dict(spec.from_config or {})
    model_type = settings.pop("model_type", None)
    if not model_type:
        raise ConfigError("model.from_config needs a model_type (e.g. llama, qwen2)")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code)
    except OSError as exc:
        raise ConfigError(f"cannot load the tokenizer of {spec.path!r}: {exc}") from exc
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings.setdefault("vocab_size", len(tokenizer))
    settings.setdefault("eos_token_id", tokenizer.eos_token_id)
    settings.setdefault("bos_token_id", tokenizer.bos_token_id)
    settings.setdefault("pad_token_id", pad)
    try:
        config = transformers.AutoConfig.for_model(model_type, **settings)
        torch.manual_seed(spec.seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"model.from_config: cannot build a {model_type!r} model: {exc}") from exc
    if spec.dtype not in ("auto", "float32"):
        model = model.to(getattr(torch, spec.dtype))
    return model, tokenizer, None


def _with_adapter(model: Any, spec: ModelSpec, vlm: bool) -> Any:
    if spec.lora is None and spec.adapter is None:
        return model
    peft = require("peft", "local")
    if spec.adapter is not None:
        if not Path(spec.adapter).is_dir():
            raise ConfigError(f"model.adapter: folder {spec.adapter!r} does not exist")
        return peft.PeftModel.from_pretrained(model, spec.adapter, is_trainable=True)
    lora = spec.lora
    assert lora is not None
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, task_type="CAUSAL_LM",
                             exclude_modules=_VISION_REGEX if vlm and spec.freeze_vision else None)
    if spec.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return peft.get_peft_model(model, config)


def save_model(tm: TrainModel, folder: str | Path) -> Path:
    """Write the trained weights (adapter or full model), the tokenizer/processor and ``model.json``.
    An FSDP-sharded model is gathered first: every process calls this, and only the main one writes."""
    from genevolve.evolve.sharding import full_model_state, is_main_process, is_sharded

    folder = Path(folder)
    state = full_model_state(tm.model) if is_sharded(tm.model) else None
    if not is_main_process(tm.model):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tm.model.save_pretrained(folder, state_dict=state)
    (tm.processor if tm.processor is not None else tm.tokenizer).save_pretrained(folder)
    info = {"kind": "lora" if tm.is_lora else "full", "base": tm.spec.path,
            "from_config": tm.spec.from_config is not None}
    (folder / "model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folder
