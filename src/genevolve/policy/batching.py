"""Decode the concurrent calls of a local text LM as one batch.

On a CPU a decode step of SmolLM2-135M costs about as much for 8 rows as for 1 (it reads the weights
once either way): 22 tokens/s at batch 1, about 130 summed at batch 8. ``HFPolicy`` with ``batching``
sends its calls here instead of running one ``generate`` per thread.

Why not transformers' own: ``generate`` on a padded batch runs every row to the longest and cannot take
in a call that arrives meanwhile (an agent's next turn comes as soon as its tool returns); its continuous
batching (``generate_batch``) applies only its own per-request sampling settings, not arbitrary per-call
logits processors (llguidance grammar masks, seeded samplers).

How:

- Calls queue up; one worker thread owns the batch. Before each decode step it admits the waiting calls
  (up to ``max_batch`` rows). Each is prefilled alone, from the prefix cache's longest matching entry
  (prefill is compute-bound: batching it gains little), and its states join the batch's cache, left-padded
  to a common length: padding is masked out of attention and positions count real tokens only.
- Each row keeps its own processors and calls them with that row's ids and scores, exactly as ``generate``
  at batch 1 does: a grammar processor sees only its row's tokens, a ``SeededSampler`` draws from its own
  generator, so a seed gives the same draw whatever else is in the batch. The pick is the argmax of the
  processed scores, as in the greedy ``generate`` ``HFPolicy`` runs.
- A row leaves the batch the step it picks an end token or reaches its budget, so its processors are never
  fed padding; its states (prompt and picks but the last) go to the prefix cache for the rollout's next turn.
- Padding changes float rounding (about 1e-6 in the logits), so a batched reply equals the batch-1 reply
  except where two choices are that close.
- Only for models that ``generate`` would decode with no processors of their own (nothing in the generation
  config such as a repetition penalty): ``batchable`` checks; others keep one ``generate`` per call.

Axes: B = rows, P = cached positions (padding included), V = vocabulary.
"""

from __future__ import annotations

import inspect
import queue
import threading
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from genevolve.policy.kv_cache import (
    Hit,
    PrefixCache,
    cache_for,
    layers_of,
    replace_states,
    supports_prefix_cache,
    weights_version,
)

#: what a call returns: the picked ids (end token included) and each one's log-prob
Decoded = tuple[list[int], list[float]]


def batchable(model: Any) -> bool:
    """Whether ``model`` can be decoded here: a full-attention cache, and a generation config that adds no
    logits processors of its own to a greedy ``generate`` (this loop applies only each call's)."""
    if not supports_prefix_cache(model):
        return False
    config = getattr(model, "generation_config", None)
    try:
        with warnings.catch_warnings():  # it warns about settings that need the prompt, which it is not given
            warnings.simplefilter("ignore")
            extra = model._get_logits_processor(config.__class__.from_dict({**config.to_dict(), "do_sample": False}))
    except Exception:  # a private transformers API: when it moves, decode one call at a time
        return False
    return len(extra) == 0


@dataclass
class _Row:
    ids: list[int]  # prompt, then the picks so far
    processors: Any
    max_new: int
    temperature: float
    future: Future
    version: int = 0  # weights_version at admission
    logprobs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n_prompt = len(self.ids)


