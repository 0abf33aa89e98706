"""Time the experience phase of one RL step on this machine's CPU.

    python benchmarks/experience_speed.py [--bundles 500] [--requests 48]

Prints: rule extraction per pair (the offline extractor), the MiniLM load (once per process),
adding ``--bundles`` bundles to a memory with a jsonl file, one step's lookups (``--requests``
requests against a full memory, embeddings of the held keys computed on the first lookup, then
cached), and reopening (replaying) the file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from genevolve.evolve.extractors import RuleExtractor
from genevolve.evolve.memory import ExperienceMemory, sentence_embedder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the hand-built pair lives with the tests
from tests.evolve_fixtures import careful, careless  # noqa: E402

SUBJECTS = ["fox", "lighthouse", "bicycle", "teapot", "violin", "cactus", "owl", "sailboat", "robot", "castle"]
PLACES = ["in snow", "on a beach", "in a kitchen", "at night", "in a forest", "on a shelf", "in the rain"]


def request(i: int) -> str:
    return (f"A poster with {i % 5 + 2} {SUBJECTS[i % len(SUBJECTS)]}s {PLACES[i % len(PLACES)]}, "
            f"variant {i}, with the words \"SALE {i}\" at the top")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=int, default=500)
    ap.add_argument("--requests", type=int, default=48)
    args = ap.parse_args()

    best, worst = careful(), careless()
    extractor = RuleExtractor()
    t = time.perf_counter()
    n = 200
    template = [extractor.extract(best, worst) for _ in range(n)][0]
    print(f"rule extraction: {(time.perf_counter() - t) / n * 1e3:.2f} ms per pair")

    embed = sentence_embedder()
    t = time.perf_counter()
    embed(["warm up"])
    print(f"MiniLM load: {time.perf_counter() - t:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "experience.jsonl"
        mem = ExperienceMemory(path, embed=embed)
        t = time.perf_counter()
        for i in range(args.bundles):
            b = template.model_copy(deep=True)
            b.id = f"b{i}"
            b.provenance.request_id, b.provenance.request, b.provenance.step = f"r{i}", request(i), i // 8
            mem.add(b)
        print(f"add {args.bundles} bundles (fsync per line): {time.perf_counter() - t:.2f} s, "
              f"file {path.stat().st_size / 1024:.0f} KiB")
        queries = [request(i) + " again" for i in range(args.requests)]
        step = args.bundles // 8 + 1
        for label in ("first lookup (embeds held keys)", "next lookup"):
            t = time.perf_counter()
            hits = mem.lookup_many(queries, step=step)
            print(f"{label}: {time.perf_counter() - t:.3f} s for {len(queries)} requests, "
                  f"{sum(h is not None for h in hits)} past the gate")
        t = time.perf_counter()
        again = ExperienceMemory(path, embed=embed)
        print(f"reopen (replay {len(again)} bundles): {time.perf_counter() - t:.3f} s")


if __name__ == "__main__":
    main()
