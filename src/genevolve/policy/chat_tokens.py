"""A conversation as a policy's tokens: input ids, an assistant mask, per-turn spans, pixel inputs.

One encoder serves both sides of RL, so they agree token for token: ``HFPolicy`` generates each turn
from ``ChatEncoder.prompt(turns)``, and the learner scores trajectories through ``ChatEncoder.views``.

- The context of assistant turn k is the chat template applied to the turns before it with the
  generation prompt. Earlier assistant turns appear in it as placeholders (sentinels) that are
  afterwards replaced by the turn's own tokens, so every assistant turn is written verbatim. Templates
  that rewrite past assistant turns (Qwen3 moves ``<think>`` text into a reasoning slot and re-spaces
  it; others drop it) would otherwise change the very tokens being scored.
- Assistant content is the ids the policy sampled (``Turn.token_ids``) when the turn has them and they
  decode to its text with this tokenizer: under a grammar a sampler often emits a non-canonical split
  (``"`` then ``,`` where the tokenizer has ``",``), and the losses must score what was sampled; the
  next turn's context holds the same ids, not a re-tokenisation of the text. Otherwise the content is
  tokenised on its own. Either way the end-of-turn token follows when the template closes the turn
  with one (``<|im_end|>``, ``<|eot_id|>``, ...): the policy generated that token too. Role headers,
  system, user, tool-response and final-step text, and the template's newline after the end-of-turn
  token, are context (mask 0). So is the end-of-turn token of a turn whose sampler recorded that it
  stopped otherwise (the token budget ran out, or another end token): it was never sampled.
- ``max_context_images``: a VLM agent attaches only the newest images to each call
  (``policy.messages.visible_images``); every turn's context is rendered with the same window.
- A trajectory is one sequence while each turn's context extends the previous one plus that turn.
  Where it does not (older images dropped from a VLM's context; a template that rewrites history), a
  new sequence starts (``views``), so every turn is still scored in the context the policy saw.
- Turns after the last assistant turn carry no loss and are left out.
- ``skip_forced``: tokens whose every character a decoding constraint forced (``Turn.forced``, recorded
  by the grammar-constrained local policy) get mask 0 too. Under the grammar their probability is 1
  whatever the weights, so a policy gradient on them only moves the unconstrained model, and their
  scaffolding (tags, JSON keys) would otherwise take a large share of every sequence's loss. The
  end-of-turn token is masked the same way when the turn says the grammar forced it (``Turn.forced_end``).
- For VLMs the processor expands each image's placeholder into image tokens; its pixel tensors are
  returned beside the ids.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genevolve.policy.messages import DEFAULT_MAX_SIDE, to_hf_messages, visible_images
from genevolve.types import Trajectory, Turn

#: end-of-turn tokens that chat templates write after an assistant message and models generate
END_OF_TURN_CANDIDATES = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eot|>", "</s>")


class TokenViewError(ValueError):
    """The conversation cannot be turned into one scored token sequence; the message says why."""


@dataclass
class TokenView:
    """One trajectory as tokens.

    ``mask[t]`` is 1 exactly on tokens the policy generated (less the forced ones when the encoder skips
    them; ``n_forced`` counts those). ``spans[k] = (start, end)`` covers
    assistant turn k (content and end-of-turn token), ``turn_index[k]`` is its index in the turns.
    ``extra`` holds processor outputs besides the ids (``pixel_values``, ``image_grid_thw``, ...):
    per-image tensors (first axis = images or patches) or per-token ones (shape ``[1, T]``).
    ``sampled_logps[t]`` is the sampler's own log-prob of token t (``Turn.logprobs``), NaN where it is
    not known (context tokens, turns without them); empty when no turn has any.
    """

    input_ids: list[int]
    mask: list[int]
    spans: list[tuple[int, int]]
    turn_index: list[int]
    extra: dict[str, Any] = field(default_factory=dict)
    n_forced: int = 0
    sampled_logps: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def assistant_ids(self) -> list[int]:
        return [tok for tok, m in zip(self.input_ids, self.mask, strict=True) if m]

    @property
    def n_assistant_tokens(self) -> int:
        return sum(self.mask)


def with_system(turns: Sequence[Turn], system: str) -> list[Turn]:
    """The same conversation with its system message replaced (or put first if it had none)."""
    turns = list(turns)
    if turns and turns[0].role == "system":
        return [turns[0].model_copy(update={"content": system, "images": []}), *turns[1:]]
    return [Turn(role="system", content=system), *turns]


@dataclass
class ChatEncoder:
    """Builds ``TokenView``s with a policy's tokenizer (text LMs) or processor (VLMs).

    ``accepts_images``: feed images to the processor (default: when there is one with an image
    processor). ``end_of_turn``: the token string that closes an assistant turn (default: the first
    of ``END_OF_TURN_CANDIDATES`` the tokenizer knows, else its eos). ``template_kwargs`` go to
    ``apply_chat_template`` (e.g. ``{"enable_thinking": True}``) and must match what rollouts used.
    ``skip_forced``: mask out assistant tokens that lie wholly inside their turn's forced spans (needs a
    fast tokenizer, for character offsets). ``max_context_images``: the agent's limit of the same name
    (images attached to a VLM's context, newest kept); each turn is scored with the images the policy had.
    """

    tokenizer: Any
    processor: Any = None
    accepts_images: bool | None = None
    max_image_side: int = DEFAULT_MAX_SIDE
    end_of_turn: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    skip_forced: bool = False
    max_context_images: int | None = None

    def __post_init__(self) -> None:
        if self.skip_forced and not getattr(self.tokenizer, "is_fast", False):
            raise TokenViewError("skip_forced needs a fast tokenizer: forced spans map to tokens by character offsets")
        if self.processor is not None and getattr(self.processor, "image_processor", None) is None:
            self.processor = None
        if self.accepts_images is None:
            self.accepts_images = self.processor is not None
        if self.accepts_images and self.processor is None:
            raise TokenViewError("accepts_images=True needs a processor with an image processor (a VLM)")
        self.end_of_turn = self.end_of_turn or _find_end_of_turn(self.tokenizer)
        self._eot_id = self.tokenizer.convert_tokens_to_ids(self.end_of_turn) if self.end_of_turn else None
        if self.end_of_turn and (self._eot_id is None or self._eot_id == self.tokenizer.unk_token_id):
            raise TokenViewError(f"end_of_turn={self.end_of_turn!r} is not a single token of this tokenizer")

    @classmethod
    def from_policy(cls, policy: Any, **kw: Any) -> ChatEncoder:
        """The encoder matching an ``HFPolicy`` (same tokenizer, processor and image handling)."""
        return cls(policy.tokenizer, policy.processor, accepts_images=policy.accepts_images,
                   max_image_side=policy.max_image_side, **kw)

    # -- building views -------------------------------------------------------------------------

    def view(self, conversation: Trajectory | Sequence[Turn], *, system: str | None = None) -> TokenView:
        """The token view of a trajectory (or a list of turns) as one sequence; ``system`` replaces the
        system message. Raises ``TokenViewError`` when the contexts the policy saw are not one sequence
        (``views`` splits them)."""
        segments = self.views(conversation, system=system, split=False)
        return segments[0]

    def views(self, conversation: Trajectory | Sequence[Turn], *, system: str | None = None,
              split: bool = True) -> list[TokenView]:
        """The token views of a trajectory: one sequence, or several when the context of an assistant turn
        does not extend the previous turn's context plus that turn (older images dropped from a VLM's
        context by ``max_context_images``; a template that rewrites history). Each assistant turn is scored
        in exactly the context the policy saw; a new sequence starts where the contexts part."""
        turns = list(conversation.turns if isinstance(conversation, Trajectory) else conversation)
        if system is not None:
            turns = with_system(turns, system)
        assistant_at = [i for i, t in enumerate(turns) if t.role == "assistant"]
        if not assistant_at:
            raise TokenViewError("the conversation has no assistant turn: nothing to score")
        if assistant_at[0] == 0:
            raise TokenViewError("the conversation starts with an assistant turn: it has no context")
        for i in assistant_at:
            if turns[i].images:
                raise TokenViewError(f"assistant turn {i} carries images; policies generate text only")
        turns = turns[: assistant_at[-1] + 1]
        segments = self._segments(turns, assistant_at)
        if len(segments) > 1 and not split:
            raise TokenViewError(
                f"the contexts of assistant turns {segments[1][1][0]} and before are not one token sequence "
                "(images dropped by max_context_images, or a chat template that is not prefix-consistent: "
                "check template_kwargs such as enable_thinking)")
        return [self._tokenise(pieces, at, turns) for pieces, at in segments]

    def view_sft_row(self, row: dict[str, Any], root: str | Path | None = None, *,
                     system: str | None = None) -> TokenView:
        """The token view of one GenEvolve-Data SFT row (``{"messages", "images"}``); ``system`` replaces
        its system message."""
        from genevolve.sft_rows import trajectory_from_sft_row

        return self.view(trajectory_from_sft_row(row, root), system=system)

    def prompt(self, turns: Sequence[Turn]) -> TokenView:
        """The ids (and pixel inputs) a policy generates its next assistant turn from: the context a view
        gives that turn, earlier assistant turns as the ids they were sampled as. ``HFPolicy`` generates
        from this, so a later view scores each turn in exactly the context it was sampled in."""
        turns = [*turns, Turn(role="assistant", content="")]
        assistant_at = [i for i, t in enumerate(turns) if t.role == "assistant"]
        pieces, at = self._segments(turns, assistant_at)[-1]
        cut = max(k for k, piece in enumerate(pieces) if piece[0] == "assistant")
        return self._tokenise(pieces[:cut], at, turns)

    def _render(self, turns: list[Turn], generation_prompt: bool) -> str:
        turns = visible_images(turns, self.max_context_images)
        messages, _ = to_hf_messages(turns, accepts_images=bool(self.accepts_images), max_side=self.max_image_side)
        if self.processor is not None and not self.accepts_images:
            # A VLM's template used text-only still iterates over content parts.
            messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        owner = self.processor if self.processor is not None else self.tokenizer
        return owner.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False,
                                         **self.template_kwargs)

    def _segments(self, turns: list[Turn], assistant_at: list[int]) -> list[tuple[list[Piece], list[int]]]:
        """``[(pieces, scored assistant turn indices)]`` per sequence, pieces in sequence order (``Piece``).

        Assistant turns are rendered as sentinels that are afterwards replaced by the turn's own tokens,
        so every turn is written verbatim. A sequence continues while each turn's context extends the
        previous turn's context plus that turn; where it does not, a new sequence starts from the whole
        context, in which earlier turns are context (``past``)."""
        nonce = uuid.uuid4().hex
        sentinels = {i: f"@@genevolve-turn-{i}-{nonce}@@" for i in assistant_at}
        masked = [Turn(role="assistant", content=sentinels[i]) if i in sentinels else t for i, t in enumerate(turns)]
        segments: list[tuple[list[Piece], list[int]]] = []
        pieces: list[Piece] = []
        consumed = ""
        for i in assistant_at:
            context = self._render(masked[:i], generation_prompt=True)
            if pieces and not context.startswith(consumed):  # the policy saw a context that parts from this one
                self._close_segment(pieces, masked, segments[-1][1][-1], sentinels)
                pieces, consumed = [], ""
            if not pieces:
                segments.append((pieces, []))
            new = context[len(consumed):]
            if consumed:
                new = self._close_turn(pieces, new)
            if sentinels[i] in new:
                raise TokenViewError(f"the chat template wrote assistant turn {i} into its own context")
            pieces += _context_pieces(new, sentinels, turns)
            pieces.append(("assistant", turns[i].content, i))
            segments[-1][1].append(i)
            consumed = context + sentinels[i]
        self._close_segment(pieces, masked, assistant_at[-1], sentinels)
        return segments

    def _close_segment(self, pieces: list[Piece], masked: list[Turn], last: int, sentinels: dict[int, str]) -> None:
        """End a sequence after assistant turn ``last`` with its end-of-turn token (the text after it carries
        no loss and is left out)."""
        closing = self._render(masked[: last + 1], generation_prompt=False).split(sentinels[last], 1)
        if len(closing) != 2:
            raise TokenViewError("the chat template dropped the last assistant turn from the conversation")
        self._close_turn(pieces, closing[1])

    def _close_turn(self, pieces: list[Piece], text_after: str) -> str:
        """Add the end-of-turn token when the template closes the assistant turn with it; return the rest."""
        if self.end_of_turn and text_after.startswith(self.end_of_turn):
            pieces.append(("eot", self.end_of_turn, None))
            return text_after[len(self.end_of_turn):]
        return text_after

    def _tokenise(self, pieces: list[Piece], assistant_at: list[int], turns: list[Turn]) -> TokenView:
        images = self._images(turns[: assistant_at[-1]])  # those of the sequence's last context
        image_token = getattr(self.processor, "image_token", None) if self.accepts_images else None
        ids: list[int] = []
        mask: list[int] = []
        logps: list[float] = []
        spans: list[tuple[int, int]] = []
        scored: list[int] = []
        chunks: list[tuple[int, dict[str, Any]]] = []  # (start, processor extras) per image-bearing piece
        end_logp, end_forced, end_sampled = math.nan, False, True
        n_forced = 0
        for kind, text, index in pieces:
            if kind == "eot":
                ids.append(self._eot_id)
                mask.append(1 if end_sampled and not end_forced else 0)
                logps.append(end_logp)
                n_forced += end_sampled and end_forced
                spans[-1] = (spans[-1][0], len(ids))
                continue
            if kind == "past":  # an earlier turn, context of a sequence that starts after it
                new = self._assistant_tokens(text, [], turns[index].token_ids)[0]
                ids.extend(new)
                mask.extend([0] * len(new))
                logps.extend([math.nan] * len(new))
                continue
            if kind == "assistant":
                turn = turns[index]
                new, free, used_sampled = self._assistant_tokens(text, turn.forced, turn.token_ids)
                known = used_sampled and bool(turn.logprobs)
                logps.extend(turn.logprobs[: len(new)] if known else [math.nan] * len(new))
                end_logp = turn.logprobs[-1] if known and turn.stop_token_id == self._eot_id else math.nan
                end_forced = self.skip_forced and turn.forced_end
                # a turn cut by the token budget, or ended on another end token, never sampled the
                # template's end-of-turn token: it is context, not a choice to score
                end_sampled = not turn.truncated and turn.stop_token_id in (None, self._eot_id)
                spans.append((len(ids), len(ids) + len(new)))
                scored.append(index)
                ids.extend(new)
                mask.extend(free)
                n_forced += len(new) - sum(free)
                continue
            n_images = text.count(image_token) if image_token else 0
            if n_images:
                batch = self.processor(text=[text], images=images[:n_images], return_tensors="pt",
                                       add_special_tokens=False)
                images = images[n_images:]
                new = batch["input_ids"][0].tolist()
                chunks.append((len(ids), {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}))
            else:
                new = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids.extend(new)
            mask.extend([0] * len(new))
            logps.extend([math.nan] * len(new))
        if images:
            raise TokenViewError(f"{len(images)} images have no placeholder in the rendered conversation "
                                 f"(processor image token {image_token!r})")
        known_any = any(not math.isnan(x) for x in logps)
        return TokenView(ids, mask, spans, scored, _merge_extras(chunks, len(ids)), n_forced,
                         logps if known_any else [])

    def _assistant_tokens(self, text: str, forced: list[tuple[int, int]],
                          sampled: list[int]) -> tuple[list[int], list[int], bool]:
        """A turn's token ids, their mask (1, or 0 for a token inside the forced spans when skipping them)
        and whether the ids are the sampled ones: they are when the turn has them and they decode to its
        text with this tokenizer; else the text's tokenisation."""
        use_sampled = bool(sampled) and decode_exact(self.tokenizer, sampled) == text
        skipping = self.skip_forced and bool(forced)
        if use_sampled:
            ids = list(sampled)
            offsets = _decoded_offsets(self.tokenizer, ids) if skipping else None
        else:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=skipping)
            ids, offsets = enc["input_ids"], enc.get("offset_mapping")
        if not skipping:
            return ids, [1] * len(ids), use_sampled
        is_forced = [False] * len(text)
        for start, end in forced:
            is_forced[start:end] = [True] * (end - start)
        return ids, [0 if end > start and all(is_forced[start:end]) else 1 for start, end in offsets], use_sampled

    def _images(self, turns: list[Turn]) -> list[Any]:
        if not self.accepts_images:
            return []
        turns = visible_images(turns, self.max_context_images)
        return to_hf_messages(turns, accepts_images=True, max_side=self.max_image_side)[1]


