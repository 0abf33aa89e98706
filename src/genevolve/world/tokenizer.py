"""A small byte-level BPE vocabulary fitted to one world, for policies trained from scratch on a CPU.

A from-scratch policy spends most of its compute in the output layer when it keeps a general
tokenizer: SmolLM2's 49,152-token head is 6.3 M of a 2-layer, 128-wide model's 6.9 M parameters.
The world's text (its requests, expert turns, tool responses and the agent's prompt) needs far fewer
tokens. ``world_tokenizer`` fits a byte-level BPE of ``vocab_size`` tokens on the world's SFT and RL
splits (never the benchmark split) and keeps the base tokenizer's special tokens and chat template,
so the trajectory masks, the protocol grammar and every rollout work as with the base.

Byte-level means no text is out of vocabulary: a request the world never wrote still encodes, in
more tokens. The folder it writes is a normal Hugging Face tokenizer folder; a config points
``model.path`` at it with ``model.from_config`` to build a model around it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genevolve.registry import ConfigError, require

INFO_FILE = "genevolve-tokenizer.json"
#: the splits the vocabulary is fitted on; the benchmark split stays unseen
FIT_SPLITS = ("sft.jsonl", "rl.jsonl")


def world_texts(world: Path, base: Any) -> Iterator[str]:
    """The text a policy sees in ``world``: each expert trajectory rendered with ``base``'s chat
    template (image parts as the ``<image>`` placeholder the policy sees), then each RL request."""
    from genevolve.sft_rows import content_text

    sft = world / FIT_SPLITS[0]
    if not sft.is_file():
        raise ConfigError(f"{world} has no {FIT_SPLITS[0]}: build the world first (genevolve world build)")
    for line in sft.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        messages = [{"role": m["role"], "content": content_text(m["content"], f"{sft.name}: {row.get('id')}")[0]}
                    for m in row.get("messages", [])]
        if messages:
            yield base.apply_chat_template(messages, tokenize=False)
    rl = world / FIT_SPLITS[1]
    if rl.is_file():
        for line in rl.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)["question"]


def world_tokenizer(world: str | Path, out: str | Path | None = None, *, vocab_size: int = 4096,
                    base: str = "embedded") -> Path:
    """Fit the world's tokenizer and write it to ``out`` (default ``WORLD/tokenizer``); returns the folder.

    ``base`` is the tokenizer whose special tokens and chat template are kept (``embedded``: the
    embedded SmolLM2's). The same world, base and size give the same vocabulary."""
    transformers = require("transformers", "local")
    tokenizers = require("tokenizers", "local")
    from genevolve.evolve.model import resolve_path

    world = Path(world)
    out = Path(out) if out is not None else world / "tokenizer"
    try:
        base_tok = transformers.AutoTokenizer.from_pretrained(resolve_path(base))
    except OSError as exc:
        raise ConfigError(f"cannot load the base tokenizer {base!r}: {exc}") from exc
    if not base_tok.chat_template:
        raise ConfigError(f"the base tokenizer {base!r} has no chat template")
    specials = list(dict.fromkeys(base_tok.all_special_tokens))
    byte_level = tokenizers.pre_tokenizers.ByteLevel
    if vocab_size < len(byte_level.alphabet()) + len(specials):
        raise ConfigError(f"vocab_size {vocab_size} is smaller than the 256 bytes plus {len(specials)} special tokens")

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = byte_level(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                             initial_alphabet=byte_level.alphabet(), show_progress=False)
    texts = list(world_texts(world, base_tok))
    bpe.train_from_iterator(texts, trainer)

    named = {"bos_token": base_tok.bos_token, "eos_token": base_tok.eos_token,
             "pad_token": base_tok.pad_token, "unk_token": base_tok.unk_token}
    named = {k: v for k, v in named.items() if v is not None}
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, **named,
        additional_special_tokens=[s for s in specials if s not in named.values()])
    tok.chat_template = base_tok.chat_template
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    manifest = world / "manifest.json"
    version = json.loads(manifest.read_text(encoding="utf-8")).get("version") if manifest.is_file() else None
    info = {"world": str(world), "world_version": version, "base": base, "vocab_size": len(tok),
            "fitted_on": list(FIT_SPLITS), "texts": len(texts)}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out
