"""Tools the policy calls (``search``, ``image_search``, ``query_knowledge``) and their backends.

Backends are named by ``kind`` in the tables below (or ``"my_pkg.module:Class"`` for user code)
and built with ``genevolve.registry.build``; nothing here imports httpx or Pillow until a backend
is built. Example::

    from genevolve.tools import SEARCH_BACKENDS, IMAGE_SEARCH_BACKENDS, TOOLS
    from genevolve.registry import build, resolve
    backend = build(SEARCH_BACKENDS, "serper", "search")            # reads $SERPER_API_KEY at call time
    search = resolve(TOOLS, "search", "tool")(backend)
"""

from __future__ import annotations

from genevolve.tools.base import NoArgs, Tool, ToolArgs, ToolError

#: text search: kind -> "module:Class" (a TextSearchBackend)
SEARCH_BACKENDS: dict[str, str] = {
    "serper": "genevolve.tools.serper:SerperSearch",
    "searxng": "genevolve.tools.searxng:SearxngSearch",
    "local": "genevolve.tools.local_search:LocalTextSearch",
}

#: image search: kind -> "module:Class" (an ImageSearchBackend; web hits are fetched by ImageDownloader)
IMAGE_SEARCH_BACKENDS: dict[str, str] = {
    "serper": "genevolve.tools.serper:SerperImageSearch",
    "searxng": "genevolve.tools.searxng:SearxngImageSearch",
    "local": "genevolve.tools.local_images:LocalImageLibrary",
}

#: protocol tool name -> "module:Class" (a Tool)
TOOLS: dict[str, str] = {
    "search": "genevolve.tools.search:SearchTool",
    "image_search": "genevolve.tools.image_search:ImageSearchTool",
    "query_knowledge": "genevolve.tools.knowledge:KnowledgeTool",
}


def build_tools(*, search=None, image_search=None, knowledge: bool = True, download: dict | None = None) -> list[Tool]:
    """The agent's tools from backend specs (objects with ``kind`` and ``options``, see genevolve.config).

    A role left as None is simply not offered to the policy.
    """
    from genevolve.registry import build, resolve

    tools: list[Tool] = []
    if search is not None:
        backend = build(SEARCH_BACKENDS, search.kind, "search", **search.options)
        tools.append(resolve(TOOLS, "search", "tool")(backend))
    if image_search is not None:
        from genevolve.tools.download import ImageDownloader

        backend = build(IMAGE_SEARCH_BACKENDS, image_search.kind, "image search", **image_search.options)
        tools.append(resolve(TOOLS, "image_search", "tool")(backend, ImageDownloader(**(download or {}))))
    if knowledge:
        tools.append(resolve(TOOLS, "query_knowledge", "tool")())
    return tools


__all__ = ["build_tools", "IMAGE_SEARCH_BACKENDS", "NoArgs", "SEARCH_BACKENDS", "TOOLS", "Tool", "ToolArgs", "ToolError"]
