"""Search backends: the small interfaces behind the ``search`` and ``image_search`` tools.

A tool formats evidence for the policy; a backend only fetches it. Splitting the two lets the same
tool run on a web API, a self-hosted engine or an offline corpus without changing what the policy
sees. A minimal text backend::

    class EchoSearch(TextSearchBackend):
        name = "echo"
        async def search(self, query, top_k):
            return [TextHit(title=query, url="https://example.org", snippet="...")][:top_k]

Backends raise ``ToolError`` for expected failures (timeouts, HTTP errors, a missing key); the tool
and the agent turn them into observations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from genevolve.types import RetrievedImage


class TextHit(BaseModel):
    """One text search result.

    ``kind`` separates a direct answer or a knowledge-panel summary from ordinary web hits, so the
    formatted observation can label them (policies weigh a direct answer differently).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = ""
    url: str = ""
    snippet: str = ""
    kind: Literal["web", "answer", "knowledge"] = "web"
    date: str = ""


class TextSearchBackend(ABC):
    #: short backend name recorded in trajectories (``serper``, ``searxng``, ...)
    name: ClassVar[str] = ""

    @abstractmethod
    async def search(self, query: str, top_k: int) -> list[TextHit]:
        """Return at most ``top_k`` hits for ``query``, best first."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class ImageSearchBackend(ABC):
    name: ClassVar[str] = ""

    @abstractmethod
    async def search(self, query: str, top_k: int) -> list[RetrievedImage]:
        """Return at most ``top_k`` candidate images, best first, without ``img_id``.

        Web backends fill ``url`` (the image) and ``page_url`` and leave ``path`` empty: the
        ``image_search`` tool downloads them. Local libraries fill ``path`` directly.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
