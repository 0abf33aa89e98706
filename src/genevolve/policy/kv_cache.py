"""A prefix cache of KV states across policy calls, keyed by token ids.

Why: an agent turn's prompt is the previous turn's prompt, the ids sampled for that turn, then new tool
text (``ChatEncoder.prompt`` writes earlier assistant turns as their sampled ids), and the K rollouts of
one request share the system prompt and the request. On a CPU the prompt's forward pass is the main cost
of a turn (about 3 s for 660 tokens with SmolLM2-135M), so the states of the longest stored prefix are
reused and only the rest of the prompt is computed.

- An entry holds the ids a cache covers and each layer's key/value tensors (batch 1, contiguous copies).
  Stored tensors are never written in place: ``cache_for`` gives each call its own cache, which copies the
  prefix into its own buffers, so concurrent calls can share an entry.
- At least the prompt's last token is always recomputed: its logits choose the first new token.
- Memory is bounded by a total-token budget, least recently used entries evicted first; an entry that is
  a prefix of a newly stored one is dropped (the new one covers it), and one that ends with a reply leaves
  the cache when the conversation's next turn takes it up (``store(continuation=True)``), so a rollout's
  states are held once, not once in the cache and again in the call decoding them.
- States depend on the weights: ``check_weights`` empties the cache when any parameter changed (in-place
  updates bump a tensor's version counter; replaced tensors change identity), e.g. after a training step
  on the model a policy shares with its learner.
- Only for models whose cache is plain ``DynamicLayer``s (full attention): a sliding window or linear
  attention state cannot be cut at an arbitrary length (``supports_prefix_cache``).

Axes: L = layers, H = KV heads, T = tokens, D = head dim.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: per layer ``(keys_1_H_T_D, values_1_H_T_D)``
LayerKV = tuple[Any, Any]


def supports_prefix_cache(model: Any) -> bool:
    """Whether ``model``'s default cache is plain full-attention ``DynamicLayer``s, which can be cut anywhere."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # an architecture transformers cannot map: leave it on the plain path
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def weights_version(model: Any) -> int:
    """Changes when any parameter is updated in place, replaced, or another adapter is made active."""
    return hash((tuple((id(p), p._version) for p in model.parameters()),
                 str(getattr(model, "active_adapters", None))))


def layers_of(cache: Any, row: int = 0, start: int = 0) -> list[LayerKV]:
    """Copies of row ``row``'s key/value tensors from position ``start`` on (a left-padded batch row starts
    after its padding): a view would keep the whole batch's buffers alive, and see later writes to them."""
    import torch

    dense = torch.contiguous_format
    return [(layer.keys[row:row + 1, :, start:].clone(memory_format=dense),
             layer.values[row:row + 1, :, start:].clone(memory_format=dense)) for layer in cache.layers]


