"""The ``image_search`` tool: candidate reference images, downloaded and verified before the policy sees them.

Policy on failed downloads (ours): by default they are *dropped*, and the tool asks the backend for
``spare`` extra hits to take their place, so every image the policy gets an id for is usable as a
reference. The header line counts what was skipped. With ``keep_failed=True`` the first ``top_k`` hits
are returned in rank order, failures included with ``path=None`` and ``error`` set (for audits).
Ids (``IMG_###``) are assigned by the agent, not here.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from pydantic import Field

from genevolve.tools.base import Tool, ToolArgs
from genevolve.tools.base_search import ImageSearchBackend
from genevolve.tools.download import DownloadError, ImageDownloader
from genevolve.tools.search import Query
from genevolve.types import Observation, RetrievedImage


class ImageSearchArgs(ToolArgs):
    query: Query = Field(description="what the reference image should show")
    top_k: int = Field(5, ge=1, le=10, description="number of images")


class ImageSearchTool(Tool):
    """``image_search(query, top_k)`` over an ``ImageSearchBackend`` plus an ``ImageDownloader``.

    Hits that already carry a local ``path`` (local libraries) are passed through untouched.
    """

    name = "image_search"
    description = (
        "Search for candidate reference images. Use it when the request depends on how a specific "
        "person, object, place, logo or style really looks."
    )
    Args = ImageSearchArgs

    def __init__(
        self,
        backend: ImageSearchBackend,
        downloader: ImageDownloader | None = None,
        *,
        spare: int = 3,
        keep_failed: bool = False,
    ):
        self.image_backend = backend
        self.backend = backend.name or type(backend).__name__
        self.downloader = downloader if downloader is not None else ImageDownloader()
        self.spare = spare
        self.keep_failed = keep_failed

    async def acall(self, args: ImageSearchArgs) -> Observation:
        top_k = args.top_k
        extra = 0 if self.keep_failed else self.spare
        hits = [
            h.model_copy(update={"query": h.query or args.query, "img_id": ""})
            for h in await self.image_backend.search(args.query, top_k + extra)
        ]
        if not hits:
            return Observation(text=f'No images found for "{args.query}".')
        if self.keep_failed:
            chosen = await self._materialize_all(hits[:top_k])
            failed = [h for h in chosen if h.path is None]
        else:
            chosen, failed = await self._usable(hits, top_k)
        usable = [h for h in chosen if h.path is not None]
        if not usable:
            reasons = Counter(_failure_code(h) for h in failed)
            summary = ", ".join(f"{code} x{n}" for code, n in reasons.most_common())
            text = (
                f'No usable images for "{args.query}": {len(failed)} result'
                f'{"s" if len(failed) != 1 else ""} could not be downloaded ({summary}).'
            )
            return Observation(text=text, images=chosen, error="download_failed")
        return Observation(text=self._header(args.query, usable, failed), images=chosen)

    def _header(self, query: str, usable: list[RetrievedImage], failed: list[RetrievedImage]) -> str:
        text = f'{len(usable)} image{"s" if len(usable) != 1 else ""} for "{query}"'
        if failed and self.keep_failed:
            text += f" ({len(failed)} more could not be downloaded and cannot be used as references)"
        elif failed:
            text += f" ({len(failed)} more could not be downloaded and were skipped)"
        return text + "."

    async def _usable(
        self, hits: list[RetrievedImage], top_k: int
    ) -> tuple[list[RetrievedImage], list[RetrievedImage]]:
        """Download in rounds: the first ``top_k``, then spares only for the ones that failed."""
        usable: list[RetrievedImage] = []
        failed: list[RetrievedImage] = []
        pending = hits
        while pending and len(usable) < top_k:
            need = top_k - len(usable)
            batch, pending = pending[:need], pending[need:]
            for hit in await self._materialize_all(batch):
                (usable if hit.path is not None else failed).append(hit)
        return usable, failed

    async def _materialize_all(self, hits: list[RetrievedImage]) -> list[RetrievedImage]:
        return list(await asyncio.gather(*(self._materialize(h) for h in hits)))

    async def _materialize(self, hit: RetrievedImage) -> RetrievedImage:
        if hit.path:
            return hit
        if not hit.url:
            return hit.model_copy(update={"error": "download_failed: no_url (the hit has no image URL)"})
        try:
            path = await self.downloader.fetch(hit.url)
        except DownloadError as exc:
            return hit.model_copy(update={"error": f"download_failed: {exc.code} ({exc.message})"})
        return hit.model_copy(update={"path": str(path), "error": None})

    async def aclose(self) -> None:
        await self.image_backend.aclose()
        await self.downloader.aclose()


def _failure_code(hit: RetrievedImage) -> str:
    """The DownloadError code inside ``error`` ("download_failed: <code> (<message>)")."""
    return (hit.error or "").removeprefix("download_failed: ").split(" ", 1)[0] or "unknown"
