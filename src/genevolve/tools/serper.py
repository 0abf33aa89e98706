"""Serper-compatible web search (``POST {base_url}/search`` and ``/images``).

Request: JSON ``{"q": ..., "num": ...}`` with the key in the ``X-API-KEY`` header. Response:
``organic: [{title, link, snippet, date?, position}]`` plus optional ``answerBox`` and
``knowledgeGraph`` for ``/search``; ``images: [{title, imageUrl, link, source, thumbnailUrl,
imageWidth, imageHeight, ...}]`` for ``/images``. ``base_url`` is configurable so any gateway that
speaks this shape (or a loopback test server) can stand in.

The key is read from the environment at call time (never stored in configs or trajectories) and is
scrubbed from every error message.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from genevolve.tools._http import LoopClient, as_text, parse_json_object, send_with_retry
from genevolve.tools.base import ToolError
from genevolve.tools.base_search import ImageSearchBackend, TextHit, TextSearchBackend
from genevolve.types import RetrievedImage

DEFAULT_BASE_URL = "https://google.serper.dev"


class _SerperClient:
    endpoint: ClassVar[str]

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str = "SERPER_API_KEY",
        timeout: float = 15.0,
        retries: int = 2,
        backoff: float = 0.5,
        gl: str | None = None,
        hl: str | None = None,
    ):
        """``gl``/``hl``: Serper's country and interface-language codes (``"us"``, ``"en"``); unset
        lets the service choose."""
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.gl = gl
        self.hl = hl
        self._http = LoopClient(timeout=timeout)

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ToolError(
                "no_api_key",
                f"set {self.api_key_env} to a serper.dev API key to use the serper backend "
                "(or choose another search backend)",
            )
        return key

    async def _post(self, query: str, num: int) -> dict[str, Any]:
        key = self._api_key()
        body: dict[str, Any] = {"q": query, "num": num}
        if self.gl:
            body["gl"] = self.gl
        if self.hl:
            body["hl"] = self.hl
        client = self._http.get()
        url = self.base_url + self.endpoint
        response = await send_with_retry(
            lambda: client.post(url, json=body, headers={"X-API-KEY": key}),
            what=f"serper {self.endpoint}",
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            secrets=(key,),
        )
        return parse_json_object(response, f"serper {self.endpoint}")

    async def aclose(self) -> None:
        await self._http.aclose()


def _looks_like_error(data: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """Some gateways answer 200 with ``{"message": ...}``; that is a failure, not zero results."""
    if any(k in data for k in keys):
        return None
    message = as_text(data.get("message") or data.get("error"))
    return message or None


class SerperSearch(_SerperClient, TextSearchBackend):
    """Text search through a Serper-compatible ``/search`` endpoint."""

    name = "serper"
    endpoint = "/search"

    async def search(self, query: str, top_k: int) -> list[TextHit]:
        data = await self._post(query, top_k)
        if message := _looks_like_error(data, ("organic", "answerBox", "knowledgeGraph")):
            raise ToolError("bad_response", f"serper /search: {message[:200]}")
        return parse_search(data)[:top_k]


def parse_search(data: dict[str, Any]) -> list[TextHit]:
    """Answer box and knowledge panel first (they are the engine's own summary), then organic hits."""
    hits: list[TextHit] = []
    box = data.get("answerBox")
    if isinstance(box, dict):
        text = as_text(box.get("answer")) or as_text(box.get("snippet"))
        if text:
            hits.append(
                TextHit(title=as_text(box.get("title")) or "Answer", url=as_text(box.get("link")),
                        snippet=text, kind="answer")
            )
    graph = data.get("knowledgeGraph")
    if isinstance(graph, dict) and as_text(graph.get("title")):
        parts = [as_text(graph.get("type")), as_text(graph.get("description"))]
        attributes = graph.get("attributes")
        if isinstance(attributes, dict):
            parts += [f"{as_text(k)}: {as_text(v)}" for k, v in attributes.items()]
        hits.append(
            TextHit(
                title=as_text(graph.get("title")),
                url=as_text(graph.get("descriptionLink") or graph.get("website")),
                snippet="; ".join(p for p in parts if p),
                kind="knowledge",
            )
        )
    organic = data.get("organic")
    for item in organic if isinstance(organic, list) else []:
        if isinstance(item, dict) and (item.get("link") or item.get("title")):
            hits.append(
                TextHit(
                    title=as_text(item.get("title")),
                    url=as_text(item.get("link")),
                    snippet=as_text(item.get("snippet")),
                    date=as_text(item.get("date")),
                )
            )
    return hits


class SerperImageSearch(_SerperClient, ImageSearchBackend):
    """Image search through a Serper-compatible ``/images`` endpoint (images are not downloaded here)."""

    name = "serper"
    endpoint = "/images"

    async def search(self, query: str, top_k: int) -> list[RetrievedImage]:
        data = await self._post(query, top_k)
        if message := _looks_like_error(data, ("images",)):
            raise ToolError("bad_response", f"serper /images: {message[:200]}")
        return parse_images(data, query)[:top_k]


def parse_images(data: dict[str, Any], query: str) -> list[RetrievedImage]:
    images = data.get("images")
    hits: list[RetrievedImage] = []
    for item in images if isinstance(images, list) else []:
        if not isinstance(item, dict):
            continue
        url = as_text(item.get("imageUrl"))
        if not url.startswith(("http://", "https://")):
            continue  # data: URIs and empty fields cannot be downloaded safely
        hits.append(
            RetrievedImage(
                title=as_text(item.get("title")) or as_text(item.get("source")),
                url=url,
                page_url=as_text(item.get("link")),
                query=query,
            )
        )
    return hits
