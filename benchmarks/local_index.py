"""Time the offline search backends: cold index build, warm load, query latency, size on disk.

    python benchmarks/local_index.py                 # BM25 text search + OpenMoji library
    python benchmarks/local_index.py --embeddings    # adds MiniLM hybrid (minutes on 2 cores)

Runs in a fresh temporary cache (``--cache DIR`` to keep one). The warm load runs in a child
process, as a new agent process would, so it includes imports and reading the index from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT_QUERIES = [
    "capital of Australia",
    "who painted the Mona Lisa",
    "Eiffel Tower height",
    "largest planet in the solar system",
    "Albert Einstein",
    "the flag of Brazil",
    "a panda eating bamboo",
    "Golden Gate Bridge",
]
IMAGE_QUERIES = ["red apple", "flag Japan", "cat", "pizza", "bicycle", "mount fuji", "sun", "firefighter"]


def make(kind: str, embeddings: bool):
    if kind == "text":
        from genevolve.tools.local_search import LocalTextSearch

        return LocalTextSearch(embeddings=embeddings)
    from genevolve.tools.local_images import LocalImageLibrary

    return LocalImageLibrary()


def load_once(kind: str, embeddings: bool) -> dict:
    """Construct, load and run one query; seconds include imports (the child's warm measurement)."""
    start = time.perf_counter()
    backend = make(kind, embeddings)
    info = backend.load()
    loaded = time.perf_counter() - start
    backend.search_sync((TEXT_QUERIES if kind == "text" else IMAGE_QUERIES)[0], 5)
    return {"built": info.built or info.embedded, "load_s": loaded, "first_query_s": time.perf_counter() - start - loaded,
            "n_docs": info.n_docs, "path": str(info.path)}


def latency_ms(backend, queries: list[str], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        for query in queries:
            start = time.perf_counter()
            backend.search_sync(query, 5)
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def bench(kind: str, embeddings: bool) -> None:
    cold = load_once(kind, embeddings)
    warm = json.loads(subprocess.run(
        [sys.executable, __file__, "--child", kind] + (["--embeddings"] if embeddings else []),
        check=True, capture_output=True, text=True, env=os.environ,
    ).stdout.strip().splitlines()[-1])
    assert cold["built"] and not warm["built"], (cold, warm)
    backend = make(kind, embeddings)
    backend.load()
    queries = TEXT_QUERIES if kind == "text" else IMAGE_QUERIES
    first_ms = latency_ms(backend, queries, 1)[0] if kind == "images" else None  # includes rasterising
    median, p95 = latency_ms(backend, queries, 5)
    label = f"{kind}{' +MiniLM' if embeddings else ''}"
    print(f"{label:14} docs={cold['n_docs']:6}  cold build {cold['load_s']:7.2f} s   "
          f"warm load (new process) {warm['load_s']:.2f} s   query median {median:.1f} ms, p95 {p95:.1f} ms"
          + (f"   uncached query (rasterises up to 5 PNGs) median {first_ms:.0f} ms" if first_ms else "")
          + f"   index {du(Path(cold['path'])):.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", action="store_true", help="also time the MiniLM hybrid (slow cold build)")
    parser.add_argument("--cache", help="cache root to use (default: a temporary directory, removed after)")
    parser.add_argument("--child", choices=["text", "images"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(load_once(args.child, args.embeddings)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GENEVOLVE_CACHE"] = args.cache or tmp
        print(f"cache: {os.environ['GENEVOLVE_CACHE']}  cpus: {os.cpu_count()}")
        bench("text", False)
        if args.embeddings:
            bench("text", True)
        bench("images", False)
        png = Path(os.environ["GENEVOLVE_CACHE"]) / "openmoji-png"
        n_png = len(list(png.glob("*.png")))
        print(f"rasterised PNGs: {n_png} files, {du(png):.2f} MB ({du(png) / max(n_png, 1) * 1000:.0f} kB each)")


if __name__ == "__main__":
    main()
