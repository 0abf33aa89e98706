"""A local transformers policy: text LMs and VLMs, optionally with a PEFT LoRA adapter.

Why the choices below:

- ``model.generate`` blocks, so it runs on a private thread pool of ``max_concurrency`` workers:
  the event loop keeps serving tools while the model decodes, and queued calls wait in the pool's
  queue rather than in the shared default executor that tool I/O also uses.
- On a CPU the prompt's forward pass dominates a turn and a decode step costs about the same for 8 rows
  as for 1. ``kv_cache_tokens`` keeps KV states across calls (``kv_cache.PrefixCache``: a turn computes
  only what follows the longest stored prefix); ``batching`` sends concurrent calls to one worker that
  decodes them as rows of a batch (``batching.DecodeBatcher``). Both are for text-only models; both keep
  the sampled ids (up to float rounding) because every row keeps its own processors and generator.
- Sampling draws from a per-call ``torch.Generator`` inside a logits processor (:class:`SeededSampler`)
  and lets ``generate`` run greedily over the masked scores. The usual ``manual_seed`` on the global
  RNG would make a seeded call depend on whatever other threads sample meanwhile; this way a seed
  gives the same text whatever runs concurrently. Temperature and top-p are applied there; top-k and
  other sampling defaults from the model's ``generation_config`` are not (``Sampling`` has no top-k).
- ``dtype="auto"`` means float32 on CPU (bf16 matmuls are slow or unsupported on many CPUs) and the
  checkpoint's own dtype on accelerators.
- Constraints: the hook ``logits_processor_factory(constraint, tokenizer)`` returns a logits
  processor applied before sampling, or ``None`` when it cannot enforce that kind. Without a hook
  every constraint raises ``UnsupportedConstraint``. A processor with a ``forced_bytes`` list (bytes the
  grammar forced before each token, as llguidance's records) makes ``areply`` report the forced spans.
- torch/transformers/peft are imported only when a policy is built (``pip install 'genevolve[local]'``).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genevolve.policy.base import Constraint, Policy, PolicyError, Reply, Sampling, UnsupportedConstraint
from genevolve.policy.batching import DecodeBatcher, batchable
from genevolve.policy.chat_tokens import ChatEncoder, decode_exact
from genevolve.policy.kv_cache import (
    PrefixCache,
    cache_for,
    layers_of,
    supports_prefix_cache,
    weights_version,
)
from genevolve.policy.messages import DEFAULT_MAX_SIDE, to_hf_messages
from genevolve.registry import ConfigError, require
from genevolve.types import Turn

DTYPES = ("auto", "float32", "bfloat16", "float16")
#: ``(constraint, tokenizer) -> LogitsProcessor | None``; ``None`` means "cannot enforce this kind".
LogitsProcessorFactory = Callable[[Constraint, Any], Any]


class SeededSampler:
    """Logits processor that samples one token with its own generator and masks all others to -inf.

    Placed last in the processor list of a greedy ``generate``, it makes the greedy pick equal to a
    temperature/top-p sample that depends only on ``seed`` and the scores.
    """

    def __init__(self, temperature: float, top_p: float, seed: int) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self._generator: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._generator is None:
            self._generator = torch.Generator(device=scores.device)
            self._generator.manual_seed(self.seed)
        out_B_V = torch.full_like(scores, float("-inf"))
        for b in range(scores.shape[0]):
            # Only tokens a constraint left finite can be drawn: under a grammar that is often a handful,
            # so sorting and sampling over them is far cheaper than over the whole vocabulary.
            cand_C = torch.isfinite(scores[b]).nonzero().flatten()
            if cand_C.numel() == 0:  # a grammar that allows nothing, or non-finite logits: fail this call
                raise PolicyError("no token can be sampled: every score is -inf or NaN after the logits "
                                  "processors (a grammar that allows no token, or a model producing NaN)")
            probs_C = torch.softmax(scores[b, cand_C].float() / self.temperature, dim=-1)
            sorted_C, order_C = probs_C.sort(descending=True)
            cum_C = sorted_C.cumsum(dim=-1)
            if self.top_p < 1.0:
                keep = int(((cum_C - sorted_C) < self.top_p).sum())  # the top token always stays
                cum_C = cum_C[:keep]
            # inverse-CDF draw: one uniform number per step, from this call's own generator
            u = torch.rand((), generator=self._generator, device=scores.device) * cum_C[-1]
            j = int(torch.searchsorted(cum_C, u, right=True).clamp(max=cum_C.numel() - 1))
            out_B_V[b, cand_C[order_C[j]]] = 0.0
        return out_B_V


def _torch_dtype(torch: Any, dtype: str, device: str) -> Any:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}; expected one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float32 if device.startswith("cpu") else "auto"
    return getattr(torch, dtype)


@dataclass(frozen=True)
class Loaded:
    """A model in memory with its tokenizer and processor (None for text-only models): what ``HFPolicy``
    builds from a path, or takes as it is (``HFPolicy.from_objects``). ``label`` names it by default."""

    model: Any
    tokenizer: Any
    processor: Any
    label: str


def _load(source: str, *, device: str, dtype: str, trust_remote_code: bool, gguf_file: str | None) -> Loaded:
    """Load the model, its tokenizer and its processor from ``source`` onto ``device``."""
    torch = require("torch", "local")
    transformers = require("transformers", "local")
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    try:
        if gguf_file:  # GGUF checkpoints are text-only and carry their tokenizer
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, **kw)
            processor = None
            kw["gguf_file"] = gguf_file
        else:
            try:  # returns the bare tokenizer for text-only models
                processor = transformers.AutoProcessor.from_pretrained(source, **kw)
            except (ValueError, KeyError, TypeError):
                processor = transformers.AutoTokenizer.from_pretrained(source, **kw)
            tokenizer = getattr(processor, "tokenizer", processor)
            if getattr(processor, "image_processor", None) is None:
                processor = None
        auto = (
            transformers.AutoModelForImageTextToText
            if processor is not None
            else transformers.AutoModelForCausalLM
        )
        model = auto.from_pretrained(source, dtype=_torch_dtype(torch, dtype, device), **kw)
    except OSError as exc:
        raise ConfigError(f"cannot load HF policy model {source!r}: {exc}") from exc
    return Loaded(model.to(device), tokenizer, processor, source)


@dataclass
class _Call:
    """One prepared call: what ``generate`` (or the batcher) decodes from, and how."""

    inputs: Any  # BatchFeature on the model's device
    processors: Any  # LogitsProcessorList: the constraint's processor, then the sampler
    proc: Any  # the constraint's processor (it records forced spans), or None
    max_new: int
    temperature: float  # of Reply.logprobs (1 for greedy)
    cacheable: bool  # token inputs only: the prefix cache and the batcher apply
    ids: list[int] = field(init=False)  # the prompt's ids

    def __post_init__(self) -> None:
        self.ids = self.inputs["input_ids"][0].tolist()


class HFPolicy(Policy):
    """Generate with a local transformers model.

    Args:
        model: hub id or local folder (or the folder holding ``gguf_file``), or a ``Loaded`` model in memory
            (what ``from_objects`` passes).
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto`` (cuda when available).
        dtype: ``auto`` (see module docstring), ``float32``, ``bfloat16`` or ``float16``.
        adapter: folder of a PEFT LoRA adapter to apply on top of the model.
        accepts_images: feed images to the model; ``None`` = yes iff the checkpoint has an image processor.
        max_concurrency: ``generate`` calls running at once (threads sharing one model); with ``batching``, the
            rows of the one batch.
        trust_remote_code: allow model code from the checkpoint.
        gguf_file: GGUF file name inside ``model`` (text LMs only; dequantised on load).
        name: label for trajectories; default ``hf:<model>``.
        max_image_side: long-side cap, in pixels, for images given to the processor.
        logits_processor_factory: constraint hook (see module docstring).
        structured: decode under the protocol grammar with llguidance (what the agent uses by default
            then; configs can say ``policy: {kind: hf, model: DIR, structured: true}``).
        think_max_chars: with ``structured``, the grammar's bound on ``<think>`` text (default 400).
        prompt_max_chars: with ``structured``, the grammar's bound on the answer's ``gen_prompt`` (default 500).
        torch_threads: torch's intra-op threads in each generate thread (None: the process's setting). A
            tiny model decodes several times faster with 1: its matmuls are too small to split, and
            split work waits on busy cores.
        kv_cache_tokens: token budget of the prefix cache of KV states kept across calls (0: off). A turn then
            computes only the part of its prompt no stored prompt shares: the previous turn's reply and the
            tool's response, not the whole conversation. Text-only models with full attention; memory is
            about ``2 * layers * kv_heads * head_dim * 4`` bytes a token in float32 (46 KB for SmolLM2-135M).
            Emptied when the weights change. See ``genevolve.policy.kv_cache``.
        batching: decode up to ``max_concurrency`` concurrent calls as rows of one batch, instead of one
            ``generate`` per thread (text-only models with full attention). Same seed, same draws, up to
            float rounding. See ``genevolve.policy.batching``.
    """

    torch_threads: int | None = None

    logits_processor_factory: LogitsProcessorFactory | None = None

    def __init__(
        self,
        model: str | Path | Loaded,
        device: str = "cpu",
        dtype: str = "auto",
        adapter: str | Path | None = None,
        accepts_images: bool | None = None,
        max_concurrency: int = 1,
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        name: str | None = None,
        max_image_side: int = DEFAULT_MAX_SIDE,
        logits_processor_factory: LogitsProcessorFactory | None = None,
        structured: bool = False,
        think_max_chars: int | None = None,
        prompt_max_chars: int | None = None,
        torch_threads: int | None = None,
        kv_cache_tokens: int = 0,
        batching: bool = False,
    ) -> None:
        if structured and logits_processor_factory is not None:
            raise ConfigError("structured=True brings its own logits_processor_factory (llguidance); "
                              "pass one or the other")
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be >= 1")
        if kv_cache_tokens < 0:
            raise ConfigError("kv_cache_tokens must be >= 0 (0 turns the prefix cache off)")
        if isinstance(model, Loaded):
            loaded = model
        else:
            if device == "auto":
                device = "cuda" if require("torch", "local").cuda.is_available() else "cpu"
            loaded = _load(str(model), device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                           gguf_file=gguf_file)
        name = name or f"hf:{loaded.label}"
        if structured:
            from genevolve.policy.guided import llguidance_factory

            logits_processor_factory = llguidance_factory
            self.prefers_structured = True
        if think_max_chars is not None:
            self.think_max_chars = think_max_chars
        if prompt_max_chars is not None:
            self.prompt_max_chars = prompt_max_chars
        self.torch_threads = torch_threads
        vlm = loaded.processor is not None
        if accepts_images and not vlm:
            raise ConfigError(f"{name}: accepts_images=True but the model has no image processor (not a VLM)")
        model_obj = loaded.model
        if adapter is not None:
            peft = require("peft", "local")
            if not Path(adapter).is_dir():
                raise ConfigError(f"{name}: LoRA adapter folder {str(adapter)!r} does not exist")
            model_obj = peft.PeftModel.from_pretrained(model_obj, str(adapter))
        self.model = model_obj.eval()
        self.tokenizer = loaded.tokenizer
        self.processor = loaded.processor  # None for text-only models
        self.accepts_images = vlm if accepts_images is None else accepts_images
        self.encoder = ChatEncoder(self.tokenizer, self.processor, accepts_images=self.accepts_images,
                                   max_image_side=max_image_side)
        self.name = name
        self.adapter = str(adapter) if adapter is not None else None
        self.max_image_side = max_image_side
        if logits_processor_factory is not None:
            self.logits_processor_factory = logits_processor_factory
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_concurrency, thread_name_prefix="hf-policy"
        )
        text_only = self.processor is None
        self._kv = (PrefixCache(kv_cache_tokens) if kv_cache_tokens and text_only and supports_prefix_cache(self.model)
                    else None)
        self._batcher = None
        if batching and max_concurrency > 1 and text_only and batchable(self.model):
            self._batcher = DecodeBatcher(self.model, end_ids=self._end_ids(), max_batch=max_concurrency,
                                          prefix_cache=self._kv, torch_threads=torch_threads)

    @property
    def kv_cache(self) -> PrefixCache | None:
        """The prefix cache (None when off); ``kv_cache.stats`` says how many prompt tokens it saved."""
        return self._kv

    @classmethod
    def from_objects(cls, model: Any, tokenizer: Any = None, processor: Any = None, **options: Any) -> HFPolicy:
        """Wrap an already-built model with its tokenizer and/or processor (tests, training loops).
        ``options`` are the constructor's (``name``, ``adapter``, ``structured``, ``max_concurrency``, ...);
        those that load a model (``device``, ``dtype``, ``trust_remote_code``, ``gguf_file``) do not apply."""
        loading = sorted(set(options) & {"device", "dtype", "trust_remote_code", "gguf_file"})
        if loading:
            raise TypeError(f"HFPolicy.from_objects: {', '.join(loading)} only apply when loading a model")
        if tokenizer is None and processor is None:
            raise ConfigError("HFPolicy.from_objects needs a tokenizer or a processor")
        tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", processor)
        if processor is not None and getattr(processor, "image_processor", None) is None:
            processor = None
        label = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
        self = cls.__new__(cls)
        HFPolicy.__init__(self, Loaded(model, tokenizer, processor, label), **options)  # not a subclass's loader
        return self

    # -- prompt ---------------------------------------------------------------------------------

    def _messages(self, turns: list[Turn]) -> tuple[list[dict[str, Any]], list[Any]]:
        messages, images = to_hf_messages(
            turns, accepts_images=self.accepts_images, max_side=self.max_image_side
        )
        if self.processor is not None and not self.accepts_images:
            # A VLM used text-only: its chat template still expects content parts.
            messages = [
                {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages
            ]
        return messages, images

    def format_prompt(self, turns: list[Turn]) -> str:
        """The exact prompt text the model continues (chat template + generation prompt)."""
        messages, _ = self._messages(turns)
        owner = self.processor if self.processor is not None else self.tokenizer
        return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, turns: list[Turn]) -> Any:
        """Model inputs (``input_ids``, ``attention_mask``, pixel tensors for VLMs) for ``turns``, on CPU:
        what ``achat`` generates from. Built by ``ChatEncoder.prompt``, the encoder a learner's token views
        use, so earlier assistant turns appear as the ids they were sampled as."""
        import torch
        from transformers import BatchFeature

        view = self.encoder.prompt(turns)
        ids = torch.tensor([view.input_ids], dtype=torch.long)
        return BatchFeature({"input_ids": ids, "attention_mask": torch.ones_like(ids), **view.extra})

    # -- generation -----------------------------------------------------------------------------

    async def achat(
        self, turns: list[Turn], *, sampling: Sampling, constraint: Constraint | None = None
    ) -> str:
        return (await self.areply(turns, sampling=sampling, constraint=constraint)).text

    async def areply(
        self, turns: list[Turn], *, sampling: Sampling, constraint: Constraint | None = None
    ) -> Reply:
        if constraint is not None and self.logits_processor_factory is None:
            raise UnsupportedConstraint(
                f"{self.name}: no logits_processor_factory to enforce {constraint.kind!r}"
            )
        if self._executor is None:
            raise RuntimeError(f"{self.name} is closed")
        job = functools.partial(self._generate, turns, sampling, constraint)
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    def _generate(self, turns: list[Turn], sampling: Sampling, constraint: Constraint | None) -> Reply:
        import torch

        if self.torch_threads is not None and torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)  # per thread: this generate thread only
        call = self._prepare(turns, sampling, constraint)
        if self._batcher is not None and call.cacheable:
            new_ids, logprobs = self._batcher.submit(call.ids, call.processors, call.max_new, call.temperature).result()
        else:
            new_ids, logprobs = self._run_generate(call)
        return self._reply(call, new_ids, logprobs)

    def _prepare(self, turns: list[Turn], sampling: Sampling, constraint: Constraint | None) -> _Call:
        """The call's model inputs, its logits processors (constraint, then sampler) and token budget."""
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList()
        proc: Any = None
        if constraint is not None:
            assert self.logits_processor_factory is not None
            proc = self.logits_processor_factory(constraint, self.tokenizer)
            if proc is None:
                raise UnsupportedConstraint(f"{self.name}: cannot enforce {constraint.kind!r} constraints")
            processors.append(proc)
        if sampling.temperature > 0:
            seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
            processors.append(SeededSampler(sampling.temperature, sampling.top_p, seed))
        param = next(self.model.parameters())
        inputs = self.encode(turns)
        if self.processor is not None:  # pixel tensors in the model's dtype (bf16 towers reject fp32)
            inputs = inputs.to(device=param.device, dtype=param.dtype)
        else:
            inputs = inputs.to(param.device)
        n_prompt = int(inputs["input_ids"].shape[1])
        limit = self.context_limit()
        if limit is not None and n_prompt >= limit:
            raise PolicyError(f"{self.name}: the conversation is {n_prompt} tokens, beyond the model's context "
                              f"of {limit}; shorten the request or lower the agent's budgets")
        max_new = sampling.max_tokens if limit is None else min(sampling.max_tokens, limit - n_prompt)
        # the prefix cache and the batcher hold token states only: no pixel inputs, no VLM position schemes
        cacheable = self.processor is None and set(inputs) == {"input_ids", "attention_mask"}
        return _Call(inputs, processors, proc, max_new, sampling.temperature or 1.0, cacheable)

    def _run_generate(self, call: _Call) -> tuple[list[int], list[float]]:
        """One ``generate`` for one call, from the prefix cache's longest matching entry when there is one."""
        import torch

        kwargs: dict[str, Any] = {"max_new_tokens": call.max_new, "do_sample": False}
        pad_id = self.tokenizer.pad_token_id
        kwargs["pad_token_id"] = pad_id if pad_id is not None else self.tokenizer.eos_token_id
        if getattr(self.model.generation_config, "eos_token_id", None) is None:
            kwargs["eos_token_id"] = self.tokenizer.eos_token_id  # else it would always run to max_tokens
        kv = self._kv if call.cacheable else None
        version = None
        if kv is not None:
            version = weights_version(self.model)
            kv.check_weights(version)
            hit = kv.lookup(call.ids)
            kwargs["cache"] = cache_for(hit.layers, hit.n)  # generate computes only the positions it lacks
        with torch.inference_mode():
            out = self.model.generate(**call.inputs, logits_processor=call.processors, output_logits=True,
                                      return_dict_in_generate=True, **kwargs)
        new_ids = out.sequences[0, len(call.ids):].tolist()
        cache = getattr(out, "cache", None)
        if kv is not None and cache is not None and weights_version(self.model) == version:
            n = cache.get_seq_length()  # the last sampled token was never fed back
            kv.store(out.sequences[0, :n].tolist(), layers_of(cache), continuation=True)
        return new_ids, _sampled_logprobs(out.logits, new_ids, call.temperature)

    def _reply(self, call: _Call, new_ids: list[int], logprobs: list[float]) -> Reply:
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        single = getattr(call.proc, "single_choice", None)
        stopped = bool(new_ids) and new_ids[-1] in self._end_ids()
        content_ids = new_ids[:-1] if stopped else new_ids
        special = set(self.tokenizer.all_special_ids)
        if any(i in special for i in content_ids) or decode_exact(self.tokenizer, content_ids) != text:
            content_ids, logprobs = [], []  # the ids do not reproduce the text one to one
        return Reply(text=text, forced=self._forced(new_ids, text, getattr(call.proc, "forced_bytes", None)),
                     forced_end=stopped and bool(single) and len(single) == len(new_ids) and single[-1],
                     token_ids=content_ids, logprobs=logprobs, stop_token_id=new_ids[-1] if stopped else None,
                     truncated=not stopped and len(new_ids) >= call.max_new)

    def _end_ids(self) -> set[int]:
        """Token ids that end generation (the generation config's eos ids, else the tokenizer's)."""
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, list) else {eos} if eos is not None else set()

    def _forced(self, new_ids: list[int], text: str, forced_bytes: list[int] | None) -> list[tuple[int, int]]:
        """Character spans of ``text`` the grammar forced, from the processor's per-token forced byte counts;
        empty when the processor records none or the bytes do not decode to ``text`` exactly."""
        if not forced_bytes or len(forced_bytes) != len(new_ids):
            return []
        from genevolve.policy.guided import forced_spans, ll_tokenizer

        llt, special = ll_tokenizer(self.tokenizer), set(self.tokenizer.all_special_ids)
        pieces = [(b"" if tok in special else llt.decode_bytes([tok]), n)
                  for tok, n in zip(new_ids, forced_bytes, strict=True)]
        decoded, spans = forced_spans(pieces)
        return spans if decoded == text else []

    def context_limit(self) -> int | None:
        """The model's context length in tokens, when its config states one."""
        config = getattr(self.model, "config", None)
        config = getattr(config, "text_config", None) or config
        limit = getattr(config, "max_position_embeddings", None)
        return int(limit) if isinstance(limit, int) and limit > 0 else None

    async def aclose(self) -> None:
        """Wait for running calls, then drop the model so its memory can be freed."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        if self._kv is not None:
            self._kv.clear()
        self.model = None


def _sampled_logprobs(logits: tuple[Any, ...], ids: list[int], temperature: float) -> list[float]:
    """log softmax(logits / temperature) of each sampled id: ``generate``'s ``logits`` are the model's raw
    outputs, before the constraint's mask and the sampler's top-p, so these are the log-probs a learner
    computes for the same tokens at that temperature (``Reply.logprobs``)."""
    import torch

    out = []
    for step_B_V, token in zip(logits, ids, strict=True):
        row_V = step_B_V[0].float() / temperature
        out.append(float(row_V[token] - torch.logsumexp(row_V, dim=-1)))
    return out
