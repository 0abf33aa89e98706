"""A trajectory as the policy's tokens: input ids, an assistant mask, per-turn spans, pixel inputs.

Training scores exactly the tokens the policy generated, in the context it generated them in. So
the view is built from what the policy saw and wrote, not from a re-rendering of the conversation:

- The context of assistant turn k is the chat template applied to the turns before it with the
  generation prompt (``HFPolicy.encode`` does the same at rollout time). Earlier assistant turns
  appear in that context as placeholders (sentinels) that are afterwards replaced by the turn's own
  tokens, so every assistant turn is written verbatim. Templates that rewrite past assistant turns
  (Qwen3 moves ``<think>`` text into a reasoning slot and re-spaces it; others drop it) would
  otherwise change the very tokens being scored.
- Assistant content is the ids the policy sampled (``Turn.token_ids``) when the turn has them and they
  decode to its text with this tokenizer: under a grammar a sampler often emits a non-canonical split
  (``"`` then ``,`` where the tokenizer has ``",``), and the losses must score what was sampled. Otherwise
  the content is tokenised on its own. Either way the end-of-turn token follows when the template
  closes the turn with one (``<|im_end|>``, ``<|eot_id|>``, ...): the policy generated that token too.
  Role headers, system, user, tool-response and final-step text, and the template's newline after the
  end-of-turn token, are context (mask 0).
- One sequence per trajectory needs the template to be prefix-consistent (context k+1 extends
  context k plus turn k). Templates that are not (e.g. Qwen3 with ``enable_thinking=False``, whose
  generation prompt holds an empty think block that history turns lack) raise ``TokenViewError``.
- Turns after the last assistant turn carry no loss and are left out.
- ``skip_forced``: tokens whose every character a decoding constraint forced (``Turn.forced``, recorded
  by the grammar-constrained local policy) get mask 0 too. Under the grammar their probability is 1
  whatever the weights, so a policy gradient on them only moves the unconstrained model, and their
  scaffolding (tags, JSON keys) would otherwise take a large share of every sequence's loss. The
  end-of-turn token is masked the same way when the turn says the grammar forced it (``Turn.forced_end``).
- For VLMs the processor expands each image's placeholder into image tokens; its pixel tensors are
  returned beside the ids.

The teacher of Visual Experience Distillation scores the *student's* assistant tokens under another
system prompt: ``with_system`` builds that conversation, ``aligned_positions`` pairs the two views'
assistant tokens (asserting they are the same ids) and ``teacher_logps`` returns teacher log-probs in
the student's layout.

Axis letters: ``B`` sequences, ``T`` token positions (right-padded), ``V`` vocabulary, ``P`` scored
positions.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genevolve.policy.hf import decode_exact
from genevolve.policy.messages import DEFAULT_MAX_SIDE, to_hf_messages
from genevolve.types import Trajectory, Turn

if TYPE_CHECKING:
    from torch import Tensor

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
    """

    input_ids: list[int]
    mask: list[int]
    spans: list[tuple[int, int]]
    turn_index: list[int]
    extra: dict[str, Any] = field(default_factory=dict)
    n_forced: int = 0

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
    fast tokenizer, for character offsets).
    """

    tokenizer: Any
    processor: Any = None
    accepts_images: bool | None = None
    max_image_side: int = DEFAULT_MAX_SIDE
    end_of_turn: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    skip_forced: bool = False

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
        """The token view of a trajectory (or a list of turns); ``system`` replaces the system message."""
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
        pieces = self._pieces(turns, assistant_at)
        return self._tokenise(pieces, assistant_at, turns)

    def view_sft_row(self, row: dict[str, Any], root: str | Path | None = None, *,
                     system: str | None = None) -> TokenView:
        """The token view of one GenEvolve-Data SFT row (``{"messages", "images"}``); ``system`` replaces
        its system message."""
        from genevolve.sft_rows import trajectory_from_sft_row

        return self.view(trajectory_from_sft_row(row, root), system=system)

    def _render(self, turns: list[Turn], generation_prompt: bool) -> str:
        messages, _ = to_hf_messages(turns, accepts_images=bool(self.accepts_images), max_side=self.max_image_side)
        if self.processor is not None and not self.accepts_images:
            # A VLM's template used text-only still iterates over content parts.
            messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        owner = self.processor if self.processor is not None else self.tokenizer
        return owner.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False,
                                         **self.template_kwargs)

    def _pieces(self, turns: list[Turn], assistant_at: list[int]) -> list[tuple[str, str]]:
        """``[(kind, text)]`` with kind ``prompt`` (template text), ``assistant`` (verbatim content)
        or ``eot`` (the end-of-turn token after an assistant turn), in sequence order."""
        nonce = uuid.uuid4().hex
        sentinels = {i: f"@@genevolve-turn-{i}-{nonce}@@" for i in assistant_at}
        masked = [Turn(role="assistant", content=sentinels[i]) if i in sentinels else t for i, t in enumerate(turns)]
        pieces: list[tuple[str, str]] = []
        consumed = ""
        for n, i in enumerate(assistant_at):
            context = self._render(masked[:i], generation_prompt=True)
            if not context.startswith(consumed):
                raise TokenViewError(
                    f"the chat template is not prefix-consistent at assistant turn {i}: the context it "
                    "writes for this turn does not extend the previous turn's context, so the "
                    "conversation is not one token sequence (check template_kwargs such as enable_thinking)")
            new = context[len(consumed):]
            if n:
                new = self._close_turn(pieces, new)
            if sentinels[i] in new:
                raise TokenViewError(f"the chat template wrote assistant turn {i} into its own context")
            pieces += [("prompt", new), ("assistant", turns[i].content)]
            consumed = context + sentinels[i]
        closing = self._render(masked, generation_prompt=False).split(sentinels[assistant_at[-1]], 1)
        if len(closing) != 2:
            raise TokenViewError("the chat template dropped the last assistant turn from the conversation")
        self._close_turn(pieces, closing[1])  # the text after it carries no loss and is left out
        return pieces

    def _close_turn(self, pieces: list[tuple[str, str]], text_after: str) -> str:
        """Add the end-of-turn token when the template closes the assistant turn with it; return the rest."""
        if self.end_of_turn and text_after.startswith(self.end_of_turn):
            pieces.append(("eot", self.end_of_turn))
            return text_after[len(self.end_of_turn):]
        return text_after

    def _tokenise(self, pieces: list[tuple[str, str]], assistant_at: list[int], turns: list[Turn]) -> TokenView:
        images = self._images(turns)
        image_token = getattr(self.processor, "image_token", None) if self.accepts_images else None
        ids: list[int] = []
        mask: list[int] = []
        spans: list[tuple[int, int]] = []
        chunks: list[tuple[int, dict[str, Any]]] = []  # (start, processor extras) per image-bearing piece
        sampled = iter([turns[i].token_ids for i in assistant_at])
        forced = iter([turns[i].forced for i in assistant_at])
        forced_end = iter([turns[i].forced_end for i in assistant_at])
        end_forced = False
        n_forced = 0
        for kind, text in pieces:
            if kind == "eot":
                ids.append(self._eot_id)
                mask.append(0 if end_forced else 1)
                n_forced += end_forced
                spans[-1] = (spans[-1][0], len(ids))
                continue
            if kind == "assistant":
                new, free = self._assistant_tokens(text, next(forced), next(sampled))
                end_forced = self.skip_forced and next(forced_end)
                spans.append((len(ids), len(ids) + len(new)))
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
        if images:
            raise TokenViewError(f"{len(images)} images have no placeholder in the rendered conversation "
                                 f"(processor image token {image_token!r})")
        return TokenView(ids, mask, spans, list(assistant_at), _merge_extras(chunks, len(ids)), n_forced)

    def _assistant_tokens(self, text: str, forced: list[tuple[int, int]],
                          sampled: list[int]) -> tuple[list[int], list[int]]:
        """A turn's token ids and their mask: 1, or 0 for a token inside the forced spans when skipping them.
        The ids are the sampled ones when the turn has them and they decode to its text with this tokenizer;
        else the text's tokenisation."""
        use_sampled = bool(sampled) and decode_exact(self.tokenizer, sampled) == text
        skipping = self.skip_forced and bool(forced)
        if use_sampled:
            ids = list(sampled)
            offsets = _decoded_offsets(self.tokenizer, ids) if skipping else None
        else:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=skipping)
            ids, offsets = enc["input_ids"], enc.get("offset_mapping")
        if not skipping:
            return ids, [1] * len(ids)
        is_forced = [False] * len(text)
        for start, end in forced:
            is_forced[start:end] = [True] * (end - start)
        return ids, [0 if end > start and all(is_forced[start:end]) else 1 for start, end in offsets]

    def _images(self, turns: list[Turn]) -> list[Any]:
        if not self.accepts_images:
            return []
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


