"""Splits without leakage: SFT, RL and benchmark share no request and no (template, entities) pair.

Pairs are unique across the whole world by construction (the generator refuses a pair it has
already made), and each category's requests are dealt to the splits in proportion, so the
benchmark holds every category. ``check_splits`` proves the property on the written files; the
build runs it and the tests run it.
"""

from __future__ import annotations

import random
from collections import defaultdict

from genevolve.world.records import WorldRequest

SPLITS = ("bench", "rl", "sft")


class LeakageError(AssertionError):
    """Two splits share a request or a (template, entities) pair."""


def assign(requests: list[WorldRequest], sizes: dict[str, int], seed: int) -> None:
    """Set ``split`` on each request: per (track, category, difficulty) stratum, in proportion to ``sizes``."""
    total = sum(sizes.values())
    strata: dict[tuple, list[WorldRequest]] = defaultdict(list)
    for r in requests:
        strata[(r.track, r.category, r.difficulty)].append(r)
    remaining = dict(sizes)
    for key in sorted(strata):
        group = strata[key]
        random.Random(f"{seed}|split|{key}").shuffle(group)
        for r in group:
            # the split furthest below its share so far takes the next request
            split = max(SPLITS, key=lambda s: (remaining[s] / max(1, sizes[s]) if sizes[s] else -1, -SPLITS.index(s)))
            r.split = split
            remaining[split] -= 1
    assert sum(sizes.values()) == total


def check_splits(requests: list[WorldRequest]) -> dict[str, int]:
    """Raise ``LeakageError`` if any request text or pair appears in two splits; return split sizes."""
    seen_q: dict[str, str] = {}
    seen_p: dict[str, str] = {}
    counts: dict[str, int] = defaultdict(int)
    for r in requests:
        if r.split not in SPLITS:
            raise LeakageError(f"request {r.id} has no split")
        for table, key in ((seen_q, r.question), (seen_p, r.pair_key)):
            other = table.setdefault(key, r.split)
            if other != r.split:
                raise LeakageError(f"{key[:80]!r} is in both {other} and {r.split}")
        counts[r.split] += 1
    return dict(counts)
