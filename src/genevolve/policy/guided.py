"""Grammar-constrained decoding for local transformers policies, with llguidance.

``llguidance_factory`` is a ``logits_processor_factory`` for ``HFPolicy``: for a ``Constraint`` of
kind ``grammar`` (Lark, llguidance dialect), ``regex`` or ``json_schema`` it returns a logits
processor that masks every token the grammar cannot accept next; once the grammar is complete only
EOS remains. llguidance was chosen over outlines, xgrammar and transformers-cfg because it takes the
same Lark grammars as vLLM's ``guidance`` backend and SGLang (one grammar for local and served
policies), compiles lazily (no per-grammar vocabulary precomputation, which matters because the
grammar changes every turn as image ids are added), and ships wheels without a GPU stack.

Batch size 1 (one conversation per ``generate`` call), which is how ``HFPolicy`` decodes.

The processor also records, before each token, how many bytes the grammar forces next (llguidance's
``compute_ff_bytes``, about 25 µs). ``forced_spans`` turns that into the character spans of the reply
that carried no choice (``<answer>{"gen_prompt": "`` after ``</think>``, closing tags): training leaves
them out of the loss, since under the grammar their probability is 1 whatever the weights.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from genevolve.policy.base import Constraint
from genevolve.registry import require

_TOKENIZERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class GrammarViolation(RuntimeError):
    """The model produced a token the grammar rejected (cannot happen unless masking was bypassed)."""


def ll_tokenizer(tokenizer: Any) -> Any:
    """The llguidance view of a HF tokenizer (built once per tokenizer: it walks the whole vocabulary)."""
    llg_hf = require("llguidance.hf", "embedded")
    with _LOCK:
        found = _TOKENIZERS.get(tokenizer)
        if found is None:
            found = llg_hf.from_tokenizer(tokenizer)
            _TOKENIZERS[tokenizer] = found
        return found


def grammar_text(constraint: Constraint) -> str:
    """The constraint as an llguidance grammar (Lark text or a JSON grammar spec)."""
    llg = require("llguidance", "embedded")
    if constraint.kind == "grammar":
        return llg.LLMatcher.grammar_from_lark(constraint.value)
    if constraint.kind == "regex":
        return llg.LLMatcher.grammar_from_regex(constraint.value)
    schema = constraint.value if isinstance(constraint.value, str) else json.dumps(constraint.value)
    return llg.LLMatcher.grammar_from_json_schema(schema)


class GrammarLogitsProcessor:
    """Masks scores to the tokens the grammar allows next; feeds each sampled token to the matcher."""

    def __init__(self, constraint: Constraint, tokenizer: Any):
        llg = require("llguidance", "embedded")
        self._llt = ll_tokenizer(tokenizer)
        self.matcher = llg.LLMatcher(self._llt, grammar_text(constraint))
        if self.matcher.is_error():
            raise ValueError(f"invalid {constraint.kind} constraint: {self.matcher.get_error()}")
        self._prompt_len: int | None = None
        self._bitmask: Any = None
        #: per generated token: how many bytes the grammar forced before it was sampled (``compute_ff_bytes``)
        self.forced_bytes: list[int] = []
        #: per generated token: whether the grammar allowed exactly one token there (a forced end of turn has
        #: no bytes to count, so ``forced_bytes`` cannot tell)
        self.single_choice: list[bool] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import llguidance.torch as llt
        import torch

        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[1]
            self._bitmask = llt.allocate_token_bitmask(1, self._llt.vocab_size)
        elif input_ids.shape[1] > self._prompt_len:
            token = int(input_ids[0, -1])
            if not self.matcher.consume_token(token):
                raise GrammarViolation(f"token {token} rejected: {self.matcher.get_error()}")
        self.forced_bytes.append(len(self.matcher.compute_ff_bytes()))
        llt.fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        vocab = min(scores.shape[-1], self._llt.vocab_size)
        # The model's embedding table may be padded beyond the tokenizer's vocabulary: those ids are never valid.
        allowed_V = torch.zeros(scores.shape[-1], dtype=torch.bool)
        allowed_V[:vocab] = unpack_bitmask(self._bitmask[0], vocab)
        self.single_choice.append(int(allowed_V.sum()) == 1)
        return scores.masked_fill(~allowed_V.to(scores.device), float("-inf"))


def unpack_bitmask(bitmask_W: Any, vocab: int) -> Any:
    """llguidance's packed mask (int32 words, bit ``i % 32`` of word ``i // 32`` = token ``i`` allowed) as a
    bool ``[vocab]`` tensor. Plain torch on purpose: ``llguidance.torch.apply_token_bitmask_inplace`` is
    ``torch.compile``d, which costs about 10 s in the first call of every process on a CPU."""
    import torch

    shifts_32 = torch.arange(32, dtype=torch.int32)
    bits_W_32 = (bitmask_W[:, None] >> shifts_32) & 1
    return bits_W_32.flatten()[:vocab].bool()


def forced_spans(pieces: Sequence[tuple[bytes, int]]) -> tuple[str, list[tuple[int, int]]]:
    """The text of generated tokens and its forced character spans.

    ``pieces[i] = (token_bytes, forced)``: the bytes token i decodes to and how many bytes the grammar
    forced when it was sampled (the first ``min(forced, len(token_bytes))`` of them are forced). A character
    is forced when all its bytes are. Returns the UTF-8 text (invalid bytes replaced, as tokenizers decode)
    and its ``[start, end)`` spans of forced characters, sorted and disjoint.
    """
    data = bytearray()
    flags: list[bool] = []
    for token_bytes, forced in pieces:
        n = min(max(forced, 0), len(token_bytes))
        data += token_bytes
        flags += [True] * n + [False] * (len(token_bytes) - n)
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:  # a cut-off character has no clean boundaries: map nothing
        return bytes(data).decode("utf-8", errors="replace"), []
    spans: list[tuple[int, int]] = []
    at = 0
    for i, char in enumerate(text):
        width = len(char.encode("utf-8"))
        if all(flags[at:at + width]):
            if spans and spans[-1][1] == i:
                spans[-1] = (spans[-1][0], i + 1)
            else:
                spans.append((i, i + 1))
        at += width
    return text, spans


def llguidance_factory(constraint: Constraint, tokenizer: Any) -> GrammarLogitsProcessor:
    return GrammarLogitsProcessor(constraint, tokenizer)