def _decoded_offsets(tokenizer: Any, ids: list[int]) -> list[tuple[int, int]]:
    """Character span of each token in ``decode(ids)``, from the lengths of the decoded prefixes. A token
    that ends inside a multi-byte character decodes to a replacement character, so the character goes to
    the token that completes it; a token left with an empty span counts as not forced."""
    out, before = [], 0
    for i in range(len(ids)):
        text = decode_exact(tokenizer, ids[: i + 1])
        if text.endswith("\ufffd"):
            out.append((before, before))
            continue
        out.append((before, len(text)))
        before = len(text)
    return out


def _find_end_of_turn(tokenizer: Any) -> str | None:
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_CANDIDATES:
        if token in vocab:
            return token
    return getattr(tokenizer, "eos_token", None)


def _merge_extras(chunks: list[tuple[int, dict[str, Any]]], length: int) -> dict[str, Any]:
    """Processor outputs of several pieces as one: per-token tensors laid out over the whole
    sequence (0 elsewhere), per-image tensors concatenated along their first axis."""
    import torch

    merged: dict[str, list[Any]] = {}
    per_token: dict[str, Any] = {}
    for start, extras in chunks:
        for key, value in extras.items():
            if value.dim() == 2 and value.shape[0] == 1 and key.endswith("_ids"):
                row = per_token.setdefault(key, torch.zeros(1, length, dtype=value.dtype))
                row[:, start:start + value.shape[1]] = value
            else:
                merged.setdefault(key, []).append(value)
    return {**{k: torch.cat(v, dim=0) for k, v in merged.items()}, **per_token}


#: a piece of a sequence: ``(kind, text, turn index)``. Kinds: ``prompt`` (template text), ``assistant``
#: (a scored turn's verbatim content), ``past`` (an earlier turn's content, as context), ``eot`` (the
#: end-of-turn token after a scored turn).
Piece = tuple[str, str, "int | None"]


def _context_pieces(text: str, sentinels: dict[int, str], turns: list[Turn]) -> list[Piece]:
    """Template text as pieces: earlier assistant turns' sentinels become ``past`` pieces of their content."""
    by_sentinel = {s: i for i, s in sentinels.items()}
    out: list[Piece] = []
    for part in re.split(f"({'|'.join(map(re.escape, sentinels.values()))})", text):
        if part in by_sentinel:
            out.append(("past", turns[by_sentinel[part]].content, by_sentinel[part]))
        elif part:
            out.append(("prompt", part, None))
    return out


def decode_exact(tokenizer: Any, ids: list[int]) -> str:
    """``ids`` as text exactly: no special tokens dropped, no spaces cleaned up."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