class DecodeBatcher:
    """A worker thread decoding every submitted call as a row of one batch (see the module docstring)."""

    def __init__(self, model: Any, *, end_ids: set[int], max_batch: int, prefix_cache: PrefixCache | None = None,
                 torch_threads: int | None = None) -> None:
        self.model = model
        self.end_ids = set(end_ids)
        self.max_batch = max_batch
        self.prefix = prefix_cache
        self.torch_threads = torch_threads
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._keep_one = "logits_to_keep" in inspect.signature(base.forward).parameters
        self.steps = 0  # decode steps run
        self.row_steps = 0  # rows summed over them: row_steps / steps is the mean batch
        self._queue: queue.SimpleQueue[_Row | None] = queue.SimpleQueue()
        self._rows: list[_Row] = []
        self._pads: list[int] = []
        self._cache: Any = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="hf-batcher", daemon=True)
        self._thread.start()

    def submit(self, ids: list[int], processors: Any, max_new: int, temperature: float) -> Future[Decoded]:
        """Queue one call: decode from prompt ``ids`` with its own ``processors`` until an end id or ``max_new``
        picks. ``temperature`` only scales the recorded log-probs (the sampler does the sampling)."""
        if self._closed:
            raise RuntimeError("the decode batcher is closed")
        future: Future[Decoded] = Future()
        self._queue.put(_Row(list(ids), processors, max_new, temperature, future))
        return future

    def close(self) -> None:
        """Stop the worker once the rows in flight are done."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    # -- worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        stopping = False
        with torch.inference_mode():
            while not (stopping and not self._rows):
                waiting, stopping = self._take(block=not self._rows and not stopping, stopping=stopping)
                try:
                    for row in waiting:
                        self._admit(row)
                    if self._rows:
                        self._step()
                except Exception as exc:  # a model failure ends every row in flight, not the worker
                    for row in [*self._rows, *waiting]:
                        if not row.future.done():
                            row.future.set_exception(exc)
                    self._rows, self._pads, self._cache = [], [], None

    def _take(self, *, block: bool, stopping: bool) -> tuple[list[_Row], bool]:
        """The queued calls that fit in the batch (waiting for one when ``block``); True once closing."""
        rows: list[_Row] = []
        while len(self._rows) + len(rows) < self.max_batch:
            try:
                item = self._queue.get(block=block and not rows)
            except queue.Empty:
                break
            if item is None:
                return rows, True
            rows.append(item)
        return rows, stopping

    def _admit(self, row: _Row) -> None:
        """Prefill ``row`` alone from the prefix cache, pick its first token, and add it to the batch."""
        import torch

        device = next(self.model.parameters()).device
        hit = Hit(0, None, False)
        if self.prefix is not None:
            row.version = weights_version(self.model)
            self.prefix.check_weights(row.version)
            hit = self.prefix.lookup(row.ids)
        cache = cache_for(hit.layers, hit.n)
        out = self.model(input_ids=torch.tensor([row.ids[hit.n:]], device=device), cache=cache, use_cache=True,
                         position_ids=torch.arange(hit.n, len(row.ids), device=device)[None],
                         **({"logits_to_keep": 1} if self._keep_one else {}))
        if self.prefix is not None and not hit.continued:
            # a first turn: the other rollouts of its request, submitted with it, share this prompt (a later
            # turn holds a reply of its own, and its states are stored when it ends)
            self.prefix.store(row.ids, layers_of(cache))
        try:
            done = self._pick(row, out.logits[:, -1])
        except Exception as exc:  # this call's processor failed (e.g. a grammar violation): only it ends
            row.future.set_exception(exc)
            return
        if done:
            row.future.set_result((row.ids[row.n_prompt:], row.logprobs))
        else:
            self._join(row, cache)

    def _pick(self, row: _Row, logits_1_V: Any) -> bool:
        """Run the row's processors, take the argmax, record its log-prob; True when the row is done."""
        import torch

        raw_1_V = logits_1_V.float()
        scores_1_V = row.processors(torch.tensor([row.ids], device=raw_1_V.device), raw_1_V.clone())
        token = int(scores_1_V[0].argmax())
        scaled_V = raw_1_V[0] / row.temperature
        row.logprobs.append(float(scaled_V[token] - torch.logsumexp(scaled_V, dim=-1)))
        row.ids.append(token)
        return token in self.end_ids or len(row.ids) - row.n_prompt >= row.max_new

    def _join(self, row: _Row, cache: Any) -> None:
        """Add a prefilled row's cache to the batch's, left-padding the shorter side."""
        if not self._rows:
            self._rows, self._pads, self._cache = [row], [0], cache
            return
        have, new = self._cache.get_seq_length(), cache.get_seq_length()
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            replace_states(mine, _cat_rows(mine.keys, theirs.keys, have, new),
                           _cat_rows(mine.values, theirs.values, have, new))
        self._pads = [p + max(new - have, 0) for p in self._pads] + [max(have - new, 0)]
        self._rows.append(row)

    def _step(self) -> None:
        """One decode step of every row, then release the rows that finished."""
        import torch

        rows, device = self._rows, next(self.model.parameters()).device
        mask = None
        if any(self._pads):
            mask = torch.ones(len(rows), self._cache.get_seq_length() + 1, dtype=torch.long, device=device)
            for j, pad in enumerate(self._pads):
                mask[j, :pad] = 0
        out = self.model(input_ids=torch.tensor([[r.ids[-1]] for r in rows], device=device), attention_mask=mask,
                         position_ids=torch.tensor([[len(r.ids) - 1] for r in rows], device=device),
                         cache=self._cache, use_cache=True, **({"logits_to_keep": 1} if self._keep_one else {}))
        self.steps += 1
        self.row_steps += len(rows)
        logits_B_V = out.logits[:, -1]
        finished: dict[int, BaseException | None] = {}
        for j, row in enumerate(rows):
            try:
                if self._pick(row, logits_B_V[j:j + 1]):
                    finished[j] = None
            except Exception as exc:
                finished[j] = exc
        if finished:
            self._release(finished)

    def _release(self, finished: dict[int, BaseException | None]) -> None:
        """Answer the finished rows, store their states, and drop them (and padding no row needs) from the batch."""
        import torch

        for j, error in finished.items():
            row = self._rows[j]
            if error is not None:
                row.future.set_exception(error)
                continue
            if self.prefix is not None and weights_version(self.model) == row.version:
                self.prefix.store(row.ids[:-1], layers_of(self._cache, j, self._pads[j]), continuation=True)
            row.future.set_result((row.ids[row.n_prompt:], row.logprobs))
        keep = [j for j in range(len(self._rows)) if j not in finished]
        if not keep:
            self._rows, self._pads, self._cache = [], [], None
            return
        keep_B = torch.tensor(keep, device=self._cache.layers[0].keys.device)
        trim = min(self._pads[j] for j in keep)
        for layer in self._cache.layers:
            replace_states(layer, layer.keys[keep_B, :, trim:], layer.values[keep_B, :, trim:])
        self._rows = [self._rows[j] for j in keep]
        self._pads = [self._pads[j] - trim for j in keep]


def _cat_rows(batch_B_H_P_D: Any, row_1_H_P_D: Any, have: int, new: int) -> Any:
    """Stack a row under a batch along the batch axis, left-padding whichever is shorter with zeros."""
    import torch

    def pad(t: Any, n: int) -> Any:
        return torch.cat([t.new_zeros(*t.shape[:2], n, t.shape[3]), t], dim=2) if n > 0 else t

    return torch.cat([pad(batch_B_H_P_D, new - have), pad(row_1_H_P_D, have - new)], dim=0)