def cache_for(layers: Sequence[LayerKV] | None = None, n_tokens: int = 0) -> Any:
    """A fresh cache of ``SpareLayer``s holding a copy of the first ``n_tokens`` positions of ``layers`` (an
    empty one without ``layers``)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = spare_layer_class()
    for k, v in layers or []:
        layer = cache.layer_class_to_replicate()
        layer.update(k[:, :, :n_tokens], v[:, :, :n_tokens])
        cache.layers.append(layer)
    return cache


def spare_layer_class() -> type:
    """``SpareLayer``, defined on first use so that importing this module does not import transformers."""
    global _SPARE_LAYER
    if _SPARE_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class SpareLayer(DynamicLayer):
            """A ``DynamicLayer`` that writes new positions into spare room at the end of its tensors.

            ``DynamicLayer`` concatenates on every update, so each decode step copies the whole cache: 0.5 GB a
            step for 8 rows of 1,500 tokens of SmolLM2, and under glibc those ever-larger blocks fragment the
            heap. Here ``keys``/``values`` are leading views of buffers (``_k``, ``_v``; views made under
            ``inference_mode`` do not record their base) with room for ``SPARE_TOKENS`` more positions, or a
            sixteenth more. When something else replaces them (``crop`` keeps the view's start and stays;
            ``batch_select_indices`` and the batcher's joins and trims do not), the next update copies them
            into a new buffer; ``replace_states`` drops the old buffer at once. The room is small: a batch is
            rebuilt whenever a row joins or leaves anyway.
            """

            _k: Any = None
            _v: Any = None

            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                n, new = self.get_seq_length(), key_states.shape[-2]
                if not (_leads(self.keys, self._k, n + new) and _leads(self.values, self._v, n + new)):
                    room = n + new + max(SPARE_TOKENS, (n + new) // 16)
                    k_buf = key_states.new_empty(*key_states.shape[:2], room, key_states.shape[3])
                    v_buf = value_states.new_empty(*value_states.shape[:2], room, value_states.shape[3])
                    if n:
                        k_buf[:, :, :n], v_buf[:, :, :n] = self.keys, self.values
                    self._k, self._v = k_buf, v_buf
                self._k[:, :, n:n + new], self._v[:, :, n:n + new] = key_states, value_states
                self.keys, self.values = self._k[:, :, :n + new], self._v[:, :, :n + new]
                return self.keys, self.values

        _SPARE_LAYER = SpareLayer
    return _SPARE_LAYER


def replace_states(layer: Any, keys: Any, values: Any) -> None:
    """Set a cache layer's tensors, letting a ``SpareLayer``'s old buffers go now rather than at its next update."""
    layer.keys, layer.values = keys, values
    if hasattr(layer, "_k"):
        layer._k = layer._v = None


def _leads(view: Any, buf: Any, need: int) -> bool:
    """Whether ``view`` is ``buf[:, :, :len]`` and ``buf`` holds ``need`` positions: then appending in place
    touches nothing the view shows."""
    return (buf is not None and buf.dim() == 4 and buf.shape[2] >= need and view.data_ptr() == buf.data_ptr()
            and view.stride() == buf.stride() and view.shape[:2] == buf.shape[:2])


#: positions of spare room a ``SpareLayer`` adds when it grows (at least; a sixteenth of its length when more)
SPARE_TOKENS = 64
_SPARE_LAYER: type | None = None


class Hit(NamedTuple):
    """What ``PrefixCache.lookup`` found: the first ``n`` positions of ``layers`` apply; ``continued``: they
    end with a reply (the prompt is a later turn of one conversation, not one that others share)."""

    n: int
    layers: list[LayerKV] | None
    continued: bool


@dataclass
class _Entry:
    ids_T: Any  # torch.long [T]
    layers: list[LayerKV]
    continuation: bool  # ends with a reply: only that conversation's next turn extends it


@dataclass
class CacheStats:
    """What the cache saved: ``hit_tokens`` of ``prompt_tokens`` looked up were not recomputed."""

    lookups: int = 0
    hits: int = 0
    prompt_tokens: int = 0
    hit_tokens: int = 0
    evicted: int = 0
    cleared: int = 0
    per_call: list[tuple[int, int]] = field(default_factory=list)  # (prompt tokens, reused) of recent calls

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class PrefixCache:
    """Stored KV states of token sequences, at most ``max_tokens`` positions in all. Thread-safe."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 1:
            raise ValueError("PrefixCache needs max_tokens >= 1")
        self.max_tokens = max_tokens
        self.stats = CacheStats()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._n_tokens = 0
        self._next_key = 0
        self._version: int | None = None
        self._lock = threading.Lock()

    @property
    def n_tokens(self) -> int:
        return self._n_tokens

    def __len__(self) -> int:
        return len(self._entries)

    def check_weights(self, version: int) -> None:
        """Drop every entry when ``version`` (``weights_version``) differs from the last one seen."""
        with self._lock:
            if self._version is not None and version != self._version and self._entries:
                self._entries.clear()
                self._n_tokens = 0
                self.stats.cleared += 1
            self._version = version

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._n_tokens = 0

    def lookup(self, ids: Sequence[int]) -> Hit:
        """The stored states whose ids share the longest prefix with ``ids``, of which the first ``n``
        positions apply (``n <= len(ids) - 1``); ``Hit(0, None, False)`` when none does."""
        import torch

        ids_T = torch.as_tensor(list(ids), dtype=torch.long)
        best, best_key = 0, None
        with self._lock:
            for key, entry in self._entries.items():
                n = min(len(entry.ids_T), len(ids_T))
                same_T = entry.ids_T[:n] == ids_T[:n]
                common = n if bool(same_T.all()) else int((~same_T).nonzero()[0])
                if common > best:
                    best, best_key = common, key
            whole = best_key is not None and best == len(self._entries[best_key].ids_T)
            best = min(best, len(ids_T) - 1)  # the last prompt token's logits pick the first new token
            self.stats.lookups += 1
            self.stats.prompt_tokens += len(ids_T)
            self.stats.per_call = [*self.stats.per_call[-99:], (len(ids_T), max(best, 0))]
            if best_key is None or best <= 0:
                return Hit(0, None, False)
            self.stats.hits += 1
            self.stats.hit_tokens += best
            entry = self._entries[best_key]
            if whole and entry.continuation:  # its conversation goes on: the caller's copy replaces it
                self._drop(best_key)
            else:
                self._entries.move_to_end(best_key)
            return Hit(best, entry.layers, entry.continuation)

    def store(self, ids: Sequence[int], layers: list[LayerKV], *, continuation: bool = False) -> None:
        """Keep ``layers`` (the states of ``ids``, one position each) as the most recently used entry.
        ``continuation``: the states end with a reply the policy sampled, so only that conversation's next
        turn will extend them: the lookup that extends them whole takes them out, since the caller then
        holds its own copy while it decodes and stores the longer sequence after (memory is held once)."""
        import torch

        n = int(layers[0][0].shape[2]) if layers else 0
        if n != len(ids):
            raise ValueError(f"{n} cached positions for {len(ids)} ids")
        if n == 0 or n > self.max_tokens:
            return
        ids_T = torch.as_tensor(list(ids), dtype=torch.long)
        with self._lock:
            for key, entry in self._entries.items():
                if len(entry.ids_T) >= n and bool((entry.ids_T[:n] == ids_T).all()):
                    self._entries.move_to_end(key)  # already covered by a longer entry
                    return
            for key in [k for k, e in self._entries.items()  # prefixes of the new entry add nothing
                        if len(e.ids_T) <= n and bool((e.ids_T == ids_T[: len(e.ids_T)]).all())]:
                self._drop(key)
            while self._entries and self._n_tokens + n > self.max_tokens:
                self._drop(next(iter(self._entries)))
                self.stats.evicted += 1
            self._entries[self._next_key] = _Entry(ids_T, layers, continuation)
            self._next_key += 1
            self._n_tokens += n

    def _drop(self, key: int) -> None:
        self._n_tokens -= len(self._entries.pop(key).ids_T)