# -- batches and log-probs -----------------------------------------------------------------------


@dataclass
class TokenBatch:
    """Right-padded tensors for several views: ``input_ids_B_T``, ``attention_B_T``, ``mask_B_T``
    and the model's extra inputs (pixel tensors concatenated over the batch)."""

    input_ids_B_T: Any
    attention_B_T: Any
    mask_B_T: Any
    extra: dict[str, Any]
    lengths: list[int]


def collate(views: Sequence[TokenView], pad_id: int) -> TokenBatch:
    import torch

    if not views:
        raise ValueError("collate needs at least one view")
    t = max(len(v) for v in views)
    ids = torch.full((len(views), t), pad_id, dtype=torch.long)
    attention = torch.zeros((len(views), t), dtype=torch.long)
    mask = torch.zeros((len(views), t), dtype=torch.long)
    for b, v in enumerate(views):
        ids[b, : len(v)] = torch.tensor(v.input_ids, dtype=torch.long)
        attention[b, : len(v)] = 1
        mask[b, : len(v)] = torch.tensor(v.mask, dtype=torch.long)
    extra: dict[str, Any] = {}
    for key in {k for v in views for k in v.extra}:
        values = [v.extra.get(key) for v in views]
        sample = next(x for x in values if x is not None)
        if key.endswith("_ids") and sample.dim() == 2:
            padded = torch.zeros((len(views), t), dtype=sample.dtype)
            for b, x in enumerate(values):
                if x is not None:
                    padded[b, : x.shape[1]] = x[0]
            extra[key] = padded
        else:
            extra[key] = torch.cat([x for x in values if x is not None], dim=0)
    return TokenBatch(ids, attention, mask, extra, [len(v) for v in views])


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def token_logps(model: Any, batch: TokenBatch, *, temperature: float = 1.0) -> Tensor:
    """log π(token_t | tokens_<t) for every masked token, as ``[B, T]`` (0 where the mask is 0).

    Differentiable: wrap in ``torch.no_grad()`` for old-policy and teacher passes. Only the
    positions that predict a masked token go through the output layer (``logits_to_keep``), which
    keeps the ``[B, P, V]`` logits far smaller than ``[B, T, V]`` on long tool-response contexts.
    ``temperature`` divides the logits, for scoring samples drawn at that temperature.
    """
    import torch

    param = next(model.parameters())
    mask_B_T = batch.mask_B_T.to(param.device)
    ids_B_T = batch.input_ids_B_T.to(param.device)
    targets_P = mask_B_T[:, 1:].any(dim=0).nonzero().flatten()  # position p predicts token p + 1
    logp_B_T = torch.zeros(mask_B_T.shape, dtype=torch.float32, device=param.device)
    if targets_P.numel() == 0:
        return logp_B_T.requires_grad_(torch.is_grad_enabled())  # nothing to score; backward still works
    extra = {k: v.to(param.device, dtype=param.dtype) if v.is_floating_point() else v.to(param.device)
             for k, v in batch.extra.items()}
    kw: dict[str, Any] = {"logits_to_keep": targets_P} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=ids_B_T, attention_mask=batch.attention_B_T.to(param.device), use_cache=False,
                   **extra, **kw).logits
    logits_B_P_V = logits if kw else logits[:, targets_P]
    logits_B_P_V = logits_B_P_V.float() / temperature
    next_B_P = ids_B_T[:, targets_P + 1]
    picked_B_P = logits_B_P_V.gather(-1, next_B_P[..., None]).squeeze(-1) - logits_B_P_V.logsumexp(-1)
    logp_B_T = logp_B_T.index_copy(1, targets_P + 1, picked_B_P)
    return logp_B_T * mask_B_T


