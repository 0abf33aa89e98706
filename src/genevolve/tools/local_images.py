"""``LocalImageLibrary``: the offline ``image_search`` backend (OpenMoji + user image folders).

Example::

    library = LocalImageLibrary(folders=["my_refs/"])
    images = await library.search("red apple", top_k=3)    # RetrievedImage with a local PNG path

Each entry is a short text (name, keywords, tags, group) ranked by BM25, then re-ordered by an
exact-name boost: the query ``red apple`` must give the red apple, not the longest text that
repeats "apple". OpenMoji SVGs are rasterised on demand (``size`` px, transparent background)
into a content-addressed cache, so a search costs ~25 ms per new emoji and nothing afterwards.

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
    Bm25,
    IndexInfo,
    fingerprint,
    load_or_build,
    read_json,
    tokenize,
    write_json,
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


class LocalImageLibrary(ImageSearchBackend):
    """OpenMoji emoji (4,128 named SVGs) and user folders of captioned images, searched by BM25."""

    name: ClassVar[str] = "local"

    def __init__(
        self,
        folders: list[str] | tuple[str, ...] = (),
        openmoji: bool = True,
        size: int = 512,
        cache_dir: str | Path | None = None,
    ):
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

    async def search(self, query: str, top_k: int) -> list[RetrievedImage]:
        return await asyncio.to_thread(self.search_sync, query, top_k)

    def search_sync(self, query: str, top_k: int) -> list[RetrievedImage]:
        """Blocking search, for scripts and benchmarks."""
        self.load()
        return [self._image(self._entries[i], query) for i in self._rank(query, top_k)]

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

    def _image(self, entry: dict[str, Any], query: str) -> RetrievedImage:
        if "hexcode" in entry:
            png = rasterise(entry["hexcode"], self.size, cache.cache_dir("openmoji-png", self.cache_dir))
            return RetrievedImage(
                title=entry["title"], page_url=f"openmoji:{entry['hexcode']}", path=str(png), query=query
            )
        path = Path(entry["path"])
        return RetrievedImage(title=entry["title"], page_url=path.as_uri(), path=str(path), query=query)


def _words(text: str) -> frozenset[str]:
    """Index terms as a set, for name matching: ``the flag of Japan`` == ``flag: Japan``."""
    return frozenset(tokenize(text))


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
