"""SearXNG JSON API (``GET {base_url}/search?q=...&format=json``): a self-hosted, key-free engine.

Response: ``results: [{title, url, content, img_src?, thumbnail_src?, engine, ...}]`` plus optional
``answers`` (strings, or objects with ``answer`` in newer releases) and ``infoboxes``
(``{infobox, content, urls}``). The instance must list ``json`` under ``search.formats`` in its
settings.yml; otherwise it answers 403, which the error message explains. SearXNG ignores result
counts, so results are truncated here.
"""

from __future__ import annotations

import os
from typing import Any

from genevolve.tools._http import LoopClient, as_text, parse_json_object, send_with_retry
from genevolve.tools.base import ToolError
from genevolve.tools.base_search import ImageSearchBackend, TextHit, TextSearchBackend
from genevolve.types import RetrievedImage

DEFAULT_BASE_URL = "http://localhost:8080"


class _SearxngClient:
    def __init__(
        self,
        *,
        base_url: str | None = None,
        timeout: float = 15.0,
        retries: int = 2,
        backoff: float = 0.5,
        language: str | None = None,
        safesearch: int = 1,
        engines: str | None = None,
    ):
        """``base_url`` defaults to ``$SEARXNG_URL`` or a local instance on port 8080;
        ``engines``: comma-separated SearXNG engine names, unset for the instance's defaults."""
        self.base_url = (base_url or os.environ.get("SEARXNG_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.language = language
        self.safesearch = safesearch
        self.engines = engines
        self._http = LoopClient(timeout=timeout)

    async def _get(self, query: str, category: str) -> dict[str, Any]:
        params: dict[str, str | int] = {
            "q": query, "format": "json", "categories": category, "pageno": 1, "safesearch": self.safesearch,
        }
        if self.language:
            params["language"] = self.language
        if self.engines:
            params["engines"] = self.engines
        client = self._http.get()
        url = self.base_url + "/search"
        try:
            response = await send_with_retry(
                lambda: client.get(url, params=params),
                what="searxng", timeout=self.timeout, retries=self.retries, backoff=self.backoff,
            )
        except ToolError as exc:
            if exc.code == "http_403":
                raise ToolError(exc.code, exc.message + " (is 'json' listed under search.formats "
                                "in the instance's settings.yml?)") from exc
            raise
        data = parse_json_object(response, "searxng")
        if not isinstance(data.get("results"), list):
            raise ToolError("bad_response", "searxng returned JSON without a 'results' list")
        return data

    async def aclose(self) -> None:
        await self._http.aclose()


class SearxngSearch(_SearxngClient, TextSearchBackend):
    """Text search through a SearXNG instance (category ``general``)."""

    name = "searxng"

    async def search(self, query: str, top_k: int) -> list[TextHit]:
        return parse_search(await self._get(query, "general"))[:top_k]


def parse_search(data: dict[str, Any]) -> list[TextHit]:
    """Direct answers and infoboxes first, then results that carry a URL, in the engine's order."""
    hits: list[TextHit] = []
    for answer in data.get("answers") or []:
        text = as_text(answer.get("answer") if isinstance(answer, dict) else answer)
        url = as_text(answer.get("url")) if isinstance(answer, dict) else ""
        if text:
            hits.append(TextHit(title="Answer", url=url, snippet=text, kind="answer"))
    for box in data.get("infoboxes") or []:
        if isinstance(box, dict) and as_text(box.get("infobox")):
            urls = box.get("urls") if isinstance(box.get("urls"), list) else []
            first = next((as_text(u.get("url")) for u in urls if isinstance(u, dict) and u.get("url")), "")
            hits.append(TextHit(title=as_text(box.get("infobox")), url=as_text(box.get("id")) or first,
                                snippet=as_text(box.get("content")), kind="knowledge"))
    for item in data["results"]:
        if isinstance(item, dict) and as_text(item.get("url")):
            hits.append(
                TextHit(
                    title=as_text(item.get("title")),
                    url=as_text(item.get("url")),
                    snippet=as_text(item.get("content")),
                    date=as_text(item.get("publishedDate")),
                )
            )
    return hits


class SearxngImageSearch(_SearxngClient, ImageSearchBackend):
    """Image search through a SearXNG instance (category ``images``; results carry ``img_src``)."""

    name = "searxng"

    async def search(self, query: str, top_k: int) -> list[RetrievedImage]:
        return parse_images(await self._get(query, "images"), query)[:top_k]


def parse_images(data: dict[str, Any], query: str) -> list[RetrievedImage]:
    hits: list[RetrievedImage] = []
    for item in data["results"]:
        if not isinstance(item, dict):
            continue
        src = as_text(item.get("img_src"))
        if src.startswith("//"):
            src = "https:" + src  # some engines give protocol-relative links
        if not src.startswith(("http://", "https://")):
            continue
        hits.append(
            RetrievedImage(title=as_text(item.get("title")), url=src, page_url=as_text(item.get("url")),
                           query=query)
        )
    return hits