def aligned_positions(student: TokenView, teacher: TokenView) -> tuple[list[int], list[int]]:
    """Positions of the assistant tokens in each view, paired in order. The two views must hold the
    same assistant token ids (the teacher re-scores the student's own tokens); anything else raises."""
    s_pos = [t for t, m in enumerate(student.mask) if m]
    t_pos = [t for t, m in enumerate(teacher.mask) if m]
    if [student.input_ids[t] for t in s_pos] != [teacher.input_ids[t] for t in t_pos]:
        raise TokenViewError("student and teacher views differ in their assistant tokens; the teacher "
                             "context may only change the system message")
    return s_pos, t_pos


def teacher_logps(model: Any, students: Sequence[TokenView], teachers: Sequence[TokenView | None],
                  pad_id: int, *, temperature: float = 1.0) -> Tensor:
    """Teacher log-probs of the students' assistant tokens, in the students' ``[B, T]`` layout.

    ``teachers[b]`` is student b's conversation under the teacher's system prompt, or None for a
    row without an experience bundle (its row stays 0: such rows add no distillation signal).
    Runs without gradient: the teacher is a constant.
    """
    import torch

    t = max(len(v) for v in students)
    out_B_T = torch.zeros((len(students), t), dtype=torch.float32)
    rows = [b for b, v in enumerate(teachers) if v is not None]
    if not rows:
        return out_B_T
    batch = collate([teachers[b] for b in rows], pad_id)
    with torch.no_grad():
        scored = token_logps(model, batch, temperature=temperature).cpu()
    for i, b in enumerate(rows):
        s_pos, t_pos = aligned_positions(students[b], teachers[b])
        out_B_T[b, s_pos] = scored[i, t_pos]
    return out_B_T
