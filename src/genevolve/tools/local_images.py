"""``LocalImageLibrary``: the offline ``image_search`` backend (OpenMoji + user image folders).

Example::

    library = LocalImageLibrary(folders=["my_refs/"])
    images = await library.search("red apple", top_k=3)    # RetrievedImage with a local PNG path

Each entry is a short text (name, keywords, tags, group) ranked by BM25, then re-ordered by an
exact-name boost: the query ``red apple`` must give the red apple, not the longest text that
repeats "apple". OpenMoji SVGs are rasterised on demand (``size`` px, transparent background)
into a content-addressed cache, so a search costs ~25 ms per new emoji and nothing afterwards.

A web image search practically always returns something, and the agent's small policy often sends
queries BM25 cannot match ("tall", "shop"). So with ``semantic_fallback`` (the default) the slots
BM25 leaves empty are filled with the entries nearest to the query by MiniLM cosine over name +
keywords, titled ``<name> (closest match)`` so the policy can tell. The vectors are computed on the
first such query (2.3 s for the 2,093 OpenMoji names without skin-tone variants on 2 idle cores;
plus ~4 s per process to import sentence-transformers) and cached beside the index; a fallback
query then costs ~10-25 ms. A query with no letters ("{", "123") gets no fallback, and if the
model cannot load the library just returns fewer images and says why once (``problems``, a warning).

User images (png/jpg/jpeg/webp/gif, recursive) are captioned by a sidecar ``<stem>.json``
(``{"title": ..., "tags": [...]}``) or ``<stem>.txt`` (caption), else by the file stem. Each is
fully decoded once when the index is built: a broken file is skipped and named in ``problems``
(and logged), so one bad download never takes a rollout down. A missing folder, or one without
images, is a configuration error raised at construction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from genevolve import cache
from genevolve.registry import require
from genevolve.tools._local_index import (
    DOCS_FILE,
    EMBEDDINGS_FILE,
    Bm25,
    IndexInfo,
    fingerprint,
    load_minilm,
    load_or_build,
    read_json,
    tokenize,
    write_json,
    write_npy,
)
from genevolve.tools.base_search import ImageSearchBackend
from genevolve.tools.local_corpus import folder_files, folder_stamps
from genevolve.tools.openmoji import catalogue, rasterise, svg_dir
from genevolve.tools.openmoji import version as openmoji_version
from genevolve.types import RetrievedImage

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
LAYOUT = "images/1"  # bump when the files of an index directory change
CANDIDATES = 50  # BM25 hits re-ordered by the name boosts
NAME_BOOST = 100.0  # the query is the name: always first ("cat" is the cat, not "cat face")
ALIAS_BOOST = 50.0  # the query is an alias (the emoji package calls the cat face ":cat:")
COVER_BOOST = 5.0  # every query word is in the name: above entries matching only keywords
CLOSEST_SUFFIX = " (closest match)"  # marks semantic-fallback titles (RetrievedImage has no field for it)


class LocalImageLibrary(ImageSearchBackend):
    """OpenMoji emoji (4,128 named SVGs) and user folders of captioned images, searched by BM25."""

    name: ClassVar[str] = "local"

    def __init__(
        self,
        folders: list[str] | tuple[str, ...] = (),
        openmoji: bool = True,
        size: int = 512,
        cache_dir: str | Path | None = None,
        semantic_fallback: bool = True,
    ):
        """``semantic_fallback``: fill the slots BM25 leaves empty with the MiniLM-nearest entries
        (needs the ``embedded`` extra; without it, searches just return fewer images)."""
        if size < 16 or size > 4096:
            raise ValueError(f"LocalImageLibrary size must be 16..4096 px, got {size}")
        self.folders = [Path(f).expanduser() for f in folders]
        self._files = [folder_files(f, IMAGE_SUFFIXES, "image") for f in self.folders]
        if not openmoji and not self.folders:
            raise ValueError("LocalImageLibrary needs openmoji=True or at least one image folder")
        self.openmoji = openmoji
        self.size = size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.info: IndexInfo | None = None
        #: user images that could not be decoded and were skipped (filled when the index loads)
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._bm25: Bm25 | None = None
        self.semantic_fallback = semantic_fallback
        self._embed_lock = threading.Lock()  # one model per library; its tokenizer is not thread-safe
        self._model: Any = None
        self._vectors: Any = None  # (rows, 384) unit vectors, loaded on the first fallback
        self._rows: list[int] = []  # the entry of each row of _vectors
        self._semantic_error: str | None = None  # why the fallback is off for this library

    async def search(self, query: str, top_k: int) -> list[RetrievedImage]:
        return await asyncio.to_thread(self.search_sync, query, top_k)

    def search_sync(self, query: str, top_k: int) -> list[RetrievedImage]:
        """Blocking search, for scripts and benchmarks."""
        self.load()
        ranked = self._rank(query, top_k)
        closest = self._closest(query, top_k - len(ranked), set(ranked)) if self.semantic_fallback else []
        return [self._image(self._entries[i], query) for i in ranked] + [
            self._image(self._entries[i], query, closest=True) for i in closest
        ]

    # ------------------------------------------------------------------ index

    def index_dir(self) -> Path:
        parts = [LAYOUT]
        if self.openmoji:
            emoji = require("emoji", "embedded")
            parts.append(f"openmoji={openmoji_version()}|emoji={emoji.__version__}|{svg_dir()}")
        for folder, files in zip(self.folders, self._files, strict=True):
            # sidecars are part of the source: editing a caption must rebuild
            sidecars = [s for f in files for s in (f.with_suffix(".txt"), f.with_suffix(".json")) if s.is_file()]
            parts += [f"folder={folder.resolve()}", *folder_stamps(files), *folder_stamps(sidecars)]
        return cache.cache_dir("index", self.cache_dir) / f"images-{fingerprint(parts)}"

    def load(self) -> IndexInfo:
        """Build or load the index (idempotent, thread-safe); searching calls it for you."""
        with self._lock:
            if self.info is None:
                start = time.perf_counter()
                directory = self.index_dir()
                meta, built = load_or_build(directory, self._build)
                self._entries = read_json(directory / DOCS_FILE)
                self._bm25 = Bm25.load(directory)
                self.problems = list(meta.get("problems", []))
                for problem in self.problems:  # on every load, not only the build: still skipped
                    log.warning("local image library: %s", problem)
                self.info = IndexInfo(directory, len(self._entries), built, problems=self.problems)
                self.info.seconds = time.perf_counter() - start
            return self.info

    def _build(self, tmp: Path) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        unnamed = 0
        if self.openmoji:
            emojis, unnamed = catalogue()
            entries += [
                {"title": e.name, "keywords": list(e.keywords), "group": e.group, "hexcode": e.hexcode}
                for e in emojis
            ]
        problems: list[str] = []
        for folder, files in zip(self.folders, self._files, strict=True):
            usable = [entry for f in files if (entry := user_entry(f, problems)) is not None]
            if not usable:
                problems.append(f"image folder {str(folder)!r}: no decodable images")
            entries += usable
        texts = [" ".join([e["title"], *e["keywords"], e["group"]]) for e in entries]
        Bm25.build(texts or [""]).save(tmp)
        write_json(tmp / DOCS_FILE, entries)
        return {"n_docs": len(entries), "problems": problems, "openmoji_unnamed": unnamed}

    # ------------------------------------------------------------------ ranking

    def _rank(self, query: str, k: int) -> list[int]:
        assert self._bm25 is not None
        words = _words(query)
        scored = []
        for i, score in self._bm25.top(query, max(k, CANDIDATES)):
            entry = self._entries[i]
            name = _words(entry["title"])
            if words == name:
                score += NAME_BOOST
            elif any(words == _words(alias) for alias in entry["keywords"]):
                score += ALIAS_BOOST
            elif words <= name:
                score += COVER_BOOST
            scored.append((-score, i))
        return [i for _, i in sorted(scored)[:k]]

    # ------------------------------------------------------------------ semantic fallback

    def _closest(self, query: str, n: int, exclude: set[int]) -> list[int]:
        """Up to ``n`` entries nearest to ``query`` by MiniLM cosine, best first, none in ``exclude``."""
        import numpy as np

        n = min(n, len(self._entries) - len(exclude))  # a small folder BM25 already returned whole
        if n <= 0 or not any(ch.isalpha() for ch in query):  # "{" or "123": nothing to mean
            return []
        with self._embed_lock:
            if not self._ensure_vectors():
                return []
            query_vec = self._model.encode([query], normalize_embeddings=True, show_progress_bar=False)[0]
        cosine = self._vectors @ query_vec
        picked: list[int] = []
        for row in np.argsort(-cosine, kind="stable"):  # 2k rows: a full sort is ~0.2 ms
            if (i := self._rows[row]) not in exclude:
                picked.append(i)
                if len(picked) == n:
                    break
        return picked

    def _ensure_vectors(self) -> bool:
        """Load the model and the entry vectors (computing and caching them once); False if unavailable."""
        import numpy as np

        if self._vectors is not None or self._semantic_error is not None:
            return self._vectors is not None
        assert self.info is not None
        try:
            self._model = load_minilm()
        except Exception as exc:  # a missing extra, absent or broken model files: searching goes on
            self._semantic_error = f"semantic fallback off, the embedding model did not load: {type(exc).__name__}: {exc}"
            self.problems.append(self._semantic_error)
            log.warning("local image library: %s", self._semantic_error)
            return False
        path = self.info.path / EMBEDDINGS_FILE
        self._rows = [i for i, e in enumerate(self._entries) if not _skin_tone_variant(e)]
        self._vectors = _read_vectors(path, len(self._rows))
        if self._vectors is None:
            texts = [" ".join([self._entries[i]["title"], *self._entries[i]["keywords"]]) for i in self._rows]
            vectors = self._model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
            self._vectors = vectors.astype(np.float32)
            self.info.embedded = True
            try:
                write_npy(path, self._vectors)
            except OSError as exc:  # a read-only cache: recompute next process, still usable now
                log.warning("local image library: could not cache embeddings in %s: %s", path, exc)
        return True

    def _image(self, entry: dict[str, Any], query: str, closest: bool = False) -> RetrievedImage:
        title = entry["title"] + (CLOSEST_SUFFIX if closest else "")
        if "hexcode" in entry:
            png = rasterise(entry["hexcode"], self.size, cache.cache_dir("openmoji-png", self.cache_dir))
            return RetrievedImage(title=title, page_url=f"openmoji:{entry['hexcode']}", path=str(png), query=query)
        path = Path(entry["path"])
        return RetrievedImage(title=title, page_url=path.as_uri(), path=str(path), query=query)


def _words(text: str) -> frozenset[str]:
    """Index terms as a set, for name matching: ``the flag of Japan`` == ``flag: Japan``."""
    return frozenset(tokenize(text))


def _skin_tone_variant(entry: dict[str, Any]) -> bool:
    """An emoji that repeats another in a skin tone (2,035 of 4,128; 2/3 of the text to embed).

    Left out of the fallback: its nearest neighbours would be its own siblings, five slots for one
    picture, and the base emoji is the better guess. BM25 still finds it ("waving hand dark skin tone").
    """
    return "hexcode" in entry and "skin tone" in entry["title"]


def _read_vectors(path: Path, n: int) -> Any:
    """Cached entry vectors, or ``None`` if absent, unreadable or not ``n`` rows."""
    import numpy as np

    try:
        vectors = np.load(path)
    except (OSError, ValueError):
        return None
    return vectors if vectors.ndim == 2 and vectors.shape[0] == n else None


def user_entry(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """Index entry for one user image, or ``None`` (recorded in ``problems``) if Pillow can't decode it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # a full decode: verify() misses truncated JPEGs
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        problems.append(f"skipped {path}: not a decodable image ({type(exc).__name__}: {exc})")
        return None
    title, tags = path.stem.replace("_", " ").replace("-", " "), []
    caption = path.with_suffix(".txt")
    if caption.is_file():
        title = " ".join(caption.read_text(encoding="utf-8", errors="replace").split()) or title
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            meta = exc.msg
        if isinstance(meta, dict) and isinstance(meta.get("tags", []), list):
            title = str(meta.get("title") or title)
            tags = [str(t) for t in meta.get("tags", [])]
        else:
            problems.append(f"ignored {sidecar}: expected {{\"title\": str, \"tags\": [str]}}")
    return {"title": title, "keywords": [path.stem, *tags], "group": "", "path": str(path.resolve())}
