"""``LocalTextSearch``: the offline ``search`` backend (Wikipedia summaries + user documents).

Example::

    backend = LocalTextSearch(folders=["notes/"], embeddings=False)
    hits = await backend.search("capital of Australia", top_k=5)   # first call builds or loads

Ranking is BM25 (bm25s) over the full text plus a half-weight BM25 over titles. With
``embeddings=True`` it is reciprocal-rank fusion (RRF, k=60) of that and MiniLM cosine similarity,
over each side's top ``CANDIDATES``: RRF needs no score calibration between the two, and lets a
paraphrase that shares no word with a document still reach it. Embeddings cost a one-off ~2.5-4
minutes for the 10,033 Wikipedia summaries on 2 cores (~70 docs/s; cached with the index) plus
~4 s per process to import sentence-transformers; user-only corpora take seconds.

The index is built on the first search (not in ``__init__``, so building an agent stays cheap)
under ``<cache>/index/text-<fingerprint>`` (``<cache>``: the ``cache_dir`` argument, else
``$GENEVOLVE_CACHE``, else ``~/.cache/genevolve``) and reused by later processes; any changed source
(file added, edited, removed; package upgraded) gives a new fingerprint and a rebuild.
Heavy work runs in a worker thread, so the event loop keeps serving other rollouts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from genevolve import cache
from genevolve.tools._local_index import (
    DOCS_FILE,
    EMBEDDINGS_FILE,
    Bm25,
    IndexInfo,
    fingerprint,
    load_minilm,
    load_or_build,
    read_json,
    top_k,
    write_json,
    write_npy,
)
from genevolve.tools.base_search import TextHit, TextSearchBackend
from genevolve.tools.local_corpus import (
    DOC_SUFFIXES,
    Doc,
    best_window,
    file_docs,
    file_stamp,
    folder_files,
    folder_stamps,
    wiki_docs,
    wiki_path,
)

log = logging.getLogger(__name__)

#: weight of a title-only BM25 added to the full-text BM25 (a two-field BM25F in spirit). Requests
#: name entities ("the capital of Australia"); without it, articles that mention the entity often
#: outrank the entity's own (Tasmania over Australia). 0.5 ranked best on a 15-query spot check.
TITLE_WEIGHT = 0.5
CANDIDATES = 100  # per ranker, before fusion
LAYOUT = "text/2"  # the files this module writes into an index directory; bump when they change
RRF_K = 60  # the constant of Cormack et al. (2009)
SNIPPET_CHARS = 400


class LocalTextSearch(TextSearchBackend):
    """BM25 (optionally + MiniLM) over Wikipedia vital-article summaries and user folders."""

    name: ClassVar[str] = "local"

    def __init__(
        self,
        folders: list[str] | tuple[str, ...] = (),
        wiki: bool = True,
        embeddings: bool = False,
        cache_dir: str | Path | None = None,
    ):
        self.folders = [Path(f).expanduser() for f in folders]
        # list files now: a missing or empty folder is a config error, reported at construction
        self._files = [folder_files(f, DOC_SUFFIXES, "document") for f in self.folders]
        self.wiki = wiki
        if not wiki and not self.folders:
            raise ValueError("LocalTextSearch needs wiki=True or at least one document folder")
        self.embeddings = embeddings
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.info: IndexInfo | None = None
        #: user rows that could not be read and were skipped (filled when the index loads)
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._docs: list[dict[str, Any]] = []
        self._bm25: Bm25 | None = None
        self._bm25_title: Bm25 | None = None
        self._vectors: Any = None
        self._model: Any = None

    async def search(self, query: str, top_k: int) -> list[TextHit]:
        return await asyncio.to_thread(self.search_sync, query, top_k)

    def search_sync(self, query: str, top_k: int) -> list[TextHit]:
        """Blocking search, for scripts and benchmarks."""
        self.load()
        ranked = self._rank(query, top_k)
        return [self._hit(self._docs[i], query) for i in ranked]

    # ------------------------------------------------------------------ index

    def index_dir(self) -> Path:
        """``<cache>/index/text-<fingerprint of the sources>``."""
        parts = [LAYOUT, f"wiki={file_stamp(wiki_path())}" if self.wiki else "wiki=off"]
        for folder, files in zip(self.folders, self._files, strict=True):
            parts += [f"folder={folder.resolve()}", *folder_stamps(files)]
        return cache.cache_dir("index", self.cache_dir) / f"text-{fingerprint(parts)}"

    def load(self) -> IndexInfo:
        """Build or load the index (idempotent, thread-safe); searching calls it for you."""
        with self._lock:
            if self.info is None:
                self.info = self._load()
                self.problems = list(self.info.problems)
                for problem in self.problems:  # on every load, not only the build: still skipped
                    log.warning("local search: skipped %s", problem)
            return self.info

    def _load(self) -> IndexInfo:
        start = time.perf_counter()
        directory = self.index_dir()
        meta, built = load_or_build(directory, self._build)
        self._docs = read_json(directory / DOCS_FILE)
        self._bm25 = Bm25.load(directory)
        self._bm25_title = Bm25.load(directory, "bm25_title")
        info = IndexInfo(directory, len(self._docs), built, problems=list(meta.get("problems", [])))
        if self.embeddings:
            info.embedded = self._load_vectors(directory)
        info.seconds = time.perf_counter() - start
        log.info("text index %s: %d docs, %s in %.1fs", directory.name, info.n_docs,
                 "built" if built else "loaded", info.seconds)
        return info

    def _build(self, tmp: Path) -> dict[str, Any]:
        problems: list[str] = []
        docs: list[Doc] = wiki_docs() if self.wiki else []
        for files in self._files:
            for path in files:
                docs += file_docs(path, problems)
        if not docs:
            raise ValueError(f"no readable documents in {[str(f) for f in self.folders]}: {problems[:3]}")
        Bm25.build([f"{d.title} {d.extra} {d.text}" for d in docs]).save(tmp)
        Bm25.build([d.title for d in docs]).save(tmp, "bm25_title")
        write_json(tmp / DOCS_FILE, [d.to_dict() for d in docs])
        return {"n_docs": len(docs), "problems": problems}

    def _load_vectors(self, directory: Path) -> bool:
        """Read the cached document embeddings, computing them once if absent. True if computed."""
        import numpy as np

        path = directory / EMBEDDINGS_FILE
        if path.is_file():
            self._vectors = np.load(path)
            return False
        texts = [f"{d['title']}. {d['text']}" for d in self._docs]
        vectors = self._encode(texts).astype(np.float32)
        write_npy(path, vectors)
        self._vectors = vectors
        return True

    def _encode(self, texts: list[str]) -> Any:
        with self._encode_lock:
            if self._model is None:
                self._model = load_minilm()
            return self._model.encode(
                texts, batch_size=64, normalize_embeddings=True, show_progress_bar=len(texts) > 1000
            )

    # ------------------------------------------------------------------ ranking

    def _rank(self, query: str, k: int) -> list[int]:
        assert self._bm25 is not None and self._bm25_title is not None
        scores = self._bm25.scores(query) + TITLE_WEIGHT * self._bm25_title.scores(query)
        lexical = [i for i, _ in top_k(scores, max(k, CANDIDATES) if self.embeddings else k)]
        if not self.embeddings:
            return lexical
        cosine = self._vectors @ self._encode([query])[0]
        dense = [i for i, _ in top_k(cosine + 1.0, CANDIDATES)]  # +1: top_k keeps positive scores
        fused: dict[int, float] = {}
        for ranking in (lexical, dense):
            for rank, i in enumerate(ranking):
                fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
        return sorted(fused, key=lambda i: (-fused[i], i))[:k]

    def _hit(self, doc: dict[str, Any], query: str) -> TextHit:
        return TextHit(title=doc["title"], url=doc["url"], snippet=best_window(doc["text"], query, SNIPPET_CHARS))
